//! Adam's update as in-place custom ops: per parameter tensor one pass for each moment and one
//! for the parameter, with no temporaries. On the CPU the loops below; on CUDA (feature `cuda`)
//! the kernels of `denoise-model`'s `kernels/adam.cu` (`denoise_ops::cuda_kernels::ADAM`), with the same arithmetic in
//! the same order. `Adam::step_with_candle_ops` is the same update from candle's element-wise
//! ops, the reference both are tested against.

use candle_core::{CpuStorage, InplaceOp3, Layout};
use denoise_ops::operands::contiguous;

/// `m <- beta m + (1 - beta) g'` (or `g'^2` where `square`), `g' = g + weight_decay p`:
/// in place on `m`, reading `(g, p)`.
pub(crate) struct Moment {
    pub beta: f64,
    pub weight_decay: f64,
    pub square: bool,
}

/// `p <- p - step_size m / (sqrt(v) / bc2_sqrt + eps)`: in place on `p`, reading `(m, v)`.
pub(crate) struct Update {
    pub step_size: f64,
    pub bc2_sqrt: f64,
    pub eps: f64,
}

trait Real: Copy + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn of(v: f64) -> Self;
    fn sqrt(self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of(v: f64) -> Self {
                v as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
            fn div(self, o: Self) -> Self {
                self / o
            }
        }
    };
}
real!(f32);
real!(f64);

/// The three operands as slices of the same length (contiguous, same dtype).
fn operands<'a, T>(
    dst: &'a mut [T],
    dl: &Layout,
    a: &'a [T],
    al: &Layout,
    b: &'a [T],
    bl: &Layout,
) -> candle_core::Result<(&'a mut [T], &'a [T], &'a [T])> {
    let (a, b) = (contiguous(a, al, "adam")?, contiguous(b, bl, "adam")?);
    let Some((d0, d1)) = dl.contiguous_offsets() else {
        candle_core::bail!("adam: the operands must be contiguous");
    };
    if d1 - d0 != a.len() || d1 - d0 != b.len() {
        candle_core::bail!("adam: operands of different sizes");
    }
    Ok((&mut dst[d0..d1], a, b))
}

impl Moment {
    fn run<T: Real>(&self, m: &mut [T], g: &[T], p: &[T]) {
        let (beta, wd) = (T::of(self.beta), T::of(self.weight_decay));
        // 1 - beta in f64: 1 - 0.999 rounded to f32 after the subtraction, not before
        // (1 - 0.999f32 is 1.3e-5 off in relative terms).
        let keep = T::of(1.0 - self.beta);
        for ((m, &g), &p) in m.iter_mut().zip(g).zip(p) {
            let g = g + wd * p;
            let x = if self.square { g * g } else { g };
            *m = beta * *m + keep * x;
        }
    }
}

impl Update {
    fn run<T: Real>(&self, p: &mut [T], m: &[T], v: &[T]) {
        let (step, bc2, eps) = (T::of(self.step_size), T::of(self.bc2_sqrt), T::of(self.eps));
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = p.sub(step * m.div(v.sqrt().div(bc2) + eps));
        }
    }
}

/// `cpu_fwd` of both ops: dispatch on the dtype, check the operands, run the loop.
macro_rules! cpu_fwd {
    () => {
        fn cpu_fwd(
            &self,
            dst: &mut CpuStorage,
            dl: &Layout,
            a: &CpuStorage,
            al: &Layout,
            b: &CpuStorage,
            bl: &Layout,
        ) -> candle_core::Result<()> {
            match (dst, a, b) {
                (CpuStorage::F32(d), CpuStorage::F32(a), CpuStorage::F32(b)) => {
                    let (d, a, b) = operands(d, dl, a, al, b, bl)?;
                    self.run(d, a, b);
                }
                (CpuStorage::F64(d), CpuStorage::F64(a), CpuStorage::F64(b)) => {
                    let (d, a, b) = operands(d, dl, a, al, b, bl)?;
                    self.run(d, a, b);
                }
                _ => candle_core::bail!("adam: operands must all be f32 or all f64"),
            }
            Ok(())
        }
    };
}

impl InplaceOp3 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    cpu_fwd!();

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<()> {
        let args = [self.beta, 1.0 - self.beta, self.weight_decay];
        cuda::launch(
            "adam_moment",
            dst,
            dl,
            [(a, al), (b, bl)],
            args,
            Some(self.square),
        )
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    cpu_fwd!();

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<()> {
        let args = [self.step_size, self.bc2_sqrt, self.eps];
        cuda::launch("adam_update", dst, dl, [(a, al), (b, bl)], args, None)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Layout};
    use denoise_ops::cuda_kernels::{elementwise, function, ADAM};
    use denoise_ops::operands::cuda_view;

    /// Launches `{name}_{float,double}(n, dst, a, b, scalars..., [flag])` over the operands.
    pub(super) fn launch<const K: usize>(
        name: &str,
        dst: &mut CudaStorage,
        dl: &Layout,
        srcs: [(&CudaStorage, &Layout); 2],
        scalars: [f64; K],
        flag: Option<bool>,
    ) -> candle_core::Result<()> {
        match dst.dtype() {
            DType::F32 => typed(name, dst, dl, srcs, scalars.map(|s| s as f32), flag),
            DType::F64 => typed(name, dst, dl, srcs, scalars, flag),
            dt => candle_core::bail!("adam: CUDA kernels for f32 and f64, not {dt:?}"),
        }
    }

    fn typed<T: CudaDType + DeviceRepr + candle_core::WithDType, const K: usize>(
        name: &str,
        dst: &mut CudaStorage,
        dl: &Layout,
        [(a, al), (b, bl)]: [(&CudaStorage, &Layout); 2],
        scalars: [T; K],
        flag: Option<bool>,
    ) -> candle_core::Result<()> {
        let n = dl.shape().elem_count();
        if !dl.is_contiguous() || [al, bl].iter().any(|l| l.shape().elem_count() != n) {
            candle_core::bail!("adam: operands must be contiguous and of one size");
        }
        let dev = dst.device().clone();
        let func = function(&dev, "denoise_adam", ADAM, name, T::DTYPE)?;
        let a = cuda_view::<T>(a, al, "adam")?;
        let b = cuda_view::<T>(b, bl, "adam")?;
        let mut d = dst.as_cuda_slice_mut::<T>()?.slice_mut(dl.start_offset()..);
        let flag = flag.map(i32::from);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&n);
        builder.arg(&mut d);
        builder.arg(&a);
        builder.arg(&b);
        for s in &scalars {
            builder.arg(s);
        }
        if let Some(f) = &flag {
            builder.arg(f);
        }
        // SAFETY: the kernel's parameters are (size_t n, T* dst, const T* a, const T* b, T
        // scalars..., [int flag]) and every buffer holds n elements.
        unsafe { builder.launch(elementwise(n)) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}
