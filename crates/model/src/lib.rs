//! Denoising networks on candle, and the self-describing checkpoints that hold them.
//!
//! `denoise-model` builds the networks (`seed-unet`, the original project's blind U-Net, and
//! `cond-unet`, a noise-level-conditioned U-Net with EDM preconditioning), runs them forward with
//! seeded dropout, denoises images of any size in overlapping tiles, samples new images with
//! EDM's Heun or Euler sampler, and saves and loads the networks as safetensors files whose
//! metadata carries the architecture, so that a checkpoint loads with no architecture flags. Its
//! layers have correct gradients where candle 0.11's do not (see [`layers`]). It knows nothing
//! of datasets, losses or optimisers; the trainer stores its own state in the same checkpoint
//! files through [`checkpoint`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use denoise_model::{sampler, Model};
//!
//! let dev = Device::Cpu;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/cond-unet-cifar10.safetensors");
//! // A checkpoint says which network it holds: no architecture to pass.
//! let model = Model::load(std::path::Path::new(path), &dev)?;
//!
//! // A flat gray 40x24 picture with Gaussian noise of sigma 25 (of 255). Any size: it is
//! // padded to the network's multiple and cropped back ([`tiles`] for large images).
//! let clean = Tensor::full(0.5f32, (1, 3, 24, 40), &dev)?;
//! let sigma = 25.0 / 255.0;
//! let noisy = (&clean + (sampler::gaussian(&[1, 3, 24, 40], 7, &dev)? * sigma)?)?;
//! let denoised = model.denoise_any_size(&noisy, &[sigma])?; // clipped to [0, 1]
//! let mse = |x: &Tensor| (x - &clean)?.sqr()?.mean_all()?.to_scalar::<f32>();
//! assert!(mse(&denoised)? < mse(&noisy)? / 10.0);
//!
//! // Four new 32x32 images from pure noise with EDM's Heun sampler (here 4 steps, not 18).
//! let cfg = sampler::SamplerConfig { steps: 4, ..Default::default() };
//! let x = sampler::sample(
//!     &sampler::ModelDenoiser::new(&model),
//!     &[4, 3, 32, 32],
//!     &cfg,
//!     0, // seed
//!     &dev,
//!     &mut |_step, _steps| {},
//! )?;
//! let pixels = sampler::to_pixels(&x)?; // in [0, 1]
//! assert_eq!(pixels.dims(), &[4, 3, 32, 32]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod cond_unet;
pub mod ensemble;
pub mod layers;
pub mod norm;
pub mod params;
pub mod sampler;
pub mod seed_unet;
pub mod tiles;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use checkpoint::Checkpoint;
pub use cond_unet::{CondUnet, CondUnetConfig};
pub use params::{rng, Rng64};
pub use seed_unet::{SeedUnet, SeedUnetConfig};

/// What can go wrong when building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The network was run directly on an image whose sides it cannot halve often enough
    /// ([`Model::denoise_any_size`] pads instead).
    #[error("image size {h}x{w} is not a multiple of {multiple} (the network downsamples {levels} times)")]
    BadSize {
        /// The image's height.
        h: usize,
        /// The image's width.
        w: usize,
        /// What both sides must be a multiple of.
        multiple: usize,
        /// How many times the network halves the image.
        levels: usize,
    },
    /// The input is not `(N, C, H, W)` with the network's number of channels.
    #[error("expected {expected} input channels, got a tensor of shape {shape:?}")]
    BadChannels {
        /// The network's channels.
        expected: usize,
        /// The shape it was given.
        shape: Vec<usize>,
    },
    /// A conditioned network was run without noise levels.
    #[error("{arch} needs the noise level of each image (it is conditioned on it)")]
    NeedsSigma {
        /// The network.
        arch: &'static str,
    },
    /// A configuration (of a network or of the sampler) is out of range; the message says how.
    #[error("bad model configuration: {0}")]
    BadConfig(String),
    /// A checkpoint file is not one `denoise` can load.
    #[error("checkpoint {path}: {reason}")]
    BadCheckpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done: "reading" or "writing".
        action: &'static str,
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed (a full disk, a write limit, no permission); any earlier file of
    /// that name is left as it was.
    #[error("writing {path} ({} MB) failed: {source}; the file that was there, if any, is kept", .bytes.div_ceil(1 << 20))]
    Write {
        /// The file.
        path: String,
        /// The bytes it needed.
        bytes: usize,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A result whose error is a [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

/// Which network, and its shape. Stored as JSON in every checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// The original project's blind U-Net.
    SeedUnet(SeedUnetConfig),
    /// The noise-level-conditioned U-Net with EDM preconditioning.
    CondUnet(CondUnetConfig),
}

/// The most parameters a network may have: 2^31, 8 GiB of f32 weights (and 32 GiB to train,
/// with the gradients and Adam's two moments). A larger width is refused before anything is
/// allocated ([`ModelConfig::check_size`]) rather than aborting the process.
pub const MAX_PARAMS: u128 = 1 << 31;

impl ModelConfig {
    /// The default configuration of a named architecture (`seed-unet`).
    pub fn from_arch(arch: &str) -> Option<Self> {
        match arch {
            "seed-unet" => Some(Self::SeedUnet(SeedUnetConfig::default())),
            "cond-unet" => Some(Self::CondUnet(CondUnetConfig::default())),
            _ => None,
        }
    }

    /// The architectures this build knows.
    pub const ARCHES: &'static [&'static str] = &["cond-unet", "seed-unet"];

    /// How many parameters the network has, counted from the configuration without allocating
    /// them (errors for a configuration out of range).
    pub fn param_count(&self) -> Result<u128> {
        match self {
            Self::SeedUnet(c) => SeedUnet::param_count(c),
            Self::CondUnet(c) => CondUnet::param_count(c),
        }
    }

    /// The network's parameter count ([`ModelConfig::param_count`]), or an error where it is
    /// more than [`MAX_PARAMS`].
    pub fn check_size(&self) -> Result<u128> {
        // Channel counts are products of these: kept far from overflowing.
        let (channels, width) = match self {
            Self::SeedUnet(c) => (c.channels, c.base),
            Self::CondUnet(c) => (c.channels, c.base),
        };
        if channels > 1 << 16 || width > 1 << 20 {
            return Err(ModelError::BadConfig(format!(
                "image channels must be at most 65536 and the width at most 1048576, got {channels} and {width}"
            )));
        }
        let n = self.param_count()?;
        if n > MAX_PARAMS {
            return Err(ModelError::BadConfig(format!(
                "{} would have {n} parameters ({:.1} GiB of f32 weights); the largest network \
                 this tool builds has {MAX_PARAMS} (8 GiB): choose a smaller width{}",
                self.arch(),
                n as f64 * 4.0 / f64::from(1u32 << 30),
                match self {
                    Self::SeedUnet(_) => "",
                    Self::CondUnet(_) => ", mults or emb_dim",
                }
            )));
        }
        Ok(n)
    }

    /// The architecture's name: `seed-unet` or `cond-unet`.
    pub fn arch(&self) -> &'static str {
        match self {
            Self::SeedUnet(_) => "seed-unet",
            Self::CondUnet(_) => "cond-unet",
        }
    }

    /// Sets the width of the first level (`base`).
    pub fn set_width(&mut self, width: usize) {
        match self {
            Self::SeedUnet(c) => c.base = width,
            Self::CondUnet(c) => c.base = width,
        }
    }

    /// Image sides must be multiples of this (seed-unet pools three times).
    pub fn size_multiple(&self) -> usize {
        match self {
            Self::SeedUnet(_) => 8,
            Self::CondUnet(c) => c.size_multiple(),
        }
    }
}

/// A network of any architecture.
#[derive(Debug, Clone)]
pub enum Model {
    /// The original project's blind U-Net.
    SeedUnet(SeedUnet),
    /// The noise-level-conditioned U-Net with EDM preconditioning.
    CondUnet(CondUnet),
}

impl Model {
    /// A freshly initialised network.
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::with_dtype(config, device, DType::F32, seed)
    }

    /// A freshly initialised network whose weights (and activations) have `dtype`: f32 for
    /// training, f64 for the gradient checks, bf16 or f16 for half-precision inference. Inputs
    /// and outputs keep the caller's dtype whatever the network's (see [`Model::forward`]).
    pub fn with_dtype(
        config: &ModelConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        config.check_size()?;
        Ok(match config {
            ModelConfig::SeedUnet(c) => {
                Self::SeedUnet(SeedUnet::with_dtype(c.clone(), device, dtype, seed)?)
            }
            ModelConfig::CondUnet(c) => {
                Self::CondUnet(CondUnet::with_dtype(c.clone(), device, dtype, seed)?)
            }
        })
    }

    /// The same network with its weights rounded (or widened) to `dtype`, computing in it; a
    /// copy, except where nothing changes (it then shares the weights, as a clone does).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if self.dtype() == dtype && self.vars().iter().all(|(_, v)| v.dtype() == dtype) {
            return Ok(self.clone());
        }
        let model = Self::with_dtype(&self.config(), self.device(), dtype, 0)?;
        for ((_, to), (_, from)) in model.vars().iter().zip(self.vars()) {
            to.set(&from.as_tensor().to_dtype(dtype)?)?;
        }
        Ok(model)
    }

    /// The same network, sharing its weights, computing in `dtype` while the weights keep
    /// theirs: mixed-precision training (f32 weights, the optimizer's, and bf16 arithmetic).
    /// Each weight is rounded to `dtype` where it is used, and its gradient comes back in its
    /// own dtype.
    pub fn with_compute_dtype(&self, dtype: DType) -> Self {
        match self {
            Self::SeedUnet(m) => Self::SeedUnet(m.with_compute_dtype(dtype)),
            Self::CondUnet(m) => Self::CondUnet(m.with_compute_dtype(dtype)),
        }
    }

    /// The dtype the network computes in: its weights' ([`Model::to_dtype`]) unless set apart
    /// ([`Model::with_compute_dtype`]).
    pub fn dtype(&self) -> DType {
        match self {
            Self::SeedUnet(m) => m.dtype(),
            Self::CondUnet(m) => m.dtype(),
        }
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::SeedUnet(m) => ModelConfig::SeedUnet(m.config.clone()),
            Self::CondUnet(m) => ModelConfig::CondUnet(m.config.clone()),
        }
    }

    /// Parameters in a fixed order, with PyTorch-style names.
    pub fn vars(&self) -> &[(String, Var)] {
        match self {
            Self::SeedUnet(m) => m.vars(),
            Self::CondUnet(m) => m.vars(),
        }
    }

    /// The number of trained parameters.
    pub fn num_params(&self) -> usize {
        params::count(self.vars())
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.vars()[0].1.device()
    }

    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.config().size_multiple()
    }

    /// Whether the network takes the noise level as an input (and so can also sample).
    pub fn is_conditioned(&self) -> bool {
        matches!(self, Self::CondUnet(_))
    }

    /// Floating-point operations (multiply and add counted apart) of one forward pass on one
    /// `h x w` image, counted from the convolution shapes; a training step costs about three times
    /// this (forward, input gradient, weight gradient).
    pub fn forward_flops(&self, h: usize, w: usize) -> f64 {
        match self {
            Self::CondUnet(m) => m.forward_flops(h, w),
            Self::SeedUnet(m) => {
                let (c, b) = (m.config.channels as f64, m.config.base as f64);
                let conv = |ci: f64, co: f64, px: f64, k: f64| 2.0 * ci * co * k * k * px;
                // A 2x2 stride-2 transposed conv: 4 outputs per input pixel.
                let up = |ci: f64, co: f64, px_in: f64| 2.0 * ci * co * 4.0 * px_in;
                let p1 = (h * w) as f64;
                let (p2, p3, p4) = (p1 / 4.0, p1 / 16.0, p1 / 64.0);
                conv(c, b, p1, 3.0)
                    + conv(b, b, p1, 3.0)
                    + conv(2.0 * b, b, p1, 3.0)
                    + conv(b, b, p1, 3.0)
                    + conv(b, c, p1, 1.0)
                    + up(2.0 * b, b, p2)
                    + conv(b, 2.0 * b, p2, 3.0)
                    + conv(2.0 * b, 2.0 * b, p2, 3.0)
                    + conv(4.0 * b, 2.0 * b, p2, 3.0)
                    + conv(2.0 * b, 2.0 * b, p2, 3.0)
                    + up(4.0 * b, 2.0 * b, p3)
                    + conv(2.0 * b, 4.0 * b, p3, 3.0)
                    + conv(4.0 * b, 4.0 * b, p3, 3.0)
                    + conv(8.0 * b, 4.0 * b, p3, 3.0)
                    + conv(4.0 * b, 4.0 * b, p3, 3.0)
                    + up(8.0 * b, 4.0 * b, p4)
                    + conv(4.0 * b, 8.0 * b, p4, 3.0)
                    + conv(8.0 * b, 8.0 * b, p4, 3.0)
            }
        }
    }

    /// Image channels in and out.
    pub fn channels(&self) -> usize {
        match self {
            Self::SeedUnet(m) => m.config.channels,
            Self::CondUnet(m) => m.config.channels,
        }
    }

    /// Checks that `x` is `(N, C, H, W)` with the right channels and a usable size.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.channels() {
            return Err(ModelError::BadChannels {
                expected: self.channels(),
                shape: dims.to_vec(),
            });
        }
        let m = self.size_multiple();
        if !dims[2].is_multiple_of(m) || !dims[3].is_multiple_of(m) || dims[2] == 0 || dims[3] == 0
        {
            return Err(ModelError::BadSize {
                h: dims[2],
                w: dims[3],
                multiple: m,
                levels: m.trailing_zeros() as usize,
            });
        }
        Ok(())
    }

    /// The denoised images for a noisy batch around `[0, 1]`; `sigma` `(N,)` is each image's
    /// noise level on the same scale (required by `cond-unet`, ignored by the blind
    /// `seed-unet`). Dropout is on when `rng` is given. Not clipped.
    ///
    /// The result has `noisy`'s dtype. A network of another dtype ([`Model::to_dtype`],
    /// [`Model::with_compute_dtype`]) runs in its own: `noisy` is rounded to it on the way in, the network's output widened on the way
    /// out, and the skip connection (seed-unet's subtraction, cond-unet's preconditioning) is
    /// computed in `noisy`'s dtype. Half-precision networks normalise and take softmaxes in f32.
    pub fn forward(
        &self,
        noisy: &Tensor,
        sigma: Option<&Tensor>,
        rng: Option<&mut Rng64>,
    ) -> Result<Tensor> {
        self.check_input(noisy)?;
        match self {
            Self::SeedUnet(m) => m.forward(noisy, rng),
            Self::CondUnet(m) => {
                let sigma = sigma.ok_or(ModelError::NeedsSigma { arch: "cond-unet" })?;
                m.denoise(noisy, sigma, rng)
            }
        }
    }

    /// Denoises images of any size `(N, C, H, W)`: reflect-pads H and W up to a multiple of
    /// [`Model::size_multiple`], runs the network without dropout, crops back and clips to
    /// `[0, 1]`. `sigmas` holds each image's noise level on the pixel scale, or one level for
    /// all. (See [`tiles`] for images too large to run whole.)
    pub fn denoise_any_size(&self, noisy: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (n, _, h, w) = noisy.dims4()?;
        let m = self.size_multiple();
        let (ph, pw) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
        let x = reflect_pad(noisy, ph, pw)?;
        let s: Vec<f32> = match sigmas.len() {
            1 => vec![sigmas[0] as f32; n],
            k if k == n => sigmas.iter().map(|&v| v as f32).collect(),
            k => {
                return Err(ModelError::BadConfig(format!(
                    "{k} noise levels for {n} images"
                )))
            }
        };
        let s = Tensor::from_vec(s, n, &Device::Cpu)?
            .to_device(noisy.device())?
            .to_dtype(noisy.dtype())?;
        let y = layers::inference(|| self.forward(&x, Some(&s), None))?;
        // Detached: the result does not keep the (noisy) input alive.
        Ok(y.narrow(2, 0, h)?
            .narrow(3, 0, w)?
            .clamp(0f32, 1f32)?
            .detach())
    }

    /// The weights as named tensors, for a checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites the weights with those of a checkpoint (names and shapes must match): the
    /// averaged weights (`ema.*`) where the checkpoint has them, else the trained ones (`model.*`).
    pub fn load_weights(&self, ckpt: &Checkpoint) -> Result<()> {
        let prefix = if ckpt.has_tensor(&format!("ema.{}", self.vars()[0].0)) {
            "ema"
        } else {
            "model"
        };
        self.load_weights_from(ckpt, prefix)
    }

    /// Overwrites the weights with the checkpoint's tensors `<prefix>.<name>`.
    pub fn load_weights_from(&self, ckpt: &Checkpoint, prefix: &str) -> Result<()> {
        for (name, var) in self.vars() {
            let t = ckpt.tensor(&format!("{prefix}.{name}"))?;
            if t.dims() != var.dims() {
                return Err(ModelError::BadCheckpoint {
                    path: ckpt.path.clone(),
                    reason: format!(
                        "tensor {prefix}.{name} has shape {:?}, the network expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Builds the network a checkpoint describes and loads its weights.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self> {
        let config = ckpt.model_config()?;
        let model = Self::new(&config, device, 0)?;
        model.load_weights(ckpt)?;
        Ok(model)
    }

    /// Loads a checkpoint file and builds its network.
    pub fn load(path: &std::path::Path, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::load(path)?;
        Self::from_checkpoint(&ckpt, device)
    }

    /// Saves the weights and the configuration (atomically) as a model-only checkpoint.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut ckpt = Checkpoint::new(path);
        ckpt.set_model(self)?;
        ckpt.save()
    }
}

/// Index `i` of a reflected signal of length `n` (`... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...`).
fn reflect_index(i: usize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let k = i % period;
    if k < n {
        k
    } else {
        period - k
    }
}

/// Pads the bottom and right of `(N, C, H, W)` to `(h, w)` by reflection (as NumPy's `reflect`).
pub fn reflect_pad(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, h0, w0) = x.dims4()?;
    let mut x = x.clone();
    if h > h0 {
        let idx: Vec<u32> = (0..h).map(|i| reflect_index(i, h0) as u32).collect();
        x = x.index_select(&Tensor::new(idx, x.device())?, 2)?;
    }
    if w > w0 {
        let idx: Vec<u32> = (0..w).map(|i| reflect_index(i, w0) as u32).collect();
        x = x.index_select(&Tensor::new(idx, x.device())?, 3)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_unet_costs_3_4_gflop_per_trained_cifar_image() {
        let m = Model::new(
            &ModelConfig::from_arch("seed-unet").unwrap(),
            &Device::Cpu,
            0,
        )
        .unwrap();
        let f = m.forward_flops(32, 32);
        assert!((f - 1.148977152e9).abs() < 1.0, "{f}");
    }

    #[test]
    fn param_count_matches_the_built_network() {
        let cond = |base, mults: Vec<usize>, blocks, attention, emb_dim| {
            ModelConfig::CondUnet(CondUnetConfig {
                base,
                mults,
                blocks,
                attention,
                emb_dim,
                ..Default::default()
            })
        };
        let seed = |base| {
            ModelConfig::SeedUnet(SeedUnetConfig {
                base,
                ..Default::default()
            })
        };
        for config in [
            seed(1),
            seed(8),
            seed(16),
            cond(8, vec![1, 2], 2, true, 16),
            cond(4, vec![1, 3, 2], 1, false, 6),
            ModelConfig::from_arch("cond-unet").unwrap(),
        ] {
            let built = Model::new(&config, &Device::Cpu, 0).unwrap().num_params();
            assert_eq!(config.param_count().unwrap(), built as u128, "{config:?}");
        }
    }

    #[test]
    fn networks_too_large_are_refused_before_they_are_built() {
        for arch in ModelConfig::ARCHES {
            let mut config = ModelConfig::from_arch(arch).unwrap();
            config.set_width(100_000);
            assert!(config.param_count().unwrap() > MAX_PARAMS);
            let e = Model::new(&config, &Device::Cpu, 0)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("parameters") && e.contains("smaller width"),
                "{e}"
            );
        }
        // Counting saturates instead of overflowing.
        let mut huge = ModelConfig::from_arch("seed-unet").unwrap();
        huge.set_width(usize::MAX / 2);
        assert!(huge.check_size().is_err());
    }

    #[test]
    fn reflection_indices() {
        let v: Vec<usize> = (0..9).map(|i| reflect_index(i, 4)).collect();
        assert_eq!(v, [0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect_index(5, 1), 0);
    }
}
