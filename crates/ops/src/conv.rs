//! Stride-1 "same" 2-D convolutions with a bias and an optional fused ReLU, forward and
//! backward, on every device ([`conv2d`]).
//!
//! candle 0.11's CPU `conv_transpose2d` is a slow direct loop (on CUDA a naive kernel), and its
//! conv2d backward runs the input gradient through it. Here the CPU convolution is one custom
//! op running our own kernels forward and backward, with bias and ReLU fused (Winograd for 3x3
//! layers from 8x8, [`crate::winograd`]; im2col + gemm otherwise, [`crate::cpu_conv`]); on CUDA
//! cuDNN for all three passes (feature `cudnn`, [`crate::cudnn_conv`]) or [`device_conv`],
//! which makes both gradients from forward convolutions. [`reference_conv`] is the same layer
//! from candle's own ops, which all of them are tested against.

use std::any::Any;
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

use crate::cpu_conv::{self, ConvShape, Float};
use crate::winograd;

thread_local! {
    static REFERENCE_CONVS: Cell<bool> = const { Cell::new(false) };
}

/// `relu?(conv2d(x, w) + b)` with stride 1 and `padding` (`k / 2` for a `k x k` kernel `w` of
/// shape `(C_out, C_in, k, k)`; `b` is `(C_out,)`), `x` `(N, C_in, H, W)` to `(N, C_out, H, W)`,
/// with gradients for all three. f32 and f64 on every device; bf16 and f16 too (computed in
/// f32 with one rounding, as a GPU's tensor cores do).
pub fn conv2d(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize, relu: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    if REFERENCE_CONVS.get() {
        return reference_conv(&x, w, b, padding, relu);
    }
    let dtype = x.dtype();
    if x.device().is_cpu() {
        // f32 and f64 run as they are. candle's CPU convolution has no bf16, so half
        // precision is emulated as a GPU's tensor cores compute it: half operands, f32
        // arithmetic, one rounding.
        use crate::operands::widened;
        let op = FusedConv {
            padding,
            relu,
            kernels: Mutex::new(None),
        };
        let y = widened(&x)?.apply_op3(&widened(w)?, &widened(b)?, op)?;
        return y.to_dtype(dtype);
    }
    if cfg!(feature = "cudnn")
        && x.device().is_cuda()
        && use_cudnn()
        && crate::operands::own_kernels_via_f32(&x)
    {
        // Half precision too: cuDNN computes it in f32 on the tensor cores.
        return cudnn_conv(&x, w, b, padding, relu);
    }
    // Half precision without cuDNN takes this path too: candle's convolution accumulates in
    // f32 (im2col and cuBLAS).
    device_conv(&x, w, b, padding, relu)
}

/// Whether CUDA convolutions go through [`crate::cudnn_conv`] (builds with the `cudnn` feature,
/// unless `DENOISE_CONV=candle` asks for [`device_conv`], to compare the two).
fn use_cudnn() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| std::env::var("DENOISE_CONV").map_or(true, |v| v != "candle"))
}

/// Runs `f` with every [`conv2d`] on this thread built from candle's own ops and backward
/// ([`reference_conv`]): the reference that a whole network's step with our kernels is checked
/// against. The flag is restored afterwards, on a panic too.
pub fn with_reference_convs<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REFERENCE_CONVS.set(self.0);
        }
    }
    let _reset = Reset(REFERENCE_CONVS.replace(true));
    f()
}

/// The convolution on devices other than the CPU (CUDA). candle's `conv2d` (cuDNN with the
/// `cudnn` feature) computes the output, but its backward always sends the input gradient
/// through `conv_transpose2d`, a naive kernel on CUDA. Here the output is computed without a
/// graph and handed to `ConvGrads`, whose backward makes both gradients from forward
/// convolutions: the input's from the output gradient and the flipped, transposed kernel, the
/// kernel's as candle does. The same code runs on the CPU, where it is tested against
/// [`reference_conv`].
pub fn device_conv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let y = x.detach().conv2d(&w.detach(), padding, 1, 1, 1)?;
    let y = if x.track_op() || w.track_op() {
        x.apply_op3(w, &y, ConvGrads { padding })?
    } else {
        y
    };
    crate::bias_act::bias_act(&y, b, relu)
}

/// The convolution through [`crate::cudnn_conv`] (cuDNN on CUDA; on the CPU, where it is tested,
/// the im2col kernels), then bias and ReLU ([`crate::bias_act`]).
pub fn cudnn_conv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    crate::bias_act::bias_act(&crate::cudnn_conv::conv(x, w, padding)?, b, relu)
}

/// `(x, w, y) -> y` where `y = conv2d(x, w)` was computed outside the graph; the backward gives
/// `x` and `w` their gradients by forward convolutions (see [`device_conv`]).
struct ConvGrads {
    padding: usize,
}

impl CustomOp3 for ConvGrads {
    fn name(&self) -> &'static str {
        "conv2d-grads"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let k = w.dim(2)?;
        // A stride-1 convolution's input gradient is the output gradient convolved with the
        // kernel flipped in space and with its in and out channels swapped.
        let flipped = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        let dx = grad.conv2d(&flipped, k - 1 - self.padding, 1, 1, 1)?;
        let dw = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, self.padding, 1, 1, 1)?
            .transpose(0, 1)?;
        Ok((Some(dx), Some(dw), None))
    }
}

/// The same convolution from candle's own ops (and candle's own backward): the reference that
/// the fused CPU op and [`device_conv`] are tested against.
pub fn reference_conv(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    crate::bias_act::bias_relu(&x.conv2d(w, padding, 1, 1, 1)?, b, relu)
}

/// `relu?(conv2d(x, w, same padding) + b)` as one op with a backward made of forward convolutions.
struct FusedConv {
    padding: usize,
    relu: bool,
    /// The Winograd-transformed kernels (a `Vec<f32>` or `Vec<f64>`) of the forward pass, taken
    /// by the backward pass instead of transforming the same weights again.
    kernels: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A CPU tensor's values without copying them where it is contiguous.
fn values<'a, T: candle_core::WithDType>(
    storage: &'a Storage,
    layout: &Layout,
    t: &Tensor,
) -> candle_core::Result<Cow<'a, [T]>> {
    if let (Storage::Cpu(cpu), Some((a, b))) = (storage, layout.contiguous_offsets()) {
        return Ok(Cow::Borrowed(&cpu.as_slice::<T>()?[a..b]));
    }
    Ok(Cow::Owned(to_vec::<T>(t)?))
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    crate::operands::contiguous(v, l, "conv")
}

fn to_vec<T: candle_core::WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

impl FusedConv {
    fn shape(&self, x: &Layout, w: &Layout) -> candle_core::Result<ConvShape> {
        let (n, c_in, h, wd) = x.shape().dims4()?;
        let (c_out, c_in_k, k, k2) = w.shape().dims4()?;
        if c_in != c_in_k || k != k2 || k % 2 == 0 || self.padding != k / 2 {
            candle_core::bail!(
                "fused conv: input {:?} and kernel {:?} do not fit",
                x.shape(),
                w.shape()
            );
        }
        Ok(ConvShape {
            n,
            c_in,
            c_out,
            h,
            w: wd,
            k,
        })
    }

    fn forward<T: Float>(&self, s: &ConvShape, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        if !winograd::applies(s) {
            return cpu_conv::forward_im2col(s, x, w, b, self.relu);
        }
        let u = winograd::transform_kernels(s, w);
        let y = winograd::forward_with(s, x, &u, b, self.relu);
        if let Ok(mut k) = self.kernels.lock() {
            *k = Some(Box::new(u));
        }
        y
    }

    fn backward<T: Float + candle_core::WithDType>(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let s = self.shape(x.layout(), w.layout())?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (rs, rl) = res.storage_and_layout();
        let xv = values::<T>(&xs, xl, x)?;
        let wv = values::<T>(&ws, wl, w)?;
        let dy = values::<T>(&gs, gl, grad)?;
        let out = values::<T>(&rs, rl, res)?;
        // PyTorch's rule: the gradient passes where the output is positive.
        let relu_out = self.relu.then_some(&out[..]);
        let (dx, dw, db) = if winograd::applies(&s) {
            let cached = self.kernels.lock().ok().and_then(|mut k| k.take());
            let u = match cached.map(|k| k.downcast::<Vec<T>>()) {
                Some(Ok(u)) => *u,
                _ => winograd::transform_kernels(&s, &wv),
            };
            winograd::backward_with(&s, &xv, &u, &dy, relu_out)
        } else {
            cpu_conv::backward_im2col(&s, &xv, &wv, &dy, relu_out)
        };
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dw, w.shape(), dev)?,
            Tensor::from_vec(db, s.c_out, dev)?,
        ))
    }
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
        let s = self.shape(l1, l2)?;
        let out_shape = Shape::from((s.n, s.c_out, s.h, s.w));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.forward(&s, slice(x, l1)?, slice(w, l2)?, slice(b, l3)?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.forward(&s, slice(x, l1)?, slice(w, l2)?, slice(b, l3)?))
            }
            _ => {
                candle_core::bail!("fused conv: input, weight and bias must all be f32 or all f64")
            }
        };
        Ok((out, out_shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => self.backward::<f32>(x, w, res, grad)?,
            DType::F64 => self.backward::<f64>(x, w, res, grad)?,
            dt => candle_core::bail!("fused conv: unsupported dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
