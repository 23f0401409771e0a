//! The layers the networks are built from, each a plain struct with a `forward`, on the ops of
//! `denoise-ops` ([`Conv2d`] is its fused convolution, [`ConvTranspose2x2`] a single matrix
//! product with its fused bias), and the switches of a forward pass: [`inference`] (no graph)
//! and [`dropout`] (seeded).

use candle_core::{Device, Tensor, Var};
use rand::Rng;

use crate::params::{ParamStore, Rng64};
use crate::Result;

/// A 2-D convolution with stride 1 and "same" padding (`(k - 1) / 2`), optional fused ReLU.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `(C_out, C_in, k, k)`, as PyTorch.
    pub weight: Var,
    /// `(C_out,)`.
    pub bias: Var,
    /// The kernel's side `k`.
    pub kernel: usize,
    /// Whether a ReLU follows, fused into the convolution.
    pub relu: bool,
}

impl Conv2d {
    /// Creates the layer with PyTorch's default initialisation and registers its parameters.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        relu: bool,
    ) -> Result<Self> {
        let fan_in = c_in * kernel * kernel;
        let weight = store.uniform(
            &format!("{name}.weight"),
            &[c_out, c_in, kernel, kernel],
            fan_in,
        )?;
        let bias = store.uniform(&format!("{name}.bias"), &[c_out], fan_in)?;
        Ok(Self {
            weight,
            bias,
            kernel,
            relu,
        })
    }

    /// `(N, C_in, H, W)` to `(N, C_out, H, W)` ([`denoise_ops::conv::conv2d`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (&cast(&self.weight, x)?, &cast(&self.bias, x)?);
        Ok(denoise_ops::conv::conv2d(
            x,
            w,
            b,
            self.kernel / 2,
            self.relu,
        )?)
    }
}

thread_local! {
    static INFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a forward pass on this thread) without recording a graph for gradients, as
/// PyTorch's `no_grad`: the parameters enter the ops detached ([`param`]), so no result holds
/// on to the inputs it was made from, and each activation is freed as soon as the next layer
/// has used it. Without it, the whole forward pass stays in memory until its output is
/// dropped: `denoise generate` on one 512x512 image (the default cond-unet) peaked at 3.3 GB
/// and took 8.8 s without it, 1.4 GB and 3.3 s with it.
pub fn inference<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            INFERENCE.set(self.0);
        }
    }
    let _reset = Reset(INFERENCE.replace(true));
    f()
}

/// A parameter's tensor as the forward pass uses it: the variable itself, or, inside
/// [`inference`], a detached handle on the same storage (no copy).
pub fn param(p: &Var) -> Tensor {
    if INFERENCE.get() {
        p.as_tensor().detach()
    } else {
        p.as_tensor().clone()
    }
}

/// A parameter ([`param`]) in `x`'s dtype: itself when they agree, else rounded (mixed
/// precision: f32 weights used in bf16; the rounding is part of the graph, so the gradient
/// reaches the weight).
pub fn cast(p: &Var, x: &Tensor) -> Result<Tensor> {
    Ok(param(p).to_dtype(x.dtype())?)
}

/// A transposed convolution with a 2x2 kernel and stride 2: every input pixel becomes a 2x2
/// block, so it is a single matrix product `(N*H*W, C_in) x (C_in, C_out*4)`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    /// PyTorch's layout: `(C_in, C_out, 2, 2)`.
    pub weight: Var,
    /// `(C_out,)`.
    pub bias: Var,
}

impl ConvTranspose2x2 {
    /// Creates the layer with PyTorch's default initialisation and registers its parameters.
    pub fn new(store: &mut ParamStore, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        // PyTorch computes fan_in from dim 1 of the weight: C_out * 2 * 2.
        let fan_in = c_out * 4;
        let weight = store.uniform(&format!("{name}.weight"), &[c_in, c_out, 2, 2], fan_in)?;
        let bias = store.uniform(&format!("{name}.bias"), &[c_out], fan_in)?;
        Ok(Self { weight, bias })
    }

    /// `(N, C_in, H, W)` to `(N, C_out, 2H, 2W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c_in, h, w) = x.dims4()?;
        let c_out = self.weight.dim(1)?;
        let (weight, bias) = (cast(&self.weight, x)?, cast(&self.bias, x)?);
        let rows = x.permute((0, 2, 3, 1))?.reshape((n * h * w, c_in))?;
        let y = rows.matmul(&weight.reshape((c_in, c_out * 4))?)?;
        let y = y
            .reshape((n, h, w, c_out, 2, 2))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((n, c_out, 2 * h, 2 * w))?;
        // One op forward and backward (see `denoise_ops::bias_act`): from candle's ops, the bias
        // gradient is a reduction that runs on one thread (5 % of a seed-unet step).
        Ok(denoise_ops::bias_act::bias_act(&y, &bias, false)?)
    }
}

/// Inverted dropout; identity when `rng` is `None` (evaluation) or `p == 0`. On the CPU the mask
/// is drawn from the caller's seeded generator. On other devices it is drawn there (candle's
/// uniform generator, cuRAND on CUDA, seeded by `Device::set_seed`): drawing millions of numbers
/// on the CPU and copying them over each step would leave a GPU waiting.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng64>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if !x.device().is_cpu() {
        return device_dropout(x, p);
    }
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// [`dropout`] with the mask drawn on `x`'s device by candle's generator.
fn device_dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    // Uniform in [0, 1) (cuRAND: (0, 1]); kept where u >= p, with probability 1 - p.
    let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
    let keep = u.ge(p)?.to_dtype(x.dtype())?;
    Ok((x * (keep * (1.0 / (1.0 - p)))?)?)
}

/// The layers plug into candle-nn's module system (`Sequential`, `Module::forward`, ...).
impl candle_nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Conv2d::forward(self, xs).map_err(candle_core::Error::wrap)
    }
}

impl candle_nn::Module for ConvTranspose2x2 {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        ConvTranspose2x2::forward(self, xs).map_err(candle_core::Error::wrap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// The device path of dropout, run on the CPU: every value either dropped or scaled by
    /// 1 / (1 - p), about a fraction p dropped, the same on f64.
    #[test]
    fn device_dropout_drops_a_fraction_p_and_rescales() {
        for (dtype, p) in [(DType::F32, 0.2), (DType::F64, 0.5)] {
            let x = Tensor::ones((4, 8, 32, 32), dtype, &Device::Cpu).unwrap();
            let y = device_dropout(&x, p).unwrap();
            assert_eq!(y.dtype(), dtype);
            let v = y.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            let v = v.to_vec1::<f64>().unwrap();
            let scale = 1.0 / (1.0 - p);
            assert!(v.iter().all(|&a| a == 0.0 || (a - scale).abs() < 1e-6));
            let dropped = v.iter().filter(|&&a| a == 0.0).count() as f64 / v.len() as f64;
            assert!((dropped - p).abs() < 0.02, "dropped {dropped}, p {p}");
        }
    }
}
