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

pub mod adam;
mod adam_ops;
pub mod bench;
pub mod config;
pub mod ema;
pub mod eval;
pub mod plot;
pub mod schedule;
pub mod selftest;
pub mod train;

pub use adam::{Adam, AdamConfig};
pub use config::{LossKind, TrainConfig};
pub use eval::{evaluate, EvalResult};
pub use train::{read_state, train, TrainOptions, TrainState, TrainSummary};

/// What can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {reason}")]
    Resume { path: String, reason: String },
    #[error("training diverged at step {step}: the loss is {loss}")]
    Diverged { step: u64, loss: f64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Plot(String),
    #[error(transparent)]
    Model(#[from] denoise_model::ModelError),
    #[error(transparent)]
    Loss(#[from] denoise_loss::LossError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}
