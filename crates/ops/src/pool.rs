//! 2x2 max pooling with stride 2 whose gradient goes, whole, to each window's maximum.
//!
//! candle 0.11's `max_pool2d` backward passes a quarter of the gradient where a 2x2 window has
//! one maximum. [`max_pool2x2`] is a custom op with a one-pass backward on the CPU and (feature
//! `cuda`, `kernels/max_pool.cu`) on CUDA.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use crate::cpu_conv::Float;
use crate::operands::{binary, BinaryKernel};

/// 2x2 max pooling with stride 2 whose gradient goes, whole, to each window's maximum (the
/// first one in scan order on ties, as PyTorch). A custom op with a one-pass backward, on the
/// CPU and (feature `cuda`, kernels `kernels/max_pool.cu`) on CUDA; elsewhere a reshape and two
/// `max` reductions (whose backward is right, unlike candle 0.11's `max_pool2d`, but splits the
/// gradient on ties).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if crate::operands::own_kernels_via_f32(x) && h % 2 == 0 && w % 2 == 0 {
        // Half precision by way of f32: a maximum is exact in either.
        return crate::operands::via_f32(x, |x| x.contiguous()?.apply_op1(MaxPool2x2));
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
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
            CpuStorage::F32(v) => CpuStorage::F32(pool_fwd(
                crate::operands::contiguous(v, l, "max pool")?,
                n * c,
                h,
                w,
            )),
            CpuStorage::F64(v) => CpuStorage::F64(pool_fwd(
                crate::operands::contiguous(v, l, "max pool")?,
                n * c,
                h,
                w,
            )),
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
