//! Training configuration: every value a command-line flag and a config-file key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The recipe. Defaults are the original project's: Adam (lr 1e-3, weight decay 1e-4),
/// batch 64, up to 30 epochs, StepLR (10, 0.7), early stopping after 3 epochs, L1 + SSIM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Network architecture (`seed-unet`).
    pub arch: String,
    /// Width of the network's first level (64 for the original `seed-unet`).
    pub width: Option<usize>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// StepLR period in epochs and factor.
    pub lr_step: usize,
    pub lr_gamma: f64,
    /// Early-stopping patience in validations (0: never stop early).
    pub patience: usize,
    /// Weight of `1 - SSIM` in the loss; L1 gets the rest.
    pub ssim_weight: f64,
    /// Noise levels drawn uniformly from `[sigma_min, sigma_max]`, in 0..255 pixel units.
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub flip: bool,
    pub seed: u64,
    /// Stop after this many optimizer steps in total (validation and checkpoints still happen).
    pub max_steps: Option<u64>,
    /// Stop after this many seconds of training in this run.
    pub time_budget_secs: Option<f64>,
    /// Also validate every this many steps (besides each epoch's end).
    pub val_every: Option<u64>,
    /// Validate on at most this many images of the validation set.
    pub val_limit: Option<usize>,
    /// Log a progress line every this many steps.
    pub log_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: "seed-unet".into(),
            width: None,
            epochs: 30,
            batch: 64,
            lr: 1e-3,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lr_step: 10,
            lr_gamma: 0.7,
            patience: 3,
            ssim_weight: 0.84,
            sigma_min: 0.0,
            sigma_max: 55.0,
            flip: true,
            seed: 0,
            max_steps: None,
            time_budget_secs: None,
            val_every: None,
            val_limit: None,
            log_every: 10,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML (`.toml`) or JSON file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let cfg: Self =
            parsed.map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The network this configuration trains.
    pub fn model_config(&self) -> Option<denoise_model::ModelConfig> {
        let mut c = denoise_model::ModelConfig::from_arch(&self.arch)?;
        if let Some(w) = self.width {
            match &mut c {
                denoise_model::ModelConfig::SeedUnet(s) => s.base = w,
            }
        }
        Some(c)
    }

    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if denoise_model::ModelConfig::from_arch(&self.arch).is_none() {
            return bad(format!(
                "unknown architecture `{}` (known: {})",
                self.arch,
                denoise_model::ModelConfig::ARCHES.join(", ")
            ));
        }
        if self.width == Some(0) {
            return bad("width must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must be in [0, 1)".into());
        }
        if self.weight_decay < 0.0 || self.eps <= 0.0 {
            return bad("weight_decay must be >= 0 and eps > 0".into());
        }
        if !(0.0..=1.0).contains(&self.ssim_weight) {
            return bad(format!(
                "ssim_weight must be in [0, 1], got {}",
                self.ssim_weight
            ));
        }
        if self.sigma_min < 0.0 || self.sigma_max < self.sigma_min {
            return bad(format!(
                "noise range must satisfy 0 <= sigma_min <= sigma_max, got [{}, {}]",
                self.sigma_min, self.sigma_max
            ));
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        Ok(())
    }
}
