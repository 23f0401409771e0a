//! The training loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use denoise_data::batch::{validation_batches, BatchConfig, Batcher};
use denoise_data::{ImageSet, Splits};
use denoise_loss::{edm_weight, mse, psnr, weighted_mse, MixLoss};
use denoise_model::{Checkpoint, Model, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::adam::{Adam, AdamConfig};
use crate::ema::Ema;
use crate::schedule::{EarlyStopping, StepLr};
use crate::LossKind;
use crate::{io_err, Result, TrainConfig, TrainError};

/// The checkpoint of the best validation loss, in the output folder.
pub const BEST: &str = "best.safetensors";
/// The checkpoint of the latest step, with the optimizer and training state a resume needs.
pub const LAST: &str = "last.safetensors";
/// One JSON [`Record`] per validation.
pub const METRICS: &str = "metrics.jsonl";
/// The training loss of every logged step.
pub const STEPS: &str = "steps.csv";
/// The loss plot.
pub const PLOT: &str = "loss.png";

/// One validation, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The epoch (from 0).
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: u64,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    /// Mean validation loss (of the averaged weights where there are some).
    pub val_loss: f64,
    /// Mean validation PSNR, in dB.
    pub val_psnr: f64,
    /// The learning rate in use.
    pub lr: f64,
    /// Training time so far, over all runs, in seconds.
    pub elapsed_secs: f64,
    /// Training images per second since the previous validation.
    pub images_per_s: f64,
    /// Whether this validation saved `best.safetensors`.
    pub best: bool,
}

/// Everything a resume needs besides the tensors. Randomness has no hidden state: batches
/// draw from `(seed, epoch, batch index)` and dropout from `(seed, step)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The recipe of the latest run.
    pub config: TrainConfig,
    /// The epoch in progress (from 0) and the index of its next batch.
    pub epoch: usize,
    /// See `epoch`.
    pub index: usize,
    /// Optimizer steps over all runs.
    pub global_step: u64,
    /// Training images seen over all runs.
    pub images_seen: u64,
    /// Early stopping's state.
    pub early: EarlyStopping,
    /// The step of `best.safetensors`.
    pub best_step: Option<u64>,
    /// Training time over all runs, in seconds.
    pub elapsed_secs: f64,
    /// True once the epochs are done or early stopping fired.
    pub finished: bool,
    /// Every validation so far.
    pub history: Vec<Record>,
}

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

/// Reads the training state of `out_dir/last.safetensors`, if there is one.
pub fn read_state(out_dir: &Path) -> Result<Option<TrainState>> {
    let path = out_dir.join(LAST);
    if !path.exists() {
        return Ok(None);
    }
    let ckpt = Checkpoint::load(&path)?;
    Ok(Some(state_of(&ckpt)?))
}

fn state_of(ckpt: &Checkpoint) -> Result<TrainState> {
    let json = ckpt
        .metadata
        .get("denoise.train")
        .ok_or_else(|| TrainError::Resume {
            path: ckpt.path.clone(),
            reason: "no training state (`denoise.train` metadata): not a last.safetensors".into(),
        })?;
    serde_json::from_str(json).map_err(|e| TrainError::Resume {
        path: ckpt.path.clone(),
        reason: format!("bad training state: {e}"),
    })
}

/// A batch's noisy images, clean images and noise levels `(N,)` on `device`.
fn to_tensors(b: &denoise_data::Batch, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = b.shape();
    let noisy = Tensor::from_slice(&b.noisy, shape, &Device::Cpu)?.to_device(device)?;
    let clean = Tensor::from_slice(&b.clean, shape, &Device::Cpu)?.to_device(device)?;
    let sigma = Tensor::from_slice(&b.sigmas, b.n, &Device::Cpu)?.to_device(device)?;
    Ok((noisy, clean, sigma))
}

/// The training loss of a batch.
pub struct Objective {
    /// Which loss.
    pub kind: LossKind,
    /// The L1 + SSIM mix (for [`LossKind::L1Ssim`]).
    pub mix: MixLoss,
    /// The data's standard deviation in EDM's weighting (for [`LossKind::Edm`]).
    pub sigma_data: f64,
}

impl Objective {
    /// The loss a recipe asks for, for this model.
    pub fn new(config: &TrainConfig, model: &Model) -> Self {
        let sigma_data = match model.config() {
            denoise_model::ModelConfig::CondUnet(c) => c.sigma_data,
            _ => 0.5,
        };
        Self {
            kind: config.loss_kind(),
            mix: MixLoss::new(config.ssim_weight),
            sigma_data,
        }
    }

    /// The loss of denoised `out` against `clean` for images of noise levels `sigmas`.
    pub fn loss(&self, out: &Tensor, clean: &Tensor, sigmas: &[f32]) -> Result<Tensor> {
        Ok(match self.kind {
            LossKind::L1Ssim => self.mix.forward(out, clean)?,
            LossKind::Edm => {
                let w: Vec<f32> = sigmas
                    .iter()
                    .map(|&s| edm_weight(s as f64, self.sigma_data) as f32)
                    .collect();
                let w = Tensor::from_vec(w, sigmas.len(), out.device())?;
                weighted_mse(out, clean, &w)?
            }
        })
    }

    /// The validation loss: the training loss for L1 + SSIM; the plain MSE for EDM's loss,
    /// whose weights would let the few nearly clean validation images dominate.
    pub fn validation_loss(&self, out: &Tensor, clean: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            LossKind::L1Ssim => self.mix.forward(out, clean)?,
            LossKind::Edm => mse(out, clean)?,
        })
    }
}

/// Validation loss and PSNR over the fixed validation batches.
fn validate(
    model: &Model,
    set: &ImageSet,
    cfg: &BatchConfig,
    objective: &Objective,
    device: &Device,
) -> Result<(f64, f64)> {
    let (mut total, mut total_psnr, mut n) = (0f64, 0f64, 0usize);
    for b in validation_batches(set, cfg) {
        let (noisy, clean, sigma) = to_tensors(&b, device)?;
        let out = denoise_model::layers::inference(|| model.forward(&noisy, Some(&sigma), None))?;
        total += objective
            .validation_loss(&out, &clean)?
            .to_scalar::<f32>()? as f64
            * b.n as f64;
        let db = psnr(&out.clamp(0f32, 1f32)?, &clean, 1.0)?.to_vec1::<f32>()?;
        total_psnr += db.iter().map(|&v| v.min(100.0) as f64).sum::<f64>();
        n += b.n;
    }
    Ok((total / n.max(1) as f64, total_psnr / n.max(1) as f64))
}

fn save_checkpoint(
    path: &Path,
    model: &Model,
    ema: Option<&Ema>,
    adam: Option<&Adam>,
    state: &TrainState,
) -> Result<()> {
    let mut ckpt = Checkpoint::new(path);
    ckpt.set_model(model)?;
    if let Some(ema) = ema {
        for (name, t) in ema.model.tensors() {
            ckpt.insert(&format!("ema.{name}"), &t)?;
        }
    }
    ckpt.metadata.insert(
        "denoise.train".into(),
        serde_json::to_string(state).expect("state serialises"),
    );
    if let Some(adam) = adam {
        ckpt.metadata
            .insert("denoise.adam_step".into(), adam.step.to_string());
        for (name, _, m, v) in &adam.state {
            ckpt.insert(&format!("adam.m.{name}"), m)?;
            ckpt.insert(&format!("adam.v.{name}"), v)?;
        }
    }
    ckpt.save()?;
    Ok(())
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))
}

/// The lock file that keeps two runs out of one folder.
const LOCK: &str = ".train.lock";

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

/// Takes the folder's lock for this process's lifetime (released when the file closes). Where
/// the file system cannot lock files, the run goes on without it, with a warning.
fn lock_out_dir(out_dir: &Path) -> Result<std::fs::File> {
    let path = out_dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(TrainError::Busy {
                path: out_dir.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => tracing::warn!(
            "{}: cannot lock ({e}); nothing keeps a second run out of this folder",
            path.display()
        ),
    }
    Ok(file)
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
    let model_config = config.model_config().expect("validated");
    let adam_config = AdamConfig {
        lr: config.lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: config.eps,
        weight_decay: config.weight_decay,
    };
    let last_path = out_dir.join(LAST);
    let best_path = out_dir.join(BEST);

    // Fresh start or resume.
    let (model, ema, mut adam, mut state) = if opts.resume && last_path.exists() {
        let ckpt = Checkpoint::load(&last_path)?;
        let mut state = state_of(&ckpt)?;
        // The network continues as saved: flags that would change its shape are an error (they
        // were ignored before); a new dropout is taken.
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
        let mut adam = Adam::new(model.vars(), adam_config)?;
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
        (model, ema, adam, state)
    } else {
        if opts.resume {
            tracing::warn!(
                "--resume: no {} yet, starting a new run",
                last_path.display()
            );
        } else if last_path.exists() || best_path.exists() {
            tracing::warn!(
                "{}: starting over (--overwrite), replacing its checkpoints",
                out_dir.display()
            );
        }
        let init = match &config.init_from {
            Some(path) => Some(init_checkpoint(config, Path::new(path))?),
            None => None,
        };
        let model_config = init.as_ref().map_or(model_config, |(_, c)| c.clone());
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
        let adam = Adam::new(model.vars(), adam_config)?;
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
        (model, ema, adam, state)
    };
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
    // The network of the training steps: the same weights, in the configured arithmetic.
    let net = model.with_compute_dtype(config.compute_dtype().unwrap_or(DType::F32));
    if !device.is_cpu() {
        // Dropout masks off the CPU come from the device's generator (see
        // `denoise_model::layers::dropout`): seeded from the run's seed and the step reached.
        device.set_seed(config.seed.wrapping_add(state.global_step))?;
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
        tracing::warn!("the dataset has no validation images: validating on the training images");
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
    let objective = Objective::new(config, &model);
    let sched = StepLr {
        base_lr: config.lr,
        step_size: config.lr_step,
        gamma: config.lr_gamma,
    };

    let steps_per_epoch = denoise_data::batch::steps_per_epoch(data.train.n, config.batch) as u64;
    let planned = config.epochs as u64 * steps_per_epoch;
    let total = config.max_steps.map_or(planned, |m| m.min(planned));
    let bar = if opts.progress {
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
    bar.set_position(state.global_step);

    if state.finished {
        tracing::info!("this run has already finished (epochs done or stopped early)");
        bar.finish_and_clear();
        return Ok(TrainSummary {
            state,
            out_dir: out_dir.to_path_buf(),
            stopped_by: "already finished".into(),
        });
    }

    let validation = Validation {
        set: &val_set,
        cfg: &val_cfg,
        objective: &objective,
        device,
        out_dir,
        bar: &bar,
    };
    let mut batcher = Batcher::start(data.train_images(), batch_cfg, state.epoch, state.index);
    let run_start = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut running = Running::default();
    let mut pending = PendingLosses::default();
    // The last loss read, for the progress bar.
    let mut last_loss = f64::NAN;
    // Reading a loss waits for the device to finish all it was given: on a GPU, the losses are
    // read every `log_every` steps, and before a validation, not after every step.
    let read_every = if device.is_cpu() {
        1
    } else {
        config.log_every.max(1)
    };
    let mut window = (Instant::now(), 0u64); // images/s over the last log period
    let mut stopped_by = String::new();

    loop {
        // Stop conditions checked before each step.
        if config.max_steps.is_some_and(|m| state.global_step >= m) {
            stopped_by = format!("--max-steps {}", config.max_steps.unwrap());
        } else if config
            .time_budget_secs
            .is_some_and(|t| run_start.elapsed().as_secs_f64() >= t)
        {
            stopped_by = "time budget".into();
        } else if opts.stop.load(Ordering::SeqCst) {
            stopped_by = "interrupted".into();
        }
        if !stopped_by.is_empty() {
            break;
        }

        let lr = sched.lr(state.epoch);
        adam.set_lr(lr);
        let b = batcher.next_batch();
        debug_assert_eq!((b.epoch, b.index), (state.epoch, state.index));
        let (noisy, clean, sigma) = to_tensors(&b, device)?;
        let mut drop_rng = denoise_model::rng(denoise_data::noise::mix(&[
            config.seed,
            0x44524f50,
            state.global_step,
        ]));
        let out = net.forward(&noisy, Some(&sigma), Some(&mut drop_rng))?;
        let loss = objective.loss(&out, &clean, &b.sigmas)?;
        let grads = loss.backward()?;
        adam.step(&grads)?;
        pending.push(&loss)?;
        state.global_step += 1;
        state.images_seen += b.n as u64;
        if let Some(ema) = &ema {
            ema.update(&model, state.images_seen, b.n)?;
        }
        state.index += 1;
        window.1 += b.n as u64;
        let logged = state.global_step % config.log_every.max(1) == 0;
        // Every logged step is read: `read_every` is 1 or `log_every`.
        if state.global_step % read_every == 0 {
            if let Some(l) = pending.settle(state.global_step, &mut running)? {
                last_loss = l;
            }
        }
        let l = last_loss;
        state.elapsed_secs = elapsed_before + run_start.elapsed().as_secs_f64();

        let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
        bar.set_prefix(format!("{}/{}", state.epoch + 1, config.epochs));
        bar.set_message(if l.is_finite() {
            format!("loss {l:.4} {ips:.1} img/s")
        } else {
            format!("{ips:.1} img/s")
        });
        bar.set_position(state.global_step);
        if logged {
            append(
                &out_dir.join(STEPS),
                &format!(
                    "{},{},{l:.6},{lr:e},{ips:.2},{:.1}",
                    state.global_step, state.epoch, state.elapsed_secs
                ),
            )?;
            // With a progress bar on screen the bar shows this; logs keep it at debug level.
            if opts.progress {
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
            window = (Instant::now(), 0);
        }

        let epoch_done = state.index as u64 >= steps_per_epoch;
        let periodic = config
            .val_every
            .is_some_and(|v| v > 0 && state.global_step % v == 0);
        if epoch_done {
            state.epoch += 1;
            state.index = 0;
        }
        if epoch_done || periodic {
            pending.settle(state.global_step, &mut running)?;
            let stop =
                validation.run(&learner(&model, &ema, &adam), &mut state, &mut running, lr)?;
            if stop {
                stopped_by = format!(
                    "early stopping ({} validations without improvement)",
                    config.patience
                );
                state.finished = true;
            } else if state.epoch >= config.epochs {
                stopped_by = format!("{} epochs done", config.epochs);
                state.finished = true;
            }
            if state.finished {
                save_checkpoint(&last_path, &model, ema.as_ref(), Some(&adam), &state)?;
                break;
            }
        }
    }
    drop(batcher);
    pending.settle(state.global_step, &mut running)?;
    // A run cut short validates what it has not validated yet, so that best.safetensors exists.
    if running.n > 0 || !best_path.exists() {
        let lr = sched.lr(state.epoch.min(config.epochs.saturating_sub(1)));
        validation.run(&learner(&model, &ema, &adam), &mut state, &mut running, lr)?;
    } else {
        save_checkpoint(&last_path, &model, ema.as_ref(), Some(&adam), &state)?;
    }
    bar.finish_and_clear();
    if let Err(e) = crate::plot::plot_losses(out_dir) {
        tracing::warn!("could not draw {}: {e}", out_dir.join(PLOT).display());
    }
    tracing::info!(
        "stopped: {stopped_by}; step {}, {:.0} s of training",
        state.global_step,
        state.elapsed_secs
    );
    Ok(TrainSummary {
        state,
        out_dir: out_dir.to_path_buf(),
        stopped_by,
    })
}

/// The training loss since the last validation.
#[derive(Default)]
struct Running {
    sum: f64,
    n: u64,
}

/// Training losses not read yet: summed on the device (one small addition per step) and read
/// together, since reading a value waits for everything queued on the device.
#[derive(Default)]
struct PendingLosses {
    sum: Option<Tensor>,
    n: u64,
}

impl PendingLosses {
    fn push(&mut self, loss: &Tensor) -> Result<()> {
        let loss = loss.detach().to_dtype(DType::F32)?;
        self.sum = Some(match self.sum.take() {
            Some(s) => (s + loss)?,
            None => loss,
        });
        self.n += 1;
        Ok(())
    }

    /// Reads the pending losses into `running` and returns their mean (`None` when there were
    /// none). A mean that is not finite stops training: some loss at or before `step` was not.
    fn settle(&mut self, step: u64, running: &mut Running) -> Result<Option<f64>> {
        let Some(sum) = self.sum.take() else {
            return Ok(None);
        };
        let n = std::mem::take(&mut self.n);
        let sum = sum.to_scalar::<f32>()? as f64;
        let mean = sum / n as f64;
        if !mean.is_finite() {
            return Err(TrainError::Diverged { step, loss: mean });
        }
        running.sum += sum;
        running.n += n;
        Ok(Some(mean))
    }
}

/// What is being trained: the network, its moving average, the optimiser.
#[derive(Clone, Copy)]
struct Learner<'a> {
    model: &'a Model,
    ema: Option<&'a Ema>,
    adam: &'a Adam,
}

fn learner<'a>(model: &'a Model, ema: &'a Option<Ema>, adam: &'a Adam) -> Learner<'a> {
    Learner {
        model,
        ema: ema.as_ref(),
        adam,
    }
}

/// What a validation needs besides the model and the run's state.
struct Validation<'a> {
    set: &'a ImageSet,
    cfg: &'a BatchConfig,
    objective: &'a Objective,
    device: &'a Device,
    out_dir: &'a Path,
    bar: &'a indicatif::ProgressBar,
}

impl Validation<'_> {
    /// Validates (the average weights where kept), records, saves `best` when it improved and
    /// always `last`; returns whether early stopping fires. Resets the running training loss.
    fn run(
        &self,
        learner: &Learner,
        state: &mut TrainState,
        running: &mut Running,
        lr: f64,
    ) -> Result<bool> {
        let Learner { model, ema, adam } = *learner;
        let Validation {
            set: val_set,
            cfg: val_cfg,
            objective,
            device,
            out_dir,
            bar,
        } = *self;
        bar.set_message("validating");
        let judged = ema.map_or(model, |e| &e.model);
        let (val_loss, val_psnr) = validate(judged, val_set, val_cfg, objective, device)?;
        let best = state.early.observe(val_loss);
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
            &out_dir.join(METRICS),
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
            save_checkpoint(&out_dir.join(BEST), model, ema, None, state)?;
        }
        save_checkpoint(&out_dir.join(LAST), model, ema, Some(adam), state)?;
        Ok(state.early.should_stop())
    }
}

/// An error unless the network is small enough to build ([`ModelConfig::check_size`]) and, on
/// the CPU, the memory available holds its weights, their gradients, Adam's two moments and the
/// moving average if there is one: a network too wide for the machine would otherwise abort
/// the process when an allocation fails.
pub(crate) fn check_training_memory(
    config: &ModelConfig,
    device: &Device,
    ema: bool,
) -> Result<()> {
    let params = config.check_size()?;
    if !device.is_cpu() {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let copies = if ema { 5 } else { 4 };
    let needed = params * 4 * copies;
    if needed > available {
        let gib = |b: u128| b as f64 / f64::from(1u32 << 30);
        return Err(TrainError::Config(format!(
            "training this {} ({params} parameters) needs at least {:.1} GiB for its weights, \
             their gradients and Adam's moments{}; this machine has {:.1} GiB available: a \
             smaller width, or a GPU",
            config.arch(),
            gib(needed),
            if ema { " and the moving average" } else { "" },
            gib(available)
        )));
    }
    Ok(())
}

/// The memory available to a new allocation, in bytes (`MemAvailable` of `/proc/meminfo`;
/// `None` where there is no such file).
fn available_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The checkpoint `--init-from` names and the network a run started from it trains: the
/// checkpoint's, with the configuration's dropout.
fn init_checkpoint(config: &TrainConfig, path: &Path) -> Result<(Checkpoint, ModelConfig)> {
    let ckpt = Checkpoint::load(path)?;
    let wanted = network_of(
        &ckpt,
        config,
        "--init-from: ",
        "a run started from it keeps its network (leave these settings out)",
    )?;
    Ok((ckpt, wanted))
}

/// The network of `ckpt` with the fields of `config` that do not change its shape (dropout);
/// another architecture, or settings that would change the shape, are an error whose reason
/// starts with `what` and ends with `keep`.
fn network_of(
    ckpt: &Checkpoint,
    config: &TrainConfig,
    what: &str,
    keep: &str,
) -> Result<ModelConfig> {
    let saved = ckpt.model_config()?;
    let bad = |reason: String| TrainError::Resume {
        path: ckpt.path.clone(),
        reason: format!("{what}{reason}"),
    };
    if saved.arch() != config.arch {
        return Err(bad(format!(
            "it holds a {} model, the configuration asks for {}",
            saved.arch(),
            config.arch
        )));
    }
    let mut wanted = saved.clone();
    config.apply_model_fields(&mut wanted);
    let changed = shape_changes(&saved, &wanted);
    if !changed.is_empty() {
        return Err(bad(format!(
            "its network has {}: {keep}",
            changed.join(", ")
        )));
    }
    Ok(wanted)
}

/// The shape fields in which `wanted` differs from `saved`, as "width 8, not 16".
fn shape_changes(saved: &ModelConfig, wanted: &ModelConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a}, not {b}"));
        }
    };
    match (saved, wanted) {
        (ModelConfig::SeedUnet(a), ModelConfig::SeedUnet(b)) => {
            check("width", a.base.to_string(), b.base.to_string());
        }
        (ModelConfig::CondUnet(a), ModelConfig::CondUnet(b)) => {
            check("width", a.base.to_string(), b.base.to_string());
            check("mults", format!("{:?}", a.mults), format!("{:?}", b.mults));
            check("blocks", a.blocks.to_string(), b.blocks.to_string());
            check(
                "attention",
                a.attention.to_string(),
                b.attention.to_string(),
            );
        }
        _ => check("network", saved.arch().into(), wanted.arch().into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(v: f32) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn pending_losses_are_read_together() {
        let (mut pending, mut running) = (PendingLosses::default(), Running::default());
        assert_eq!(pending.settle(1, &mut running).unwrap(), None);
        for v in [1.0, 2.0, 4.5] {
            pending.push(&scalar(v)).unwrap();
        }
        assert_eq!(pending.settle(3, &mut running).unwrap(), Some(2.5));
        assert_eq!((running.sum, running.n), (7.5, 3));
        // Read once: nothing is left to read.
        assert_eq!(pending.settle(3, &mut running).unwrap(), None);
        pending.push(&scalar(0.5)).unwrap();
        assert_eq!(pending.settle(4, &mut running).unwrap(), Some(0.5));
        assert_eq!((running.sum, running.n), (8.0, 4));
    }

    #[test]
    fn networks_are_sized_against_the_machine_before_training() {
        let mut config = ModelConfig::from_arch("seed-unet").unwrap();
        config.set_width(8);
        check_training_memory(&config, &Device::Cpu, true).unwrap();
        // Over the parameter limit: refused whatever the machine.
        config.set_width(1100);
        let e = check_training_memory(&config, &Device::Cpu, false).unwrap_err();
        assert!(e.to_string().contains("parameters"), "{e}");
        // Within it, but more than this machine holds (where the memory is known).
        if let Some(bytes) = available_memory() {
            assert!(bytes > 0);
            let per_width2 = 1879u128 * 4 * 4; // seed-unet: about 1879 w^2 parameters
            let width = ((bytes / per_width2) as f64).sqrt() as usize + 64;
            config.set_width(width);
            if config.param_count().unwrap() <= denoise_model::MAX_PARAMS {
                let e = check_training_memory(&config, &Device::Cpu, false).unwrap_err();
                assert!(e.to_string().contains("GiB available"), "{e}");
            }
        }
    }

    #[test]
    fn a_loss_that_is_not_finite_stops_training_when_read() {
        let (mut pending, mut running) = (PendingLosses::default(), Running::default());
        for v in [1.0, f32::NAN, 2.0] {
            pending.push(&scalar(v)).unwrap();
        }
        match pending.settle(12, &mut running) {
            Err(TrainError::Diverged { step: 12, loss }) => assert!(loss.is_nan()),
            other => panic!("expected Diverged at step 12, got {other:?}"),
        }
        // Nothing of the diverged window reaches the running mean.
        assert_eq!(running.n, 0);
    }
}
