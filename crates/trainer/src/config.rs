//! Training configuration: every value a command-line flag and a config-file key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The recipe. Defaults are the original project's: Adam (lr 1e-3, weight decay 1e-4),
/// batch 64, up to 30 epochs, StepLR (10, 0.7), early stopping after 3 epochs. Some defaults
/// depend on the architecture: `cond-unet` (the default) trains with EDM's log-normal noise
/// levels, EDM's weighted MSE and an EMA of the weights; `seed-unet` as the original, with
/// uniform noise levels, L1 + SSIM and no EMA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Network architecture (`cond-unet` or `seed-unet`).
    pub arch: String,
    /// Width of the network's first level (64 for both by default).
    pub width: Option<usize>,
    /// `cond-unet` only: the width of each level as a multiple of `width`.
    pub mults: Option<Vec<usize>>,
    /// `cond-unet` only: residual blocks per level.
    pub blocks: Option<usize>,
    /// `cond-unet` only: self-attention at the lowest resolution.
    pub attention: Option<bool>,
    /// `cond-unet` only: dropout probability in the residual blocks (default 0.1; seed-unet
    /// keeps the original's 0.2 in the middle and 0.1 in the decoder).
    pub dropout: Option<f64>,
    /// `l1-ssim` (the original's L1 + SSIM on the denoised image) or `edm` (EDM's
    /// sigma-weighted MSE); default `edm` for cond-unet, `l1-ssim` for seed-unet.
    pub loss: Option<String>,
    /// Share of noise levels drawn from EDM's log-normal `ln(s) ~ N(p_mean, p_std^2)` (`s` on
    /// the `[-1, 1]` scale, twice the pixel-scale sigma) rather than uniformly from
    /// `[sigma_min, sigma_max]`; default 1 for cond-unet, 0 for seed-unet.
    pub lognormal_fraction: Option<f64>,
    /// Mean of `ln(s)` in the log-normal (-1.2).
    pub p_mean: f64,
    /// Standard deviation of `ln(s)` in the log-normal (1.2).
    pub p_std: f64,
    /// Half-life, in images, of the exponential moving average of the weights that is saved
    /// and used for validation, evaluation and sampling (0: none); default 500,000 for
    /// cond-unet, none for seed-unet. While fewer than `half_life / ema_rampup` images have
    /// been seen it is `ema_rampup` times the images seen.
    pub ema_halflife: Option<f64>,
    /// See `ema_halflife` (0.05: the half-life is at most 5 % of the images seen so far).
    pub ema_rampup: f64,
    /// Passes over the training images at most (30).
    pub epochs: usize,
    /// Images per step (64).
    pub batch: usize,
    /// Adam's learning rate before StepLR's decay (1e-3).
    pub lr: f64,
    /// Adam's L2 weight decay (1e-4).
    pub weight_decay: f64,
    /// Adam's first-moment decay (0.9).
    pub beta1: f64,
    /// Adam's second-moment decay (0.999).
    pub beta2: f64,
    /// Adam's epsilon (1e-8).
    pub eps: f64,
    /// StepLR period in epochs and factor.
    pub lr_step: usize,
    /// See `lr_step`.
    pub lr_gamma: f64,
    /// Early-stopping patience in validations (0: never stop early).
    pub patience: usize,
    /// Weight of `1 - SSIM` in the loss; L1 gets the rest.
    pub ssim_weight: f64,
    /// Noise levels drawn uniformly from `[sigma_min, sigma_max]`, in 0..255 pixel units.
    pub sigma_min: f64,
    /// See `sigma_min`.
    pub sigma_max: f64,
    /// Random horizontal flips of the training images.
    pub flip: bool,
    /// Seeds the weights, the batches, the noise and dropout: a run is reproducible.
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
    /// The arithmetic of the training steps: `f32`, or `bf16` (mixed precision: the weights,
    /// the optimizer and the loss stay f32, the network computes in bf16). Validation, and so
    /// the choice of the best checkpoint, is always f32.
    pub dtype: String,
    /// Start a new run from the weights of this checkpoint (a training run's or an exported
    /// model) instead of random ones: its network, with a fresh optimizer and schedule. Settings
    /// that would change the network's shape must be left out or match it.
    pub init_from: Option<String>,
    /// The training noise: `gaussian` (the default) or `poisson-gaussian` (signal-dependent,
    /// see [`denoise_data::noise::NoiseKind`]); `sigma` is then its level at mid grey.
    pub noise: String,
    /// JPEG-compress each noisy training image at a quality drawn from `[low, high]` (after
    /// clipping to 8 bits); none: no compression.
    pub jpeg_quality_range: Option<[u8; 2]>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: "cond-unet".into(),
            width: None,
            mults: None,
            blocks: None,
            attention: None,
            dropout: None,
            loss: None,
            lognormal_fraction: None,
            p_mean: -1.2,
            p_std: 1.2,
            ema_halflife: None,
            ema_rampup: 0.05,
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
            dtype: "f32".into(),
            init_from: None,
            noise: "gaussian".into(),
            jpeg_quality_range: None,
        }
    }
}

/// What the network is trained to minimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// The original's `(1 - w) L1 + w (1 - SSIM)` on the denoised image.
    L1Ssim,
    /// EDM's `lambda(s) |D - y|^2` on the `[-1, 1]` scale, `lambda = (s^2 + sd^2) / (s sd)^2`.
    Edm,
}

impl TrainConfig {
    /// Reads a TOML (`.toml`) or JSON file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let json = path.extension().is_some_and(|e| e == "json");
        Self::from_text(&text, json, &path.display().to_string())
    }

    /// Parses the text of a JSON (`json`) or TOML configuration file named `origin` (for the
    /// errors) and validates it.
    pub fn from_text(text: &str, json: bool, origin: &str) -> Result<Self> {
        let parsed = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        let cfg: Self = parsed.map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as a TOML file that [`TrainConfig::from_file`] reads back; keys left
    /// to the architecture's defaults are absent.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig serialises to TOML")
    }

    /// How the training images are made noisy.
    pub fn corruption(&self) -> Option<denoise_data::noise::Corruption> {
        Some(denoise_data::noise::Corruption {
            kind: denoise_data::noise::NoiseKind::parse(&self.noise)?,
            jpeg: self.jpeg_quality_range.map(|[lo, hi]| (lo, hi)),
        })
    }

    /// The network this configuration trains.
    pub fn model_config(&self) -> Option<denoise_model::ModelConfig> {
        let mut c = denoise_model::ModelConfig::from_arch(&self.arch)?;
        self.apply_model_fields(&mut c);
        Some(c)
    }

    /// Sets in `c` the network fields this configuration gives (width, and cond-unet's
    /// levels, blocks, attention and dropout), leaving the others as they are.
    pub fn apply_model_fields(&self, c: &mut denoise_model::ModelConfig) {
        use denoise_model::ModelConfig;
        if let Some(w) = self.width {
            c.set_width(w);
        }
        if let ModelConfig::CondUnet(u) = c {
            if let Some(m) = &self.mults {
                u.mults = m.clone();
            }
            if let Some(b) = self.blocks {
                u.blocks = b;
            }
            if let Some(a) = self.attention {
                u.attention = a;
            }
            if let Some(d) = self.dropout {
                u.dropout = d;
            }
        }
    }

    fn conditioned(&self) -> bool {
        self.arch != "seed-unet"
    }

    /// The loss in use, with the architecture's default resolved.
    pub fn loss_kind(&self) -> LossKind {
        match self.loss.as_deref() {
            Some("edm") => LossKind::Edm,
            Some(_) => LossKind::L1Ssim,
            None if self.conditioned() => LossKind::Edm,
            None => LossKind::L1Ssim,
        }
    }

    /// The share of noise levels drawn from the log-normal, with the architecture's default.
    pub fn lognormal_share(&self) -> f64 {
        self.lognormal_fraction
            .unwrap_or(if self.conditioned() { 1.0 } else { 0.0 })
    }

    /// The EMA half-life in images, if an average is kept.
    pub fn ema_half_life(&self) -> Option<f64> {
        let h = self
            .ema_halflife
            .unwrap_or(if self.conditioned() { 500_000.0 } else { 0.0 });
        (h > 0.0).then_some(h)
    }

    /// The dtype of the training steps' arithmetic (see [`TrainConfig::dtype`]).
    pub fn compute_dtype(&self) -> Option<candle_core::DType> {
        match self.dtype.as_str() {
            "f32" => Some(candle_core::DType::F32),
            "bf16" => Some(candle_core::DType::BF16),
            _ => None,
        }
    }

    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.compute_dtype().is_none() {
            return bad(format!(
                "dtype `{}`: training runs in f32 or bf16 (f16 would need loss scaling)",
                self.dtype
            ));
        }
        if denoise_model::ModelConfig::from_arch(&self.arch).is_none() {
            return bad(format!(
                "unknown architecture `{}` (known: {})",
                self.arch,
                denoise_model::ModelConfig::ARCHES.join(", ")
            ));
        }
        match self.corruption() {
            None => {
                return bad(format!(
                    "noise `{}`: expected gaussian or poisson-gaussian",
                    self.noise
                ))
            }
            Some(c) => c.check().map_err(TrainError::Config)?,
        }
        if self.width == Some(0) {
            return bad("width must be at least 1".into());
        }
        if !self.conditioned()
            && (self.mults.is_some()
                || self.blocks.is_some()
                || self.attention.is_some()
                || self.dropout.is_some())
        {
            return bad("mults, blocks, attention and dropout apply to cond-unet only".into());
        }
        if let Some(denoise_model::ModelConfig::CondUnet(u)) = self.model_config() {
            u.check().map_err(TrainError::Config)?;
        }
        if let Some(l) = &self.loss {
            if l != "edm" && l != "l1-ssim" {
                return bad(format!("unknown loss `{l}` (expected edm or l1-ssim)"));
            }
            if l == "edm" && !self.conditioned() {
                return bad("the edm loss needs a noise-conditioned network (cond-unet)".into());
            }
        }
        if self
            .lognormal_fraction
            .is_some_and(|f| !(0.0..=1.0).contains(&f))
        {
            return bad("lognormal_fraction must be in [0, 1]".into());
        }
        if !(self.p_std >= 0.0 && self.p_mean.is_finite()) {
            return bad("p_std must be >= 0 and p_mean finite".into());
        }
        if self.ema_halflife.is_some_and(|h| h.is_nan() || h < 0.0)
            || self.ema_rampup.is_nan()
            || self.ema_rampup <= 0.0
        {
            return bad("ema_halflife must be >= 0 and ema_rampup > 0".into());
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
        // Validation draws its noise from this range: without any, every validation loss is 0
        // and the best checkpoint is the first.
        let (lo, hi) = (self.sigma_min, self.sigma_max);
        if !(lo >= 0.0 && hi >= lo && hi > 0.0 && hi.is_finite()) {
            return bad(format!(
                "noise range must satisfy 0 <= sigma_min <= sigma_max, sigma_max > 0, got [{}, {}]",
                self.sigma_min, self.sigma_max
            ));
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.lr_gamma > 0.0 && self.lr_gamma.is_finite()) {
            return bad(format!(
                "lr_gamma must be a positive number, got {}",
                self.lr_gamma
            ));
        }
        if let Some(t) = self.time_budget_secs {
            if !(t > 0.0 && t.is_finite()) {
                return bad(format!(
                    "time budget must be a positive number of seconds, got {t}"
                ));
            }
        }
        if self.val_limit == Some(0) {
            return bad(
                "val_limit must be at least 1 (leave it out to validate on every held-out image)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_by_name() {
        TrainConfig::default().validate().unwrap();
        type Set = fn(&mut TrainConfig);
        let cases: Vec<(&str, Set)> = vec![
            ("batch", |c| c.batch = 0),
            ("lr ", |c| c.lr = -1.0),
            ("lr_gamma", |c| c.lr_gamma = 0.0),
            ("lr_gamma", |c| c.lr_gamma = f64::NAN),
            ("time budget", |c| c.time_budget_secs = Some(-1.0)),
            ("time budget", |c| c.time_budget_secs = Some(f64::NAN)),
            ("val_limit", |c| c.val_limit = Some(0)),
            ("epochs", |c| c.epochs = 0),
            ("dropout", |c| c.dropout = Some(1.5)),
            ("noise range", |c| c.sigma_max = 0.0),
            ("noise range", |c| c.sigma_min = 60.0),
            ("noise range", |c| c.sigma_min = -1.0),
            ("noise range", |c| c.sigma_max = f64::INFINITY),
        ];
        for (key, set) in cases {
            let mut c = TrainConfig::default();
            set(&mut c);
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
