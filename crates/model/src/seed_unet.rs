//! `seed-unet`: the original project's U-Net, layer for layer.
//!
//! `DC(a, b)` is conv3x3(a -> b) + ReLU, conv3x3(b -> b) + ReLU. Encoder DC(3,64), DC(64,128),
//! DC(128,256) with 2x2 max pooling between them, a DC(256,512) bottleneck with dropout 0.2,
//! decoders of a 2x2 stride-2 transposed conv, concatenation with the encoder's skip and a DC
//! (dropout 0.1 after the two deeper ones), a 1x1 conv to 3 channels, and the network
//! predicts the noise: `output = input - out`.

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::layers::{dropout, Conv2d, ConvTranspose2x2};
use crate::params::{ParamStore, Rng64};
use crate::Result;
use denoise_ops::pool::max_pool2x2;

/// The shape of a `seed-unet`; the defaults are the original network (7.8 M parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUnetConfig {
    /// Image channels in and out.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Width of the first level; the next levels double it.
    #[serde(default = "default_base")]
    pub base: usize,
    /// Dropout probability after the bottleneck, while training. Default 0.2.
    #[serde(default = "default_mid_dropout")]
    pub mid_dropout: f64,
    /// Dropout probability after the two deeper decoders, while training. Default 0.1.
    #[serde(default = "default_dec_dropout")]
    pub dec_dropout: f64,
}

fn default_channels() -> usize {
    3
}
fn default_base() -> usize {
    64
}
fn default_mid_dropout() -> f64 {
    0.2
}
fn default_dec_dropout() -> f64 {
    0.1
}

impl Default for SeedUnetConfig {
    fn default() -> Self {
        Self {
            channels: default_channels(),
            base: default_base(),
            mid_dropout: default_mid_dropout(),
            dec_dropout: default_dec_dropout(),
        }
    }
}

#[derive(Debug, Clone)]
struct DoubleConv {
    c1: Conv2d,
    c2: Conv2d,
}

impl DoubleConv {
    fn new(store: &mut ParamStore, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            c1: Conv2d::new(store, &format!("{name}.conv1"), c_in, c_out, 3, true)?,
            c2: Conv2d::new(store, &format!("{name}.conv2"), c_out, c_out, 3, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c2.forward(&self.c1.forward(x)?)
    }
}

/// The network. Build with [`SeedUnet::new`], run with [`SeedUnet::forward`].
#[derive(Debug, Clone)]
pub struct SeedUnet {
    /// The configuration it was built from.
    pub config: SeedUnetConfig,
    enc1: DoubleConv,
    enc2: DoubleConv,
    enc3: DoubleConv,
    mid: DoubleConv,
    up3: ConvTranspose2x2,
    dec3: DoubleConv,
    up2: ConvTranspose2x2,
    dec2: DoubleConv,
    up1: ConvTranspose2x2,
    dec1: DoubleConv,
    out: Conv2d,
    vars: Vec<(String, Var)>,
    /// The dtype the network computes in (the weights' unless set apart for mixed precision).
    compute: DType,
}

impl SeedUnet {
    /// A freshly initialised network, its values drawn from `seed`.
    pub fn new(config: SeedUnetConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::with_dtype(config, device, DType::F32, seed)
    }

    /// As [`SeedUnet::new`], with parameters of another float dtype.
    pub fn with_dtype(
        config: SeedUnetConfig,
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
    pub fn param_count(config: &SeedUnetConfig) -> Result<u128> {
        ParamStore::count_of(|s| Self::build(config.clone(), s, DType::F32))
    }

    fn build(config: SeedUnetConfig, s: &mut ParamStore, dtype: DType) -> Result<Self> {
        let s = &mut *s;
        let (c, b) = (config.channels, config.base);
        let enc1 = DoubleConv::new(s, "enc1", c, b)?;
        let enc2 = DoubleConv::new(s, "enc2", b, 2 * b)?;
        let enc3 = DoubleConv::new(s, "enc3", 2 * b, 4 * b)?;
        let mid = DoubleConv::new(s, "mid", 4 * b, 8 * b)?;
        let up3 = ConvTranspose2x2::new(s, "up3", 8 * b, 4 * b)?;
        let dec3 = DoubleConv::new(s, "dec3", 8 * b, 4 * b)?;
        let up2 = ConvTranspose2x2::new(s, "up2", 4 * b, 2 * b)?;
        let dec2 = DoubleConv::new(s, "dec2", 4 * b, 2 * b)?;
        let up1 = ConvTranspose2x2::new(s, "up1", 2 * b, b)?;
        let dec1 = DoubleConv::new(s, "dec1", 2 * b, b)?;
        let out = Conv2d::new(s, "out", b, c, 1, false)?;
        let vars = s.take_vars();
        Ok(Self {
            config,
            enc1,
            enc2,
            enc3,
            mid,
            up3,
            dec3,
            up2,
            dec2,
            up1,
            dec1,
            out,
            vars,
            compute: dtype,
        })
    }

    /// The parameters, named as in PyTorch's `state_dict`.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The dtype the network computes in (the activations inside [`SeedUnet::forward`]).
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

    /// Denoises `x` `(N, C, H, W)`, H and W multiples of 8. Dropout is active when `rng` is given.
    /// The network runs in its compute dtype ([`SeedUnet::dtype`]) and predicts the noise,
    /// which is subtracted from `x` in `x`'s own dtype.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut Rng64>) -> Result<Tensor> {
        let input = x;
        let x = &x.to_dtype(self.dtype())?;
        let e1 = self.enc1.forward(x)?;
        let e2 = self.enc2.forward(&max_pool2x2(&e1)?)?;
        let e3 = self.enc3.forward(&max_pool2x2(&e2)?)?;
        let m = self.mid.forward(&max_pool2x2(&e3)?)?;
        let m = dropout(&m, self.config.mid_dropout, rng.as_deref_mut())?;
        let d3 = Tensor::cat(&[&self.up3.forward(&m)?, &e3], 1)?;
        let d3 = dropout(
            &self.dec3.forward(&d3)?,
            self.config.dec_dropout,
            rng.as_deref_mut(),
        )?;
        let d2 = Tensor::cat(&[&self.up2.forward(&d3)?, &e2], 1)?;
        let d2 = dropout(&self.dec2.forward(&d2)?, self.config.dec_dropout, rng)?;
        let d1 = Tensor::cat(&[&self.up1.forward(&d2)?, &e1], 1)?;
        let d1 = self.dec1.forward(&d1)?;
        let noise = self.out.forward(&d1)?.to_dtype(input.dtype())?;
        Ok((input - noise)?)
    }
}
