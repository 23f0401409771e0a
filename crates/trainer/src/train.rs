//! The training loop. [`train`] checks and locks the output folder, then runs a `Trainer`
//! through its parts: `start` (a new run, a resumed one, or one initialised from a
//! checkpoint), then for each batch `step`, `log`, and at the end of an epoch or every
//! `val_every` steps `validate` (which saves `best` and `last`), until a stop condition; then
//! `finish`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use denoise_data::batch::{BatchConfig, Batcher};
use denoise_data::{Batch, ImageSet, Splits};
use denoise_model::{Checkpoint, Model};

use crate::adam::{Adam, AdamConfig};
use crate::ema::Ema;
use crate::network::{check_training_memory, init_checkpoint, network_of};
use crate::objective::{to_tensors, validate, Objective};
use crate::pending::{PendingLosses, Running};
use crate::run_dir::{
    append, lock_out_dir, read_state, save_checkpoint, state_of, Record, TrainState, BEST, LAST,
    LOCK, METRICS, PLOT, STEPS,
};
use crate::schedule::{EarlyStopping, StepLr};
use crate::{io_err, LossKind, Result, TrainConfig, TrainError};

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The state at the end, as saved in `last.safetensors`.
    pub state: TrainState,
    /// Where the files are.
    pub out_dir: PathBuf,
    /// Why the run stopped: `30 epochs done`, `early stopping (...)`, `--max-steps N`,
    /// `time budget`, `interrupted` or `already finished`.
    pub stopped_by: String,
}

/// How a run is driven (not part of the recipe).
#[derive(Clone)]
pub struct TrainOptions {
    /// Continue from `last.safetensors` in the output folder, when there is one.
    pub resume: bool,
    /// Start a new run in an output folder that holds one, replacing its checkpoints. Without
    /// it (or `resume`), such a folder is refused.
    pub overwrite: bool,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// Set from outside (Ctrl-C) to stop after the current step, saving everything.
    pub stop: Arc<AtomicBool>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            resume: false,
            overwrite: false,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Refuses an output folder that a new run would wrongly overwrite: one that holds checkpoints
/// of an earlier run, unless `opts` asks to resume it or to start over. Call it before a long
/// data load; [`train`] calls it too.
pub fn check_out_dir(out_dir: &Path, opts: &TrainOptions) -> Result<()> {
    let last = out_dir.join(LAST);
    let best = out_dir.join(BEST);
    if opts.overwrite || (!last.exists() && !best.exists()) {
        return Ok(());
    }
    if opts.resume {
        if last.exists() {
            return Ok(());
        }
        // Resuming would start a new run, whose first validation replaces this best model.
        return Err(TrainError::Resume {
            path: last.display().to_string(),
            reason: format!(
                "missing, so there is nothing to resume, and a new run would replace {BEST} \
                 (--overwrite to start over anyway)"
            ),
        });
    }
    let steps = read_state(out_dir)
        .ok()
        .flatten()
        .map_or(String::new(), |s| match s.global_step {
            1 => " (1 step)".into(),
            n => format!(" ({n} steps)"),
        });
    Err(TrainError::RunExists {
        path: out_dir.display().to_string(),
        what: if last.exists() {
            format!("{LAST}{steps}")
        } else {
            BEST.to_string()
        },
    })
}

/// Trains a model on `data` into `out_dir` (see the crate docs for the files written).
pub fn train(
    config: &TrainConfig,
    data: &Splits,
    out_dir: &Path,
    device: &Device,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    config.validate()?;
    check_out_dir(out_dir, opts)?;
    let created = !out_dir.exists();
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let lock = lock_out_dir(out_dir)?;
    let result = train_locked(config, data, out_dir, device, opts);
    // Released cleanly: no process id left for the next run to find.
    let _ = lock.set_len(0);
    drop(lock);
    if result.is_err() && created {
        // A run that failed before it wrote anything leaves no folder behind: remove the lock
        // file, then the folder, which fails (and so stays) unless it is empty.
        let _ = std::fs::remove_file(out_dir.join(LOCK));
        let _ = std::fs::remove_dir(out_dir);
    }
    result
}

/// [`train`] once the folder is there and locked.
fn train_locked(
    config: &TrainConfig,
    data: &Splits,
    out_dir: &Path,
    device: &Device,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    Trainer::start(config, data, out_dir, device, opts)?.run(data)
}

/// What is trained and how far: the network, its moving average, the optimiser, the state.
struct Learner {
    model: Model,
    ema: Option<Ema>,
    adam: Adam,
    state: TrainState,
}

/// A run in progress: what it trains, what each step and validation needs, and its clocks.
struct Trainer<'a> {
    config: &'a TrainConfig,
    opts: &'a TrainOptions,
    device: &'a Device,
    out_dir: &'a Path,
    learner: Learner,
    /// The network of the training steps: the learner's weights in the configured arithmetic.
    net: Model,
    objective: Objective,
    sched: StepLr,
    batch_cfg: BatchConfig,
    val_set: ImageSet,
    val_cfg: BatchConfig,
    steps_per_epoch: u64,
    bar: indicatif::ProgressBar,
    losses: Losses,
    /// Reading a loss waits for the device to finish all it was given: on a GPU, the losses
    /// are read every `log_every` steps, and before a validation, not after every step.
    read_every: u64,
    run_start: Instant,
    elapsed_before: f64,
    /// Images/s over the last log period: when it began, images since.
    window: (Instant, u64),
}

/// The training losses: those not read yet, those since the last validation, the last read.
struct Losses {
    pending: PendingLosses,
    running: Running,
    last: f64,
}

impl<'a> Trainer<'a> {
    /// A new run, or the run in `out_dir` resumed, checked against the data and ready to step.
    fn start(
        config: &'a TrainConfig,
        data: &Splits,
        out_dir: &'a Path,
        device: &'a Device,
        opts: &'a TrainOptions,
    ) -> Result<Self> {
        let last_path = out_dir.join(LAST);
        let learner = if opts.resume && last_path.exists() {
            resume(config, &last_path, device)?
        } else {
            fresh(config, out_dir, device, opts)?
        };
        check_data(config, data, &learner.model)?;
        let model = &learner.model;
        let net = model.with_compute_dtype(config.compute_dtype().unwrap_or(DType::F32));
        if !device.is_cpu() {
            // Dropout masks off the CPU come from the device's generator (see
            // `denoise_model::layers::dropout`): seeded from the run's seed and the step reached.
            device.set_seed(config.seed.wrapping_add(learner.state.global_step))?;
        }
        tracing::info!(
            "{}: {} parameters on {:?}",
            config.arch,
            model.num_params(),
            device
        );
        tracing::info!("{}", data.description);

        let val_set = if data.val.n > 0 {
            let limit = config.val_limit.unwrap_or(data.val.n).min(data.val.n);
            data.val.select(&(0..limit).collect::<Vec<_>>())
        } else {
            tracing::warn!(
                "the dataset has no validation images: validating on the training images"
            );
            data.train.clone()
        };
        if data.train.n == 0 {
            return Err(TrainError::Config(
                "the dataset has no training images".into(),
            ));
        }
        let batch_cfg = BatchConfig {
            batch_size: config.batch,
            sigma_min: (config.sigma_min / 255.0) as f32,
            sigma_max: (config.sigma_max / 255.0) as f32,
            lognormal_fraction: config.lognormal_share() as f32,
            p_mean: config.p_mean as f32,
            p_std: config.p_std as f32,
            flip: config.flip,
            corruption: config.corruption().expect("validated"),
            seed: config.seed,
        };
        // Validation noise is always uniform in [sigma_min, sigma_max], so that its PSNR reads
        // the same whatever the training distribution.
        let val_cfg = BatchConfig {
            batch_size: config.batch.max(64),
            lognormal_fraction: 0.0,
            ..batch_cfg.clone()
        };
        let objective = Objective::new(config, model);
        let sched = StepLr {
            base_lr: config.lr,
            step_size: config.lr_step,
            gamma: config.lr_gamma,
        };
        let steps_per_epoch =
            denoise_data::batch::steps_per_epoch(data.train.n, config.batch) as u64;
        let bar = progress_bar(config, steps_per_epoch, opts.progress);
        bar.set_position(learner.state.global_step);
        Ok(Self {
            config,
            opts,
            device,
            out_dir,
            net,
            objective,
            sched,
            batch_cfg,
            val_set,
            val_cfg,
            steps_per_epoch,
            bar,
            losses: Losses {
                pending: PendingLosses::default(),
                running: Running::default(),
                last: f64::NAN,
            },
            read_every: if device.is_cpu() {
                1
            } else {
                config.log_every.max(1)
            },
            run_start: Instant::now(),
            elapsed_before: learner.state.elapsed_secs,
            window: (Instant::now(), 0),
            learner,
        })
    }

    /// Steps until a stop condition, validating and saving as the recipe says; then finishes.
    fn run(mut self, data: &Splits) -> Result<TrainSummary> {
        if self.learner.state.finished {
            tracing::info!("this run has already finished (epochs done or stopped early)");
            self.bar.finish_and_clear();
            return Ok(self.summary("already finished".into()));
        }
        let state = &self.learner.state;
        let mut batcher = Batcher::start(
            data.train_images(),
            self.batch_cfg.clone(),
            state.epoch,
            state.index,
        );
        self.run_start = Instant::now();
        self.window = (Instant::now(), 0);
        if self.opts.resume {
            self.repair_best()?;
        }
        let stopped_by = loop {
            if let Some(reason) = self.stop_reason() {
                break reason;
            }
            let lr = self.sched.lr(self.learner.state.epoch);
            let batch = batcher.next_batch();
            self.step(&batch, lr)?;
            self.log(lr)?;
            if let Some(reason) = self.end_of_step(lr)? {
                break reason;
            }
        };
        drop(batcher);
        self.finish(stopped_by)
    }

    /// Why the run stops before the next step, if it does: the step limit, the time budget, or
    /// an interruption.
    fn stop_reason(&self) -> Option<String> {
        let config = self.config;
        if let Some(m) = config
            .max_steps
            .filter(|&m| self.learner.state.global_step >= m)
        {
            Some(format!("--max-steps {m}"))
        } else if config
            .time_budget_secs
            .is_some_and(|t| self.run_start.elapsed().as_secs_f64() >= t)
        {
            Some("time budget".into())
        } else if self.opts.stop.load(Ordering::SeqCst) {
            Some("interrupted".into())
        } else {
            None
        }
    }

    /// One optimizer step on `b` at learning rate `lr`, with the moving average and the
    /// counters; reads the loss when it is time to.
    fn step(&mut self, b: &Batch, lr: f64) -> Result<()> {
        let Learner {
            model,
            ema,
            adam,
            state,
        } = &mut self.learner;
        adam.set_lr(lr);
        debug_assert_eq!((b.epoch, b.index), (state.epoch, state.index));
        let (noisy, clean, sigma) = to_tensors(b, self.device)?;
        let mut drop_rng = denoise_model::rng(denoise_data::noise::mix(&[
            self.config.seed,
            0x44524f50,
            state.global_step,
        ]));
        let out = self
            .net
            .forward(&noisy, Some(&sigma), Some(&mut drop_rng))?;
        let loss = self.objective.loss(&out, &clean, &b.sigmas)?;
        let grads = loss.backward()?;
        adam.step(&grads)?;
        self.losses.pending.push(&loss)?;
        state.global_step += 1;
        state.images_seen += b.n as u64;
        if let Some(ema) = ema {
            ema.update(model, state.images_seen, b.n)?;
        }
        state.index += 1;
        self.window.1 += b.n as u64;
        // Every logged step is read: `read_every` is 1 or `log_every`.
        if state.global_step % self.read_every == 0 {
            let losses = &mut self.losses;
            if let Some(l) = losses
                .pending
                .settle(state.global_step, &mut losses.running)?
            {
                losses.last = l;
            }
        }
        state.elapsed_secs = self.elapsed_before + self.run_start.elapsed().as_secs_f64();
        Ok(())
    }

    /// The progress bar after each step; `steps.csv` and the log every `log_every` steps.
    fn log(&mut self, lr: f64) -> Result<()> {
        let state = &self.learner.state;
        let l = self.losses.last;
        let ips = self.window.1 as f64 / self.window.0.elapsed().as_secs_f64().max(1e-9);
        let bar = &self.bar;
        bar.set_prefix(format!("{}/{}", state.epoch + 1, self.config.epochs));
        bar.set_message(if l.is_finite() {
            format!("loss {l:.4} {ips:.1} img/s")
        } else {
            format!("{ips:.1} img/s")
        });
        bar.set_position(state.global_step);
        if !state
            .global_step
            .is_multiple_of(self.config.log_every.max(1))
        {
            return Ok(());
        }
        append(
            &self.out_dir.join(STEPS),
            &format!(
                "{},{},{l:.6},{lr:e},{ips:.2},{:.1}",
                state.global_step, state.epoch, state.elapsed_secs
            ),
        )?;
        // With a progress bar on screen the bar shows this; logs keep it at debug level.
        if self.opts.progress {
            tracing::debug!(step = state.global_step, loss = format!("{l:.4}"), "train");
        } else {
            tracing::info!(
                step = state.global_step,
                epoch = state.epoch + 1,
                loss = format!("{l:.4}"),
                img_per_s = format!("{ips:.1}"),
                "train"
            );
        }
        self.window = (Instant::now(), 0);
        Ok(())
    }

    /// After a step: the epoch's end, and a validation when one is due; returns why the run
    /// stops there (its epochs done, or early stopping), having saved `last`.
    fn end_of_step(&mut self, lr: f64) -> Result<Option<String>> {
        let config = self.config;
        let state = &mut self.learner.state;
        let epoch_done = state.index as u64 >= self.steps_per_epoch;
        let periodic = config
            .val_every
            .is_some_and(|v| v > 0 && state.global_step.is_multiple_of(v));
        if epoch_done {
            state.epoch += 1;
            state.index = 0;
        }
        if !(epoch_done || periodic) {
            return Ok(None);
        }
        let step = state.global_step;
        let losses = &mut self.losses;
        losses.pending.settle(step, &mut losses.running)?;
        let early_stop = self.validate(lr)?;
        let state = &mut self.learner.state;
        let stopped_by = if early_stop {
            format!(
                "early stopping ({} validations without improvement)",
                config.patience
            )
        } else if state.epoch >= config.epochs {
            format!("{} epochs done", config.epochs)
        } else {
            return Ok(None);
        };
        state.finished = true;
        self.checkpoint()?;
        Ok(Some(stopped_by))
    }

    /// Validates (the average weights where kept), records, saves `best` when it improved and
    /// always `last`; returns whether early stopping fires. Resets the running training loss.
    fn validate(&mut self, lr: f64) -> Result<bool> {
        let Learner {
            model, ema, state, ..
        } = &mut self.learner;
        let bar = &self.bar;
        bar.set_message("validating");
        let judged = ema.as_ref().map_or(&*model, |e| &e.model);
        let (val_loss, val_psnr) = validate(
            judged,
            &self.val_set,
            &self.val_cfg,
            &self.objective,
            self.device,
        )?;
        let best = state.early.observe(val_loss);
        let running = &mut self.losses.running;
        let train_loss = if running.n > 0 {
            running.sum / running.n as f64
        } else {
            f64::NAN
        };
        let elapsed = state.elapsed_secs.max(1e-9);
        let record = Record {
            epoch: state.epoch,
            step: state.global_step,
            train_loss,
            val_loss,
            val_psnr,
            lr,
            elapsed_secs: state.elapsed_secs,
            images_per_s: state.images_seen as f64 / elapsed,
            best,
        };
        append(
            &self.out_dir.join(METRICS),
            &serde_json::to_string(&record).expect("record serialises"),
        )?;
        state.history.push(record);
        bar.suspend(|| {
            tracing::info!(
                step = state.global_step,
                train_loss = format!("{train_loss:.4}"),
                val_loss = format!("{val_loss:.4}"),
                val_psnr = format!("{val_psnr:.2}"),
                best,
                "validation"
            )
        });
        *running = Running::default();
        if best {
            state.best_step = Some(state.global_step);
        }
        // `last` first: a run killed between the two writes resumes from it and rewrites
        // `best` (`repair_best`); the other way round it could not resume at all.
        self.checkpoint()?;
        if best {
            self.save_best()?;
        }
        Ok(self.learner.state.early.should_stop())
    }

    /// Saves `best.safetensors`: the network and its average at this step.
    fn save_best(&self) -> Result<()> {
        let l = &self.learner;
        save_checkpoint(
            &self.out_dir.join(BEST),
            &l.model,
            l.ema.as_ref(),
            None,
            &l.state,
        )
    }

    /// After a resume: when the run stopped between writing `last` and `best` at a validation
    /// that improved (killed), `best` is missing or older than the state says; it is written
    /// again from the resumed weights, which are that validation's.
    fn repair_best(&self) -> Result<()> {
        let state = &self.learner.state;
        if state.best_step != Some(state.global_step) {
            return Ok(());
        }
        let path = self.out_dir.join(BEST);
        let saved = read_step(&path);
        if saved != Some(state.global_step) {
            tracing::info!(
                "{}: rewriting it from step {} (the run stopped while saving it)",
                path.display(),
                state.global_step
            );
            self.save_best()?;
        }
        Ok(())
    }

    /// Saves `last.safetensors`: the network, its average, the optimiser and the state.
    fn checkpoint(&self) -> Result<()> {
        let l = &self.learner;
        save_checkpoint(
            &self.out_dir.join(LAST),
            &l.model,
            l.ema.as_ref(),
            Some(&l.adam),
            &l.state,
        )
    }

    /// After the last step: a run cut short validates what it has not validated yet (so that
    /// `best` exists), else saves `last`; then the loss plot.
    fn finish(mut self, stopped_by: String) -> Result<TrainSummary> {
        let step = self.learner.state.global_step;
        let losses = &mut self.losses;
        losses.pending.settle(step, &mut losses.running)?;
        if self.losses.running.n > 0 || !self.out_dir.join(BEST).exists() {
            let epoch = self.learner.state.epoch;
            let lr = self
                .sched
                .lr(epoch.min(self.config.epochs.saturating_sub(1)));
            self.validate(lr)?;
        } else {
            self.checkpoint()?;
        }
        self.bar.finish_and_clear();
        if let Err(e) = crate::plot::plot_losses(self.out_dir) {
            tracing::warn!("could not draw {}: {e}", self.out_dir.join(PLOT).display());
        }
        tracing::info!(
            "stopped: {stopped_by}; step {}, {:.0} s of training",
            self.learner.state.global_step,
            self.learner.state.elapsed_secs
        );
        Ok(self.summary(stopped_by))
    }

    fn summary(self, stopped_by: String) -> TrainSummary {
        TrainSummary {
            state: self.learner.state,
            out_dir: self.out_dir.to_path_buf(),
            stopped_by,
        }
    }
}

/// The step of the checkpoint at `path` (its training state), if it loads.
fn read_step(path: &Path) -> Option<u64> {
    let ckpt = Checkpoint::load(path).ok()?;
    state_of(&ckpt).ok().map(|s| s.global_step)
}

/// Adam's settings in a recipe.
fn adam_config(config: &TrainConfig) -> AdamConfig {
    AdamConfig {
        lr: config.lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.eps,
        weight_decay: config.weight_decay,
    }
}

/// The run of `last_path` as it was saved, continued with `config` (the network keeps its
/// shape: flags that would change it are an error; a new dropout is taken).
fn resume(config: &TrainConfig, last_path: &Path, device: &Device) -> Result<Learner> {
    let ckpt = Checkpoint::load(last_path)?;
    let mut state = state_of(&ckpt)?;
    let wanted = network_of(
        &ckpt,
        config,
        "",
        "a resumed run keeps its network (leave these settings out, or train a new one into \
         another --out)",
    )?;
    check_training_memory(&wanted, device, config.ema_half_life().is_some())?;
    let model = Model::new(&wanted, device, 0)?;
    model.load_weights_from(&ckpt, "model")?;
    let mut adam = Adam::new(model.vars(), adam_config(config))?;
    adam.step = ckpt
        .metadata
        .get("denoise.adam_step")
        .and_then(|s| s.parse().ok())
        .unwrap_or(state.global_step);
    for (name, var, m, v) in adam.state.iter_mut() {
        *m = ckpt
            .tensor(&format!("adam.m.{name}"))?
            .to_device(device)?
            .to_dtype(var.dtype())?;
        *v = ckpt
            .tensor(&format!("adam.v.{name}"))?
            .to_device(device)?
            .to_dtype(var.dtype())?;
    }
    state.config = config.clone();
    state.early.patience = config.patience;
    tracing::info!(
        "resuming from {} at epoch {}, step {} ({:.0} s trained so far)",
        last_path.display(),
        state.epoch + 1,
        state.global_step,
        state.elapsed_secs
    );
    let ema = match config.ema_half_life() {
        Some(h) => Some(Ema::resume(&model, &ckpt, h, config.ema_rampup)?),
        None => None,
    };
    Ok(Learner {
        model,
        ema,
        adam,
        state,
    })
}

/// A new run (from `--init-from`'s weights where given), replacing the logs of any earlier
/// run in `out_dir` once the network is known to fit.
fn fresh(
    config: &TrainConfig,
    out_dir: &Path,
    device: &Device,
    opts: &TrainOptions,
) -> Result<Learner> {
    let last_path = out_dir.join(LAST);
    if opts.resume {
        tracing::warn!(
            "--resume: no {} yet, starting a new run",
            last_path.display()
        );
    } else if last_path.exists() || out_dir.join(BEST).exists() {
        tracing::warn!(
            "{}: starting over (--overwrite), replacing its checkpoints",
            out_dir.display()
        );
    }
    let init = match &config.init_from {
        Some(path) => Some(init_checkpoint(config, Path::new(path))?),
        None => None,
    };
    let model_config = match &init {
        Some((_, c)) => c.clone(),
        None => config.model_config().expect("validated"),
    };
    // Before anything of the old run is removed.
    check_training_memory(&model_config, device, config.ema_half_life().is_some())?;
    for f in [METRICS, STEPS] {
        let _ = std::fs::remove_file(out_dir.join(f));
    }
    let model = Model::new(&model_config, device, config.seed)?;
    if let Some((ckpt, _)) = &init {
        model.load_weights(ckpt)?;
        tracing::info!("starting from the weights of {}", ckpt.path);
    }
    let adam = Adam::new(model.vars(), adam_config(config))?;
    let ema = match config.ema_half_life() {
        Some(h) => Some(Ema::new(&model, h, config.ema_rampup)?),
        None => None,
    };
    let state = TrainState {
        config: config.clone(),
        epoch: 0,
        index: 0,
        global_step: 0,
        images_seen: 0,
        early: EarlyStopping::new(config.patience),
        best_step: None,
        elapsed_secs: 0.0,
        finished: false,
        history: Vec::new(),
    };
    Ok(Learner {
        model,
        ema,
        adam,
        state,
    })
}

/// An error unless `model` can train on the images of `data`: sides that are multiples of its
/// size multiple, and at least SSIM's window for the L1 + SSIM loss.
fn check_data(config: &TrainConfig, data: &Splits, model: &Model) -> Result<()> {
    let m = model.size_multiple();
    for (name, set) in [("training", &data.train), ("validation", &data.val)] {
        if set.n > 0 && (set.h % m != 0 || set.w % m != 0) {
            return Err(TrainError::Config(format!(
                "the {name} images are {}x{}: {} needs sides that are multiples of {m} \
                 (patches of a multiple of {m} fit any images)",
                set.w, set.h, config.arch
            )));
        }
        if set.n > 0 && config.loss_kind() == LossKind::L1Ssim {
            if let Err(TrainError::TooSmall { w, h, window }) = crate::eval::check_size(set) {
                return Err(TrainError::Config(format!(
                    "the {name} images are {w}x{h}: the l1-ssim loss needs at least \
                     {window}x{window} pixels (SSIM's window)"
                )));
            }
        }
    }
    Ok(())
}

/// The progress bar of a run (hidden without `show`), over the steps it plans.
fn progress_bar(config: &TrainConfig, steps_per_epoch: u64, show: bool) -> indicatif::ProgressBar {
    let planned = config.epochs as u64 * steps_per_epoch;
    let total = config.max_steps.map_or(planned, |m| m.min(planned));
    let bar = if show {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
