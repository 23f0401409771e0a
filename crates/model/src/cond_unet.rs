//! `cond-unet`: a U-Net conditioned on the noise level, with EDM preconditioning.
//!
//! The raw network `F(x; c_noise)` is a U-Net of residual blocks (GroupNorm, SiLU, 3x3 conv,
//! the noise embedding added per channel, GroupNorm, SiLU, dropout, 3x3 conv, a 1x1 skip where
//! the width changes, the sum scaled by `sqrt(1/2)`), 2x2 average pooling down, nearest-neighbour
//! upsampling up, the encoder's outputs concatenated into the decoder, and optional single-head
//! self-attention at the lowest resolution. The noise level enters as `c_noise = ln(sigma) / 4`,
//! through sinusoidal features and a two-layer MLP.
//!
//! [`CondUnet::denoise`] wraps it in Karras et al. (2022)'s preconditioning, with data in
//! `[-1, 1]` and `sigma_data = 0.5`: `D(x; s) = c_skip x + c_out F(c_in x; ln(s) / 4)`,
//! `c_skip = sd^2 / (s^2 + sd^2)`, `c_out = s sd / sqrt(s^2 + sd^2)`, `c_in = 1 / sqrt(s^2 + sd^2)`.
//! Images and noise levels at its interface are on the `[0, 1]` pixel scale, as everywhere else
//! in `denoise`; the `[-1, 1]` scale is internal (a pixel-scale sigma is half the EDM sigma).

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::layers::{cast, dropout, Conv2d};
use crate::norm::GroupNorm;
use crate::params::{ParamStore, Rng64};
use crate::Result;
use denoise_ops::resample::{avg_pool2x2, up2x};

/// The shape of a `cond-unet`; stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondUnetConfig {
    /// Image channels in and out.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Width of the first level.
    #[serde(default = "default_base")]
    pub base: usize,
    /// Width of each level as a multiple of `base`; one 2x downsampling between levels.
    #[serde(default = "default_mults")]
    pub mults: Vec<usize>,
    /// Residual blocks per level, in the encoder and in the decoder.
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    /// Self-attention at the lowest resolution.
    #[serde(default)]
    pub attention: bool,
    /// Dropout probability in each residual block, while training. Default 0.1.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Width of the noise-level embedding.
    #[serde(default = "default_emb")]
    pub emb_dim: usize,
    /// EDM's `sigma_data`, on the `[-1, 1]` data scale.
    #[serde(default = "default_sigma_data")]
    pub sigma_data: f64,
}

fn default_channels() -> usize {
    3
}
fn default_base() -> usize {
    64
}
fn default_mults() -> Vec<usize> {
    vec![1, 2, 2]
}
fn default_blocks() -> usize {
    1
}
fn default_dropout() -> f64 {
    0.1
}
fn default_emb() -> usize {
    256
}
fn default_sigma_data() -> f64 {
    0.5
}

impl Default for CondUnetConfig {
    fn default() -> Self {
        Self {
            channels: default_channels(),
            base: default_base(),
            mults: default_mults(),
            blocks: default_blocks(),
            attention: false,
            dropout: default_dropout(),
            emb_dim: default_emb(),
            sigma_data: default_sigma_data(),
        }
    }
}

impl CondUnetConfig {
    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        1 << self.mults.len().saturating_sub(1)
    }

    /// What is wrong with this shape, if anything.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.channels == 0 || self.base == 0 || self.blocks == 0 || self.emb_dim < 2 {
            return Err("channels, base, blocks must be at least 1 and emb_dim at least 2".into());
        }
        if self.blocks > 64 || self.emb_dim > 1 << 16 {
            return Err(format!(
                "blocks must be at most 64 and emb_dim at most 65536, got {} and {}",
                self.blocks, self.emb_dim
            ));
        }
        if self.mults.is_empty()
            || self.mults.len() > 6
            || self.mults.contains(&0)
            || self.mults.iter().any(|&m| m > 1024)
        {
            return Err(format!(
                "mults must be 1 to 6 numbers from 1 to 1024, got {:?}",
                self.mults
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.sigma_data > 0.0 && self.sigma_data.is_finite()) {
            return Err(format!(
                "sigma_data must be a positive number, got {}",
                self.sigma_data
            ));
        }
        Ok(())
    }
}

/// A dense layer `y = x W^T + b`, PyTorch's default initialisation.
#[derive(Debug, Clone)]
struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    fn new(s: &mut ParamStore, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            weight: s.uniform(&format!("{name}.weight"), &[c_out, c_in], c_in)?,
            bias: s.uniform(&format!("{name}.bias"), &[c_out], c_in)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (cast(&self.weight, x)?, cast(&self.bias, x)?);
        Ok(x.matmul(&w.t()?)?.broadcast_add(&b)?)
    }
}

#[derive(Debug, Clone)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
    dropout: f64,
}

impl ResBlock {
    fn new(
        s: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        cfg: &CondUnetConfig,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(s, &format!("{name}.norm1"), c_in)?,
            conv1: Conv2d::new(s, &format!("{name}.conv1"), c_in, c_out, 3, false)?,
            emb: Linear::new(s, &format!("{name}.emb"), cfg.emb_dim, c_out)?,
            norm2: GroupNorm::new(s, &format!("{name}.norm2"), c_out)?,
            conv2: Conv2d::new(s, &format!("{name}.conv2"), c_out, c_out, 3, false)?,
            skip: if c_in != c_out {
                Some(Conv2d::new(
                    s,
                    &format!("{name}.skip"),
                    c_in,
                    c_out,
                    1,
                    false,
                )?)
            } else {
                None
            },
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, emb: &Tensor, rng: Option<&mut Rng64>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let (n, c) = (h.dim(0)?, h.dim(1)?);
        let h = h.broadcast_add(&self.emb.forward(emb)?.reshape((n, c, 1, 1))?)?;
        let h = dropout(&self.norm2.forward(&h, true)?, self.dropout, rng)?;
        let h = self.conv2.forward(&h)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok(((h + skip)? * std::f64::consts::FRAC_1_SQRT_2)?)
    }
}

/// Single-head self-attention over the pixels, with a residual connection.
#[derive(Debug, Clone)]
struct Attention {
    norm: GroupNorm,
    qkv: Conv2d,
    proj: Conv2d,
}

impl Attention {
    fn new(s: &mut ParamStore, name: &str, c: usize) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(s, &format!("{name}.norm"), c)?,
            qkv: Conv2d::new(s, &format!("{name}.qkv"), c, 3 * c, 1, false)?,
            proj: Conv2d::new(s, &format!("{name}.proj"), c, c, 1, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x, false)?)?
            .reshape((n, 3, c, h * w))?;
        let q = qkv.narrow(1, 0, 1)?.squeeze(1)?; // (n, c, p)
        let k = qkv.narrow(1, 1, 1)?.squeeze(1)?;
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?;
        // (n, p, p)
        let scores = (q.t()?.contiguous()?.matmul(&k.contiguous()?)? / (c as f64).sqrt())?;
        // In at least f32 (as autocast does): a bf16 sum of 64 or more exponentials keeps about
        // 3 significant digits.
        let attn = candle_nn::ops::softmax(&denoise_ops::operands::widened(&scores)?, D::Minus1)?
            .to_dtype(scores.dtype())?;
        let out = v.contiguous()?.matmul(&attn.t()?.contiguous()?)?; // (n, c, p)
        let out = self.proj.forward(&out.reshape((n, c, h, w))?)?;
        Ok(((x + out)? * std::f64::consts::FRAC_1_SQRT_2)?)
    }
}

/// The network. Build with [`CondUnet::new`]; [`CondUnet::denoise`] is `D(x; sigma)`.
#[derive(Debug, Clone)]
pub struct CondUnet {
    /// The configuration it was built from.
    pub config: CondUnetConfig,
    freqs: Vec<f32>,
    map1: Linear,
    map2: Linear,
    stem: Conv2d,
    enc: Vec<Vec<ResBlock>>,
    mid1: ResBlock,
    mid_attn: Option<Attention>,
    mid2: ResBlock,
    dec: Vec<Vec<ResBlock>>,
    out_norm: GroupNorm,
    out: Conv2d,
    vars: Vec<(String, Var)>,
    /// The dtype the network computes in (the weights' unless set apart for mixed precision).
    compute: DType,
}

impl CondUnet {
    /// A network with f32 weights, initialised from `seed`.
    pub fn new(config: CondUnetConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::with_dtype(config, device, DType::F32, seed)
    }

    /// A network with weights of `dtype`, initialised from `seed`.
    pub fn with_dtype(
        config: CondUnetConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        Self::build(
            config,
            &mut ParamStore::with_dtype(device, dtype, seed),
            dtype,
        )
    }

    /// How many parameters the network of `config` has, counted without building it.
    pub fn param_count(config: &CondUnetConfig) -> Result<u128> {
        ParamStore::count_of(|s| Self::build(config.clone(), s, DType::F32))
    }

    fn build(config: CondUnetConfig, s: &mut ParamStore, dtype: DType) -> Result<Self> {
        if let Err(reason) = config.check() {
            return Err(crate::ModelError::BadConfig(reason));
        }
        let cfg = &config;
        let b = cfg.base;
        // Sinusoidal features of c_noise at angular frequencies 1 .. 100, geometrically spaced.
        let half = cfg.emb_dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (100f64.powf(i as f64 / (half.max(2) - 1) as f64)) as f32)
            .collect();
        let map1 = Linear::new(s, "map.0", 2 * half, cfg.emb_dim)?;
        let map2 = Linear::new(s, "map.1", cfg.emb_dim, cfg.emb_dim)?;
        let stem = Conv2d::new(s, "stem", cfg.channels, b, 3, false)?;
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let mut c = b;
        for (lvl, &m) in cfg.mults.iter().enumerate() {
            let mut blocks = Vec::new();
            for i in 0..cfg.blocks {
                blocks.push(ResBlock::new(s, &format!("enc.{lvl}.{i}"), c, b * m, cfg)?);
                c = b * m;
                skips.push(c);
            }
            enc.push(blocks);
        }
        let mid1 = ResBlock::new(s, "mid.0", c, c, cfg)?;
        let mid_attn = if cfg.attention {
            Some(Attention::new(s, "mid.attn", c)?)
        } else {
            None
        };
        let mid2 = ResBlock::new(s, "mid.1", c, c, cfg)?;
        let mut dec = Vec::new();
        for (lvl, &m) in cfg.mults.iter().enumerate().rev() {
            let mut blocks = Vec::new();
            for i in 0..cfg.blocks {
                let skip = skips.pop().expect("one skip per encoder block");
                blocks.push(ResBlock::new(
                    s,
                    &format!("dec.{lvl}.{i}"),
                    c + skip,
                    b * m,
                    cfg,
                )?);
                c = b * m;
            }
            dec.push(blocks);
        }
        let out_norm = GroupNorm::new(s, "out_norm", c)?;
        let out = Conv2d::new(s, "out", c, cfg.channels, 3, false)?;
        // The last layer starts at zero: F = 0, so D starts as c_skip x, the best constant-free guess.
        out.weight.set(&out.weight.zeros_like()?)?;
        out.bias.set(&out.bias.zeros_like()?)?;
        let vars = s.take_vars();
        Ok(Self {
            config,
            freqs,
            map1,
            map2,
            stem,
            enc,
            mid1,
            mid_attn,
            mid2,
            dec,
            out_norm,
            out,
            vars,
            compute: dtype,
        })
    }

    /// Parameters in a fixed order, by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The dtype the network computes in (the activations inside [`CondUnet::raw`]).
    pub fn dtype(&self) -> DType {
        self.compute
    }

    /// The same network (sharing its weights) computing in `dtype`: the weights are rounded to
    /// it as they are used, so gradients still reach them in their own dtype (mixed precision).
    pub fn with_compute_dtype(&self, dtype: DType) -> Self {
        Self {
            compute: dtype,
            ..self.clone()
        }
    }

    /// The noise embedding of `c_noise` `(N,)`: `(N, emb_dim)`. The sinusoidal features are
    /// computed in `c_noise`'s dtype (phases up to 100 c_noise need more than bf16's 8 bits) and
    /// then rounded to the network's.
    fn embed(&self, c_noise: &Tensor) -> Result<Tensor> {
        let n = c_noise.dim(0)?;
        let f = Tensor::from_slice(&self.freqs, (1, self.freqs.len()), &Device::Cpu)?
            .to_device(c_noise.device())?
            .to_dtype(c_noise.dtype())?;
        let arg = c_noise.reshape((n, 1))?.broadcast_mul(&f)?;
        let feats = Tensor::cat(&[arg.cos()?, arg.sin()?], 1)?.to_dtype(self.dtype())?;
        let e = candle_nn::ops::silu(&self.map1.forward(&feats)?)?;
        Ok(candle_nn::ops::silu(&self.map2.forward(&e)?)?)
    }

    /// The raw network `F(x; c_noise)`; dropout is on when `rng` is given. It runs in its
    /// compute dtype ([`CondUnet::dtype`]): `x` is rounded to it, and so is the result.
    pub fn raw(&self, x: &Tensor, c_noise: &Tensor, mut rng: Option<&mut Rng64>) -> Result<Tensor> {
        let emb = self.embed(c_noise)?;
        let mut h = self.stem.forward(&x.to_dtype(self.dtype())?)?;
        let mut skips = Vec::new();
        let levels = self.enc.len();
        for (lvl, blocks) in self.enc.iter().enumerate() {
            for block in blocks {
                h = block.forward(&h, &emb, rng.as_deref_mut())?;
                skips.push(h.clone());
            }
            if lvl + 1 < levels {
                h = avg_pool2x2(&h)?;
            }
        }
        h = self.mid1.forward(&h, &emb, rng.as_deref_mut())?;
        if let Some(attn) = &self.mid_attn {
            h = attn.forward(&h)?;
        }
        h = self.mid2.forward(&h, &emb, rng.as_deref_mut())?;
        for (i, blocks) in self.dec.iter().enumerate() {
            for block in blocks {
                let skip = skips.pop().expect("one skip per decoder block");
                h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb, rng.as_deref_mut())?;
            }
            if i + 1 < levels {
                h = up2x(&h)?;
            }
        }
        self.out.forward(&self.out_norm.forward(&h, true)?)
    }

    /// `D(x; sigma)` on the pixel scale: `noisy` `(N, C, H, W)` around `[0, 1]`, `sigma` `(N,)`
    /// the noise standard deviation of each image on the same scale. Returns the denoised
    /// images (not clipped).
    pub fn denoise(
        &self,
        noisy: &Tensor,
        sigma: &Tensor,
        rng: Option<&mut Rng64>,
    ) -> Result<Tensor> {
        let n = noisy.dim(0)?;
        let sd = self.config.sigma_data;
        // EDM scale: x in [-1, 1], s = 2 sigma; floored at EDM's sigma_min so that ln stays finite.
        let s = (sigma.to_dtype(noisy.dtype())? * 2.0)?.clamp(2e-3, f64::INFINITY)?;
        let s2 = (s.sqr()? + sd * sd)?;
        let c_in = s2.sqrt()?.recip()?;
        let c_skip = (s2.recip()? * (sd * sd))?;
        let c_out = ((&s * sd)? / s2.sqrt()?)?;
        let c_noise = (s.log()? / 4.0)?;
        let col = |t: &Tensor| t.reshape((n, 1, 1, 1));
        let x = ((noisy * 2.0)? - 1.0)?;
        // The preconditioning stays in the input's dtype; only F runs in the weights'.
        let f = self
            .raw(&x.broadcast_mul(&col(&c_in)?)?, &c_noise, rng)?
            .to_dtype(x.dtype())?;
        let d = (x.broadcast_mul(&col(&c_skip)?)? + f.broadcast_mul(&col(&c_out)?)?)?;
        Ok(((d + 1.0)? * 0.5)?)
    }

    /// Floating-point operations of one forward pass on an `h x w` image (convolutions and
    /// attention products; multiply and add counted apart).
    pub fn forward_flops(&self, h: usize, w: usize) -> f64 {
        let cfg = &self.config;
        let conv = |ci: usize, co: usize, k: usize, px: usize| 2.0 * (ci * co * k * k * px) as f64;
        let block = |ci: usize, co: usize, px: usize| {
            conv(ci, co, 3, px)
                + conv(co, co, 3, px)
                + if ci != co { conv(ci, co, 1, px) } else { 0.0 }
        };
        let b = cfg.base;
        let mut px = h * w;
        let mut total = conv(cfg.channels, b, 3, px);
        let mut c = b;
        let mut skips = Vec::new();
        let levels = cfg.mults.len();
        for (lvl, &m) in cfg.mults.iter().enumerate() {
            for _ in 0..cfg.blocks {
                total += block(c, b * m, px);
                c = b * m;
                skips.push(c);
            }
            if lvl + 1 < levels {
                px /= 4;
            }
        }
        total += 2.0 * block(c, c, px);
        if cfg.attention {
            total += conv(c, 3 * c, 1, px) + conv(c, c, 1, px) + 4.0 * (c * px * px) as f64;
        }
        for (i, &m) in cfg.mults.iter().enumerate().rev() {
            for _ in 0..cfg.blocks {
                total += block(c + skips.pop().unwrap_or(0), b * m, px);
                c = b * m;
            }
            if i > 0 {
                px *= 4;
            }
        }
        total + conv(c, cfg.channels, 3, px)
    }
}
