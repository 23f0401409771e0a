//! The layers the networks are built from, each a plain struct with a `forward`.
//!
//! Two candle 0.11 shortcomings are worked around here:
//! - `max_pool2d`'s backward passes a quarter of the gradient where a 2x2 window has one
//!   maximum: [`max_pool2x2`] is built from a reshape and two `max` reductions instead, whose
//!   backward routes the whole gradient to the maximum.
//! - the CPU `conv_transpose2d` is a slow direct loop, and candle's conv2d backward runs the input
//!   gradient through it: [`Conv2d`] on the CPU is a custom op whose backward computes the input
//!   gradient as a forward convolution with the flipped, transposed kernel (im2col + gemm), and
//!   fuses bias and ReLU; [`ConvTranspose2x2`] is a single matrix product.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, Var};
use rand::Rng;

use crate::params::{ParamStore, Rng64};
use crate::Result;

/// A 2-D convolution with stride 1 and "same" padding (`(k - 1) / 2`), optional fused ReLU.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Var,
    pub bias: Var,
    pub kernel: usize,
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
        let weight = store.uniform(&format!("{name}.weight"), &[c_out, c_in, kernel, kernel], fan_in)?;
        let bias = store.uniform(&format!("{name}.bias"), &[c_out], fan_in)?;
        Ok(Self { weight, bias, kernel, relu })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
            let op = FusedConv { padding: self.kernel / 2, relu: self.relu };
            return Ok(x.apply_op3(self.weight.as_tensor(), self.bias.as_tensor(), op)?);
        }
        reference_conv(&x, self.weight.as_tensor(), self.bias.as_tensor(), self.kernel / 2, self.relu)
    }
}

/// The same convolution from candle's own ops (and candle's own backward): the reference that
/// the fused CPU op is tested against, and the path on other devices.
pub fn reference_conv(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize, relu: bool) -> Result<Tensor> {
    let c_out = w.dim(0)?;
    let y = x.conv2d(w, padding, 1, 1, 1)?.broadcast_add(&b.reshape((1, c_out, 1, 1))?)?;
    Ok(if relu { y.relu()? } else { y })
}

/// `relu?(conv2d(x, w, same padding) + b)` as one op with a backward made of forward convolutions.
struct FusedConv {
    padding: usize,
    relu: bool,
}

fn wrap(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    // A fresh, untracked tensor over a copy of the storage, with the layout's offset and shape.
    let storage = s.try_clone(l)?;
    let len = match &storage {
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => candle_core::bail!("fused conv: only f32 and f64 are supported"),
    };
    let t = Tensor::from_storage(Storage::Cpu(storage), len, BackpropOp::none(), false);
    if !l.is_contiguous() {
        candle_core::bail!("fused conv: the input must be contiguous");
    }
    t.narrow(0, l.start_offset(), l.shape().elem_count())?.reshape(l.shape())
}

fn bias_relu<T: Copy + PartialOrd + std::ops::Add<Output = T> + Default>(
    y: &[T],
    b: &[T],
    c_out: usize,
    plane: usize,
    relu: bool,
) -> Vec<T> {
    let mut out = Vec::with_capacity(y.len());
    for (i, chunk) in y.chunks(plane).enumerate() {
        let bias = b[i % c_out];
        if relu {
            let zero = T::default();
            out.extend(chunk.iter().map(|&v| {
                let s = v + bias;
                if s > zero {
                    s
                } else {
                    zero
                }
            }));
        } else {
            out.extend(chunk.iter().map(|&v| v + bias));
        }
    }
    out
}

impl CustomOp3 for FusedConv {
    fn name(&self) -> &'static str {
        "fused-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = wrap(s1, l1)?;
        let w = wrap(s2, l2)?;
        let b = wrap(s3, l3)?.contiguous()?;
        let y = x.conv2d(&w, self.padding, 1, 1, 1)?.contiguous()?;
        let (n, c, h, wd) = y.dims4()?;
        let plane = h * wd;
        let (st, _) = y.storage_and_layout();
        let (bs, _) = b.storage_and_layout();
        let out = match (&*st, &*bs) {
            (Storage::Cpu(CpuStorage::F32(y)), Storage::Cpu(CpuStorage::F32(b))) => {
                CpuStorage::F32(bias_relu(y, b, c, plane, self.relu))
            }
            (Storage::Cpu(CpuStorage::F64(y)), Storage::Cpu(CpuStorage::F64(b))) => {
                CpuStorage::F64(bias_relu(y, b, c, plane, self.relu))
            }
            _ => candle_core::bail!("fused conv: input, weight and bias must share a float dtype"),
        };
        Ok((out, Shape::from((n, c, h, wd))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = x.detach();
        let w = w.detach();
        let grad = if self.relu {
            // PyTorch's rule: the gradient passes where the output is positive.
            (grad * res.gt(0.0)?.to_dtype(grad.dtype())?)?
        } else {
            grad.clone()
        };
        let grad_b = grad.sum((0, 2, 3))?;
        // d/dx: a forward convolution with the kernel transposed and flipped in space.
        let k = w.dim(2)?;
        let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, w.device())?;
        let w_t = w.transpose(0, 1)?.contiguous()?.index_select(&rev, 2)?.index_select(&rev, 3)?;
        let grad_x = grad.conv2d(&w_t, self.padding, 1, 1, 1)?;
        // d/dw: correlate the input with the output gradient, batch as the reduced dimension.
        let grad_w = x
            .transpose(0, 1)?
            .contiguous()?
            .conv2d(&grad.transpose(0, 1)?.contiguous()?, self.padding, 1, 1, 1)?
            .transpose(0, 1)?
            .contiguous()?;
        Ok((Some(grad_x), Some(grad_w), Some(grad_b)))
    }
}

/// A transposed convolution with a 2x2 kernel and stride 2: every input pixel becomes a 2x2
/// block, so it is a single matrix product `(N*H*W, C_in) x (C_in, C_out*4)`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    /// PyTorch's layout: `(C_in, C_out, 2, 2)`.
    pub weight: Var,
    pub bias: Var,
}

impl ConvTranspose2x2 {
    pub fn new(store: &mut ParamStore, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        // PyTorch computes fan_in from dim 1 of the weight: C_out * 2 * 2.
        let fan_in = c_out * 4;
        let weight = store.uniform(&format!("{name}.weight"), &[c_in, c_out, 2, 2], fan_in)?;
        let bias = store.uniform(&format!("{name}.bias"), &[c_out], fan_in)?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c_in, h, w) = x.dims4()?;
        let c_out = self.weight.dim(1)?;
        let rows = x.permute((0, 2, 3, 1))?.reshape((n * h * w, c_in))?;
        let y = rows.matmul(&self.weight.reshape((c_in, c_out * 4))?)?;
        let y = y
            .reshape((n, h, w, c_out, 2, 2))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((n, c_out, 2 * h, 2 * w))?;
        Ok(y.broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)?)
    }
}

/// 2x2 max pooling with stride 2 whose gradient goes, whole, to each window's maximum.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)?)
}

/// Inverted dropout with a mask drawn from the caller's seeded generator; identity when
/// `rng` is `None` (evaluation) or `p == 0`.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng64>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
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
