//! Training and evaluation of `denoise` models.
//!
//! `denoise-trainer` runs the original project's recipe (Adam with L2 weight decay, StepLR,
//! early stopping on the validation loss, L1 + SSIM) and EDM's (log-normal noise levels, the
//! sigma-weighted MSE, an EMA of the weights) on the batches `denoise-data` makes,
//! writes `best.safetensors` and `last.safetensors` atomically (the latter with everything a
//! resume needs), per-validation metrics (`metrics.jsonl`), per-step losses (`steps.csv`) and
//! a loss plot (`loss.png`); and evaluates models (PSNR and SSIM at several noise levels, a PNG
//! grid). It never parses command lines and never prints except through `tracing` and its
//! progress bar.
//!
//! ```
//! use candle_core::Device;
//! use denoise_data::{ImageSet, Splits};
//! use denoise_trainer::{evaluate, train, EvalOptions, TrainConfig, TrainOptions};
//!
//! // Tiny synthetic splits of 16x16 images (normally `denoise_data::load(path, ..)?`).
//! let set = |n: usize| ImageSet {
//!     pixels: (0..n * 3 * 16 * 16).map(|i| (i * 7 % 256) as u8).collect(),
//!     n, c: 3, h: 16, w: 16,
//!     ..Default::default()
//! };
//! let data = Splits {
//!     train: set(8), val: set(4), test: set(4),
//!     description: "synthetic".into(), train_crops: None,
//! };
//!
//! // The original network and recipe, narrowed to width 8, for two steps of 4 images.
//! let config = TrainConfig {
//!     arch: "seed-unet".into(),
//!     width: Some(8),
//!     batch: 4,
//!     max_steps: Some(2),
//!     ..Default::default()
//! };
//! let out = tempfile::tempdir()?;
//! let summary = train(&config, &data, out.path(), &Device::Cpu, &TrainOptions::default())?;
//! assert_eq!(summary.state.global_step, 2);
//! assert!(out.path().join("best.safetensors").exists()); // and last.safetensors, metrics, plot
//!
//! // PSNR / SSIM of the noisy and the denoised test images at sigma 25 (of 255).
//! let model = denoise_model::Model::load(&out.path().join("best.safetensors"), &Device::Cpu)?;
//! let opts = EvalOptions { batch: 4, ..Default::default() };
//! let results = evaluate(&model, &[data.test], &[25.0], &opts, &Device::Cpu)?;
//! assert_eq!(results[0].images, 4);
//! println!("{}", denoise_trainer::eval::table(&results));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod adam;
mod adam_ops;
pub mod bench;
pub mod config;
pub mod ema;
pub mod eval;
pub mod network;
mod objective;
mod pending;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod selftest;
pub mod train;

pub use adam::{Adam, AdamConfig};
pub use config::{LossKind, TrainConfig};
pub use eval::{evaluate, EvalOptions, EvalResult};
pub use run_dir::{read_state, TrainState};
pub use train::{check_out_dir, train, TrainOptions, TrainSummary};

/// What can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting of the recipe is out of range; the message names it.
    #[error("configuration: {0}")]
    Config(String),
    /// The images are smaller than SSIM's window.
    #[error("the images are {w}x{h} pixels; SSIM needs images of at least {window}x{window}")]
    TooSmall {
        /// The images' width.
        w: usize,
        /// The images' height.
        h: usize,
        /// The side of SSIM's window.
        window: usize,
    },
    /// A run cannot be resumed from its checkpoint.
    #[error("{path}: {reason}")]
    Resume {
        /// The checkpoint.
        path: String,
        /// Why not.
        reason: String,
    },
    /// The output folder holds an earlier run, and neither resuming nor starting over was asked.
    #[error("{path} holds a run ({what}): pass --resume to continue it, or --overwrite to start over and replace it")]
    RunExists {
        /// The output folder.
        path: String,
        /// What it holds.
        what: String,
    },
    /// Another process is training into the same output folder.
    #[error(
        "{path}: another training run is using this folder (its lock file `.train.lock` is held)"
    )]
    Busy {
        /// The output folder.
        path: String,
    },
    /// The training loss became NaN or infinite (the checkpoints on disk are kept as they were).
    #[error("training diverged at step {step}: the loss is {loss}")]
    Diverged {
        /// The step at which a loss that was not finite was read: on the CPU that step's own; on
        /// a GPU, where losses are read every `log_every` steps, one at or before it.
        step: u64,
        /// That loss.
        loss: f64,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the loss plot failed.
    #[error("{0}")]
    Plot(String),
    /// An error from the model crate (building, running, saving or loading a network).
    #[error(transparent)]
    Model(#[from] denoise_model::ModelError),
    /// An error from the loss crate.
    #[error(transparent)]
    Loss(#[from] denoise_loss::LossError),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A result whose error is a [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}
