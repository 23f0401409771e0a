//! A convolution's bias and optional ReLU as one op: `relu?(y + b[c])`, forward and backward.
//!
//! From candle's ops this is a broadcast add and a ReLU forward, and backward a mask, products,
//! temporaries and reductions for the bias gradient: a dozen kernel launches on a GPU for one
//! layer. Here it is one pass forward and one backward (the masked gradient and the bias
//! gradient together). On the CPU the loops below; on CUDA (feature `cuda`) the kernels of
//! `kernels/bias_act.cu`, the same arithmetic. The device convolutions use it
//! ([`crate::conv::device_conv`], [`crate::conv::cudnn_conv`]), and `ConvTranspose2x2`
//! everywhere; the CPU convolution fuses bias and ReLU into its own kernels.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_conv::{masked_plane, Float};
use crate::operands::{binary, BinaryKernel};
use candle_core::Result;

/// `relu?(y + b)`, `b` added per channel (dim 1) of `y` `(N, C, H, W)`: one op where our kernels
/// run ([`crate::operands::own_kernels_via_f32`]; half precision is added in f32 and rounded
/// once), else [`bias_relu`].
pub fn bias_act(y: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    use crate::operands::{via_f32, widened};
    if !crate::operands::own_kernels_via_f32(y) {
        return bias_relu(y, b, relu);
    }
    let b = widened(b)?.contiguous()?;
    via_f32(y, |y| y.contiguous()?.apply_op2(&b, BiasAct { relu }))
}

/// `relu?(y + b)` with `b` added per channel, from candle's ops. Half precision is added in f32
/// and rounded back: the bias gradient, a sum over every image and pixel, is then summed in f32
/// too (in bf16 it came out wrong by half its size on a small U-Net).
pub fn bias_relu(y: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    use crate::operands::widened;
    let out = widened(y)?.broadcast_add(&widened(b)?.reshape((1, b.dim(0)?, 1, 1))?)?;
    let out = if relu { out.relu()? } else { out };
    out.to_dtype(y.dtype())
}

struct BiasAct {
    relu: bool,
}

/// `(grad, out) -> [dy, db]` packed in one vector: `dy` (as `grad`) then `db` (one per channel).
struct BiasActGrad {
    relu: bool,
}

/// `(numel, plane, channels)` of `y` `(N, C, H, W)` and a bias of `C`.
fn dims(y: &Layout, channels: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (_, c, h, w) = y.shape().dims4()?;
    if c != channels {
        candle_core::bail!("bias: {channels} values for {c} channels");
    }
    Ok((y.shape().elem_count(), h * w, c))
}

/// `(numel, plane, channels)` of a gradient `(N, C, H, W)` and the output it goes with (the
/// same shape).
fn grad_dims(grad: &Layout, out: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (_, c, h, w) = grad.shape().dims4()?;
    if grad.shape() != out.shape() {
        candle_core::bail!(
            "bias: gradient {:?}, output {:?}",
            grad.shape(),
            out.shape()
        );
    }
    Ok((grad.shape().elem_count(), h * w, c))
}

/// The forward pass on the CPU: `(y, b) -> out`.
struct Forward {
    plane: usize,
    relu: bool,
}

impl BinaryKernel for Forward {
    fn run<T: Float>(&self, y: &[T], b: &[T]) -> Vec<T> {
        forward(y, b, self.plane, self.relu)
    }
}

/// The backward pass on the CPU: `(grad, out) -> [dy, db]`.
struct Backward {
    plane: usize,
    channels: usize,
    relu: bool,
}

impl BinaryKernel for Backward {
    fn run<T: Float>(&self, grad: &[T], out: &[T]) -> Vec<T> {
        backward(grad, out, self.plane, self.channels, self.relu)
    }
}

fn forward<T: Float>(y: &[T], b: &[T], plane: usize, relu: bool) -> Vec<T> {
    let c = b.len();
    let mut out = vec![T::ZERO; y.len()];
    let run = |(p, (o, rows)): (usize, (&mut [T], &[T]))| {
        let bias = b[p % c];
        for (o, &v) in o.iter_mut().zip(rows) {
            let v = v + bias;
            *o = if relu && v <= T::ZERO { T::ZERO } else { v };
        }
    };
    if y.len() >= PARALLEL_FROM {
        out.par_chunks_mut(plane)
            .zip(y.par_chunks(plane))
            .enumerate()
            .for_each(run);
    } else {
        out.chunks_mut(plane)
            .zip(y.chunks(plane))
            .enumerate()
            .for_each(run);
    }
    out
}

/// Tensors from this many values up are done in parallel over their planes.
const PARALLEL_FROM: usize = 1 << 16;

fn backward<T: Float>(grad: &[T], out: &[T], plane: usize, c: usize, relu: bool) -> Vec<T> {
    let numel = grad.len();
    let mut packed = vec![T::ZERO; numel + c];
    let (dy, db) = packed.split_at_mut(numel);
    // Each plane's masked gradient and its sum; the sums are added per channel in plane order,
    // so that the bias gradient does not depend on the threads.
    let run = |(d, (g, o)): (&mut [T], (&[T], &[T]))| masked_plane(d, g, relu.then_some(o));
    let sums: Vec<T> = if numel >= PARALLEL_FROM {
        dy.par_chunks_mut(plane)
            .zip(grad.par_chunks(plane).zip(out.par_chunks(plane)))
            .map(run)
            .collect()
    } else {
        dy.chunks_mut(plane)
            .zip(grad.chunks(plane).zip(out.chunks(plane)))
            .map(run)
            .collect()
    };
    for (p, acc) in sums.into_iter().enumerate() {
        db[p % c] += acc;
    }
    packed
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, plane, _) = dims(l1, l2.shape().elem_count())?;
        let k = Forward {
            plane,
            relu: self.relu,
        };
        Ok((binary(&k, "bias", (s1, l1), (s2, l2))?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(l1, l2.shape().elem_count())?;
        let out = cuda::run(cuda::Kernel::Forward, d, self.relu, s1, l1, s2, l2)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let numel = y.elem_count();
        let packed = grad
            .contiguous()?
            .apply_op2(out, BiasActGrad { relu: self.relu })?;
        let dy = packed.narrow(0, 0, numel)?.reshape(y.shape())?;
        let db = packed.narrow(0, numel, b.elem_count())?;
        Ok((Some(dy), Some(db)))
    }
}

impl CustomOp2 for BiasActGrad {
    fn name(&self) -> &'static str {
        "bias-act-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (numel, plane, channels) = grad_dims(l1, l2)?;
        let k = Backward {
            plane,
            channels,
            relu: self.relu,
        };
        let out = binary(&k, "bias", (s1, l1), (s2, l2))?;
        Ok((out, Shape::from(numel + channels)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = grad_dims(l1, l2)?;
        let out = cuda::run(cuda::Kernel::Backward, d, self.relu, s1, l1, s2, l2)?;
        Ok((out, Shape::from(d.0 + d.2)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Error as E, Layout, WithDType};

    use crate::cuda_kernels::{elementwise, function, BIAS_ACT};
    use crate::operands::cuda_view;

    pub(super) enum Kernel {
        /// `(y, b) -> out`
        Forward,
        /// `(grad, out) -> [dy, db]`
        Backward,
    }

    pub(super) fn run(
        kernel: Kernel,
        dims: (usize, usize, usize),
        relu: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => typed::<f32>(kernel, dims, relu, s1, l1, s2, l2),
            (DType::F64, DType::F64) => typed::<f64>(kernel, dims, relu, s1, l1, s2, l2),
            (a, b) => candle_core::bail!("bias: f32 or f64 operands, not {a:?} and {b:?}"),
        }
    }

    fn typed<T: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType>(
        kernel: Kernel,
        (numel, plane, channels): (usize, usize, usize),
        relu: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        let dev = s1.device().clone();
        let stream = dev.cuda_stream();
        let a = cuda_view::<T>(s1, l1, "bias")?;
        let b = cuda_view::<T>(s2, l2, "bias")?;
        let relu = i32::from(relu);
        let (name, len, cfg) = match kernel {
            Kernel::Forward => ("bias_act_fwd", numel, elementwise(numel)),
            Kernel::Backward => (
                "bias_act_bwd",
                numel + channels,
                // One block of 256 threads per (image, channel) plane.
                LaunchConfig {
                    grid_dim: ((numel / plane.max(1)) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
        };
        // SAFETY: the forward kernel writes every element; the backward kernel every element of
        // dy, and db is zeroed below.
        let mut out = unsafe { stream.alloc::<T>(len) }.map_err(E::wrap)?;
        if let Kernel::Backward = kernel {
            let mut db = out.slice_mut(numel..);
            stream.memset_zeros(&mut db).map_err(E::wrap)?;
        }
        let func = function(&dev, "denoise_bias_act", BIAS_ACT, name, T::DTYPE)?;
        let mut builder = stream.launch_builder(&func);
        builder.arg(&numel);
        builder.arg(&plane);
        builder.arg(&channels);
        builder.arg(&a);
        builder.arg(&b);
        builder.arg(&mut out);
        builder.arg(&relu);
        if numel > 0 {
            // SAFETY: the kernels take (size_t numel, size_t plane, size_t channels, const T*,
            // const T*, T* out, int relu); `a` holds numel values, `b` channels (forward) or
            // numel (backward) values, `out` numel (forward) or numel + channels (backward).
            unsafe { builder.launch(cfg) }.map_err(E::wrap)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
