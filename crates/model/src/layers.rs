//! The layers the networks are built from, each a plain struct with a `forward`.
//!
//! Two candle 0.11 shortcomings are worked around here:
//! - `max_pool2d`'s backward passes a quarter of the gradient where a 2x2 window has one
//!   maximum: [`max_pool2x2`] is built from a reshape and two `max` reductions instead, whose
//!   backward routes the whole gradient to the maximum.
//! - the CPU `conv_transpose2d` is a slow direct loop (on CUDA a naive kernel), and candle's
//!   conv2d backward runs the input gradient through it: [`Conv2d`] on the CPU is a custom op
//!   running our own kernels forward and backward, with bias and ReLU fused (Winograd for 3x3
//!   layers from 8x8, [`crate::winograd`]; im2col + gemm otherwise, [`crate::cpu_conv`]); on
//!   other devices [`device_conv`] makes both gradients from forward convolutions;
//!   [`ConvTranspose2x2`] is a single matrix product.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, Var};
use rand::Rng;

use crate::cpu_conv::{self, ConvShape, Float};
use crate::operands::{binary, BinaryKernel};
use crate::winograd;

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

    /// `(N, C_in, H, W)` to `(N, C_out, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (w, b) = (&cast(&self.weight, &x)?, &cast(&self.bias, &x)?);
        if REFERENCE_CONVS.get() {
            return reference_conv(&x, w, b, self.kernel / 2, self.relu);
        }
        let dtype = x.dtype();
        if x.device().is_cpu() {
            // f32 and f64 run as they are. candle's CPU convolution has no bf16, so half
            // precision is emulated as a GPU's tensor cores compute it: half operands, f32
            // arithmetic, one rounding.
            use crate::operands::widened;
            let y = self.cpu_conv(&widened(&x)?, &widened(w)?, &widened(b)?)?;
            return Ok(y.to_dtype(dtype)?);
        }
        if cfg!(feature = "cudnn")
            && x.device().is_cuda()
            && use_cudnn()
            && crate::operands::own_kernels_via_f32(&x)
        {
            // Half precision too: cuDNN computes it in f32 on the tensor cores.
            return cudnn_conv(&x, w, b, self.kernel / 2, self.relu);
        }
        // Half precision without cuDNN takes this path too: candle's convolution accumulates in
        // f32 (im2col and cuBLAS).
        device_conv(&x, w, b, self.kernel / 2, self.relu)
    }

    /// The fused CPU op (f32 or f64).
    fn cpu_conv(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let op = FusedConv {
            padding: self.kernel / 2,
            relu: self.relu,
            kernels: Mutex::new(None),
        };
        Ok(x.apply_op3(w, b, op)?)
    }
}

type Flag = std::thread::LocalKey<std::cell::Cell<bool>>;

thread_local! {
    static INFERENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static REFERENCE_CONVS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's `flag` set, and restores it afterwards (on a panic too).
fn with_flag<R>(flag: &'static Flag, f: impl FnOnce() -> R) -> R {
    struct Reset(&'static Flag, bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _reset = Reset(flag, flag.replace(true));
    f()
}

/// Runs `f` (a forward pass on this thread) without recording a graph for gradients, as
/// PyTorch's `no_grad`: the parameters enter the ops detached ([`param`]), so no result holds
/// on to the inputs it was made from, and each activation is freed as soon as the next layer
/// has used it. Without it, the whole forward pass stays in memory until its output is
/// dropped: `denoise generate` on one 512x512 image (the default cond-unet) peaked at 3.3 GB
/// and took 8.8 s without it, 1.4 GB and 3.3 s with it.
pub fn inference<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&INFERENCE, f)
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

/// Whether CUDA convolutions go through [`crate::cudnn_conv`] (builds with the `cudnn` feature,
/// unless `DENOISE_CONV=candle` asks for [`device_conv`], to compare the two).
fn use_cudnn() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| std::env::var("DENOISE_CONV").map_or(true, |v| v != "candle"))
}

/// Runs `f` with every [`Conv2d`] built from candle's own ops and backward ([`reference_conv`])
/// on this thread: the reference that a whole network's step with our kernels is checked against.
pub fn with_reference_convs<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&REFERENCE_CONVS, f)
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
        // One op forward and backward (see `crate::bias_act`): from candle's ops, the bias
        // gradient is a reduction that runs on one thread (5 % of a seed-unet step).
        crate::bias_act::bias_act(&y, &bias, false)
    }
}

/// 2x2 max pooling with stride 2 whose gradient goes, whole, to each window's maximum (the
/// first one in scan order on ties, as PyTorch). A custom op with a one-pass backward, on the
/// CPU and (feature `cuda`, kernels `kernels/max_pool.cu`) on CUDA; elsewhere a reshape and two
/// `max` reductions (whose backward is right, unlike candle 0.11's `max_pool2d`, but splits the
/// gradient on ties).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if crate::operands::own_kernels_via_f32(x) && h % 2 == 0 && w % 2 == 0 {
        // Half precision by way of f32: a maximum is exact in either.
        return Ok(crate::operands::via_f32(x, |x| {
            x.contiguous()?.apply_op1(MaxPool2x2)
        })?);
    }
    Ok(x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)?)
}

struct MaxPool2x2;

/// Index (within the window's 4 positions: 0 top-left, 1 top-right, 2 bottom-left, 3
/// bottom-right) of the first maximum.
fn argmax4<T: PartialOrd + Copy>(v: [T; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

fn pool_fwd<T: PartialOrd + Copy + Default>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut out = vec![T::default(); planes * oh * ow];
    for p in 0..planes {
        let src = &x[p * h * w..(p + 1) * h * w];
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for y in 0..oh {
            let (r0, r1) = (
                &src[2 * y * w..(2 * y + 1) * w],
                &src[(2 * y + 1) * w..(2 * y + 2) * w],
            );
            for xo in 0..ow {
                let v = [r0[2 * xo], r0[2 * xo + 1], r1[2 * xo], r1[2 * xo + 1]];
                dst[y * ow + xo] = v[argmax4(v)];
            }
        }
    }
    out
}

fn pool_bwd<T: PartialOrd + Copy + Default>(
    x: &[T],
    g: &[T],
    planes: usize,
    h: usize,
    w: usize,
) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut dx = vec![T::default(); planes * h * w];
    for p in 0..planes {
        let src = &x[p * h * w..(p + 1) * h * w];
        let gp = &g[p * oh * ow..(p + 1) * oh * ow];
        let dst = &mut dx[p * h * w..(p + 1) * h * w];
        for y in 0..oh {
            for xo in 0..ow {
                let idx = [
                    2 * y * w + 2 * xo,
                    2 * y * w + 2 * xo + 1,
                    (2 * y + 1) * w + 2 * xo,
                    (2 * y + 1) * w + 2 * xo + 1,
                ];
                let best = argmax4(idx.map(|i| src[i]));
                dst[idx[best]] = gp[y * ow + xo];
            }
        }
    }
    dx
}

impl candle_core::CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(pool_fwd(slice(v, l)?, n * c, h, w)),
            CpuStorage::F64(v) => CpuStorage::F64(pool_fwd(slice(v, l)?, n * c, h, w)),
            _ => candle_core::bail!("max pool: only f32 and f64"),
        };
        Ok((out, Shape::from((n, c, h / 2, w / 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = pool_cuda::run(None, (n * c, h, w), s, l)?;
        Ok((out, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2(&grad.contiguous()?, MaxPool2x2Grad)?))
    }
}

/// `(x, dy) -> dx` of [`MaxPool2x2`], an op so that it runs where the tensors are.
struct MaxPool2x2Grad;

struct PoolBackward {
    planes: usize,
    h: usize,
    w: usize,
}

impl BinaryKernel for PoolBackward {
    fn run<T: Float>(&self, x: &[T], g: &[T]) -> Vec<T> {
        pool_bwd(x, g, self.planes, self.h, self.w)
    }
}

impl candle_core::CustomOp2 for MaxPool2x2Grad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let k = PoolBackward {
            planes: n * c,
            h,
            w,
        };
        Ok((
            binary(&k, "max pool", (s1, l1), (s2, l2))?,
            l1.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dx = pool_cuda::run(Some((s2, l2)), (n * c, h, w), s1, l1)?;
        Ok((dx, l1.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
mod pool_cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Error as E, Layout, WithDType};

    use crate::cuda_kernels::{elementwise, function, MAX_POOL};
    use crate::operands::cuda_view;

    /// The forward pass (`grad` `None`: x to the pooled output) or the backward (x and the
    /// output gradient to dx).
    pub(super) fn run(
        grad: Option<(&CudaStorage, &Layout)>,
        dims: (usize, usize, usize),
        x: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        match x.dtype() {
            DType::F32 => typed::<f32>(grad, dims, x, l),
            DType::F64 => typed::<f64>(grad, dims, x, l),
            dt => candle_core::bail!("max pool: f32 or f64, not {dt:?}"),
        }
    }

    fn typed<T: CudaDType + DeviceRepr + WithDType>(
        grad: Option<(&CudaStorage, &Layout)>,
        (planes, h, w): (usize, usize, usize),
        x: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("max pool: {h}x{w} planes are not even");
        }
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let outputs = planes * (h / 2) * (w / 2);
        let xs = cuda_view::<T>(x, l, "max pool")?;
        let len = if grad.is_some() {
            planes * h * w
        } else {
            outputs
        };
        // SAFETY: both kernels write every element of `out` (the backward all four inputs of
        // each window).
        let mut out = unsafe { stream.alloc::<T>(len) }.map_err(E::wrap)?;
        let name = if grad.is_some() {
            "max_pool_bwd"
        } else {
            "max_pool_fwd"
        };
        let func = function(&dev, "denoise_max_pool", MAX_POOL, name, T::DTYPE)?;
        let g = match grad {
            Some((g, gl)) => Some(cuda_view::<T>(g, gl, "max pool")?),
            None => None,
        };
        let mut builder = stream.launch_builder(&func);
        builder.arg(&outputs);
        builder.arg(&h);
        builder.arg(&w);
        builder.arg(&xs);
        if let Some(g) = &g {
            builder.arg(g);
        }
        builder.arg(&mut out);
        if outputs > 0 {
            // SAFETY: (size_t outputs, size_t h, size_t w, const T* x, [const T* grad,] T* out),
            // x holds planes h w values, grad `outputs`, out as allocated above.
            unsafe { builder.launch(elementwise(outputs)) }.map_err(E::wrap)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
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
