//! `denoise train`: the training flags, turned into a [`TrainConfig`], and the run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use denoise_trainer::{TrainConfig, TrainOptions};

use crate::data_args::{load_data, DataArgs, NoiseArgs};
use crate::output::{count_of, is_tty};
use crate::runtime::{pick_device, DeviceArg, DtypeArg};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder: best.safetensors, last.safetensors, metrics.jsonl, steps.csv, loss.png.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// A TOML or JSON file with any of the training keys; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the configuration these flags give, as a TOML file for --config, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Continue the run in --out from its last.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run in an --out that holds one, replacing its checkpoints (without it, or
    /// --resume, such a folder is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Network architecture: cond-unet (noise-level conditioned, the default) or seed-unet
    /// (the original blind U-Net).
    #[arg(long)]
    pub arch: Option<String>,
    /// Width of the network's first level (default 64).
    #[arg(long)]
    pub width: Option<usize>,
    /// cond-unet: width multiple of each level, comma-separated (default 1,2,2).
    #[arg(long, value_delimiter = ',')]
    pub mults: Option<Vec<usize>>,
    /// cond-unet: residual blocks per level (default 1).
    #[arg(long)]
    pub blocks: Option<usize>,
    /// cond-unet: self-attention at the lowest resolution.
    #[arg(long)]
    pub attention: bool,
    /// cond-unet: dropout in the residual blocks (default 0.1).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Loss: edm (sigma-weighted MSE, cond-unet's default) or l1-ssim (the original's).
    #[arg(long)]
    pub loss: Option<String>,
    /// Share of training noise levels drawn from EDM's log-normal instead of uniformly from
    /// [sigma-min, sigma-max] (default 1 for cond-unet, 0 for seed-unet).
    #[arg(long)]
    pub lognormal_fraction: Option<f64>,
    /// Half-life of the weights' moving average in images (0: none; default 500000 for cond-unet).
    #[arg(long)]
    pub ema_halflife: Option<f64>,
    /// Stop after this many optimizer steps in total (counting earlier runs when resuming).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop after this many seconds of training in this run.
    #[arg(long)]
    pub time_budget: Option<f64>,
    /// Passes over the training images at most (default 30).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per optimizer step (default 64).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam's learning rate before StepLR's decay (default 1e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam's weight decay, added to the gradient as in PyTorch's Adam (default 1e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// StepLR period in epochs (0: a constant rate; default 10).
    #[arg(long)]
    pub lr_step: Option<usize>,
    /// StepLR factor (default 0.7).
    #[arg(long)]
    pub lr_gamma: Option<f64>,
    /// Early-stopping patience in validations (0: off; default 3).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Weight of (1 - SSIM) in the loss; L1 gets the rest.
    #[arg(long)]
    pub ssim_weight: Option<f64>,
    /// Lowest training noise level, in 0..255 units.
    #[arg(long)]
    pub sigma_min: Option<f64>,
    /// Highest training noise level, in 0..255 units.
    #[arg(long)]
    pub sigma_max: Option<f64>,
    /// Turn off random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Seed of the weights' initialisation, the batches, the noise and dropout (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also validate every N steps (0 or none: only at the end of each epoch).
    #[arg(long)]
    pub val_every: Option<u64>,
    /// Validate on at most N images.
    #[arg(long)]
    pub val_limit: Option<usize>,
    /// Log a line every N steps (default 10).
    #[arg(long)]
    pub log_every: Option<u64>,
    /// The training steps' arithmetic: f32, or bf16 (mixed precision: f32 weights, optimizer
    /// and loss; the network computes in bf16, for GPU tensor cores). Validation stays f32.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Start a new run from the weights of this checkpoint (a run's best.safetensors or a model
    /// in models/) with a fresh optimizer: fine-tuning. The network is the checkpoint's.
    #[arg(long, conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    #[command(flatten)]
    pub corruption: NoiseArgs,
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_file(p)?,
        None if a.resume => match denoise_trainer::read_state(&a.out)? {
            Some(state) => state.config,
            None => TrainConfig::default(),
        },
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f.clone() { c.$f = v; })* };
    }
    set!(
        arch,
        epochs,
        batch,
        lr,
        weight_decay,
        lr_step,
        lr_gamma,
        patience,
        ssim_weight,
        sigma_min,
        sigma_max,
        seed,
        log_every
    );
    macro_rules! set_opt {
        ($($f:ident),*) => { $(if a.$f.is_some() { c.$f = a.$f.clone(); })* };
    }
    set_opt!(
        width,
        mults,
        blocks,
        dropout,
        loss,
        lognormal_fraction,
        ema_halflife,
        max_steps,
        val_every,
        val_limit
    );
    if a.attention {
        c.attention = Some(true);
    }
    if a.time_budget.is_some() {
        c.time_budget_secs = a.time_budget;
    }
    if a.no_flip {
        c.flip = false;
    }
    if let Some(d) = a.dtype {
        c.dtype = d.dtype().as_str().to_string();
    }
    if let Some(p) = &a.init_from {
        if !p.is_file() {
            bail!(
                "--init-from {}: expected a checkpoint file (.safetensors), found {}",
                p.display(),
                if p.exists() { "a folder" } else { "nothing" }
            );
        }
        c.init_from = Some(p.display().to_string());
    }
    a.corruption.apply(&mut c.noise, &mut c.jpeg_quality_range);
    c.validate()?;
    Ok(c)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let config = train_config(&a)?;
    if a.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if a.out.exists() && !a.out.is_dir() {
        bail!(
            "--out {}: expected a folder for the run (checkpoints, metrics, plot), found a file",
            a.out.display()
        );
    }
    let device = pick_device(a.device)?;
    let mut opts = TrainOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        progress: is_tty(),
        ..Default::default()
    };
    // Refused before the data is read, not after.
    denoise_trainer::check_out_dir(&a.out, &opts)?;
    let multiple = config.model_config().map_or(1, |c| c.size_multiple());
    let data = load_data(&a.data, multiple, is_tty())?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        // Ctrl-C, SIGTERM (a `kill`, a scheduler's stop) and SIGHUP alike: finish the step, save
        // and stop; a second one exits at once (every file is written atomically, and the
        // temporary file a write may leave is removed by the next run).
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing the current step and saving (Ctrl-C again to quit now)"
            );
        });
    }
    opts.stop = stop;
    let s = denoise_trainer::train(&config, &data, &a.out, &device, &opts)?;
    let st = &s.state;
    let best = st.early.best.map_or("-".into(), |b| format!("{b:.4}"));
    println!(
        "stopped ({}): {} ({}) in {:.0} s; best validation loss {best}; checkpoints in {}",
        s.stopped_by,
        count_of(st.global_step as usize, "step"),
        count_of(st.images_seen as usize, "image"),
        st.elapsed_secs,
        s.out_dir.display()
    );
    Ok(())
}
