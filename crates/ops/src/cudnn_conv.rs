//! The convolution on CUDA through cuDNN, all three passes: `cudnnConvolutionForward`,
//! `...BackwardData` and `...BackwardFilter`, as PyTorch runs them (candle's own conv2d uses cuDNN
//! for the forward pass only, and lets TF32 in even for f32).
//!
//! Each pass is one custom op ([`Pass`]); the forward's backward is the other two. The ops also
//! run on the CPU (with the im2col kernels of [`crate::cpu_conv`]), which is how the wiring of the
//! graph (which gradient goes where, with which shape) is tested on machines without a GPU; on the
//! GPU, `denoise selftest --device cuda` checks the cuDNN results against the CPU's. The cuDNN
//! calls exist only with the `cudnn` feature: without it, [`conv`] on CUDA is an error, and
//! [`crate::conv::conv2d`] does not call it.
//!
//! Math mode: plain FMA (true f32) unless candle's f32 matrix products may use TF32
//! (`denoise --tf32`), as PyTorch's `torch.backends.cudnn.allow_tf32`. bf16 and f16 data are
//! computed in f32 on the tensor cores (cuDNN's "pseudo" half configurations, as PyTorch's
//! autocast runs them); on the CPU the half-precision ops widen their operands to f32 and round
//! the result once.
//!
//! Algorithms: for each pass and shape, cuDNN's algorithms are timed once on the first call and
//! the fastest is kept ([`set_benchmark`], on by default, as `torch.backends.cudnn.benchmark`),
//! or cuDNN's heuristics pick one without running anything (off; `DENOISE_CUDNN_BENCHMARK=0`
//! turns timing off for the whole process).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::cpu_conv::{self, ConvShape, Float};
use crate::operands::{binary, narrowed, widened_values, BinaryKernel};
use candle_core::Result;

/// `conv2d(x, w)` with stride 1 and `padding`, as a graph op whose gradients come from
/// [`Pass::Data`] and [`Pass::Filter`]. `x` and `w` are made contiguous.
pub fn conv(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    let k = w.dim(2)?;
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        LibConv {
            pass: Pass::Forward,
            padding,
            k,
        },
    )
}

static BENCHMARK: AtomicBool = AtomicBool::new(true);

/// Whether the cuDNN algorithm for a new shape is chosen by timing each one on the first call
/// (`true`, the default: worth it when the same shapes come back, as in training, evaluation and
/// sampling) or by cuDNN's heuristics (`false`: better for a few calls on shapes never seen
/// again, such as denoising one large picture). Each choice is cached per shape either way.
pub fn set_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

/// Whether algorithms are timed now ([`set_benchmark`], unless `DENOISE_CUDNN_BENCHMARK=0`).
pub fn benchmark() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allowed = *ENV
        .get_or_init(|| std::env::var("DENOISE_CUDNN_BENCHMARK").map_or(true, |v| v.trim() != "0"));
    allowed && BENCHMARK.load(Ordering::Relaxed)
}

/// Which of the three convolution passes an op computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `(x, w) -> y`
    Forward,
    /// `(dy, w) -> dx`
    Data,
    /// `(x, dy) -> dw`
    Filter,
}

struct LibConv {
    pass: Pass,
    padding: usize,
    k: usize,
}

impl LibConv {
    /// The convolution's shape from the op's two inputs.
    fn shape(&self, a: &Layout, b: &Layout) -> candle_core::Result<ConvShape> {
        let (n, ca, h, w) = a.shape().dims4()?;
        let (c_in, c_out) = match self.pass {
            Pass::Forward => {
                let (co, ci, _, _) = b.shape().dims4()?;
                if ci != ca {
                    candle_core::bail!("conv: input {:?}, kernel {:?}", a.shape(), b.shape());
                }
                (ci, co)
            }
            Pass::Data => {
                let (co, ci, _, _) = b.shape().dims4()?;
                if co != ca {
                    candle_core::bail!("conv dx: dy {:?}, kernel {:?}", a.shape(), b.shape());
                }
                (ci, co)
            }
            Pass::Filter => {
                let (nb, co, hb, wb) = b.shape().dims4()?;
                if (nb, hb, wb) != (n, h, w) {
                    candle_core::bail!("conv dw: x {:?}, dy {:?}", a.shape(), b.shape());
                }
                (ca, co)
            }
        };
        if self.padding * 2 + 1 != self.k {
            candle_core::bail!("conv: only same-padding convolutions (padding (k - 1) / 2)");
        }
        Ok(ConvShape {
            n,
            c_in,
            c_out,
            h,
            w,
            k: self.k,
        })
    }

    fn out_shape(&self, s: &ConvShape) -> Shape {
        match self.pass {
            Pass::Forward => (s.n, s.c_out, s.h, s.w).into(),
            Pass::Data => (s.n, s.c_in, s.h, s.w).into(),
            Pass::Filter => (s.c_out, s.c_in, s.k, s.k).into(),
        }
    }
}

/// The CPU version of a pass (im2col kernels; the unused operand of the backward kernel is
/// zeros).
struct OnCpu<'a> {
    pass: Pass,
    s: &'a ConvShape,
}

impl BinaryKernel for OnCpu<'_> {
    fn run<T: Float>(&self, a: &[T], b: &[T]) -> Vec<T> {
        let s = self.s;
        match self.pass {
            Pass::Forward => cpu_conv::forward_im2col(s, a, b, &vec![T::ZERO; s.c_out], false),
            Pass::Data => {
                let x = vec![T::ZERO; s.n * s.c_in * s.h * s.w];
                cpu_conv::backward_im2col(s, &x, b, a, None).0
            }
            Pass::Filter => {
                let w = vec![T::ZERO; s.c_out * s.c_in * s.k * s.k];
                cpu_conv::backward_im2col(s, a, &w, b, None).1
            }
        }
    }
}

impl CustomOp2 for LibConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "conv2d-fwd",
            Pass::Data => "conv2d-bwd-data",
            Pass::Filter => "conv2d-bwd-filter",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = self.shape(l1, l2)?;
        let k = OnCpu {
            pass: self.pass,
            s: &s,
        };
        let out = match (
            widened_values(s1, l1, "conv")?,
            widened_values(s2, l2, "conv")?,
        ) {
            // Half precision: f32 arithmetic, one rounding (as the tensor cores).
            (Some(a), Some(b)) => narrowed(
                k.run::<f32>(&a, &b),
                candle_core::backend::BackendStorage::dtype(s1),
            ),
            _ => binary(&k, "conv", (s1, l1), (s2, l2))?,
        };
        Ok((out, self.out_shape(&s)))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let s = self.shape(l1, l2)?;
        let out = cuda::run(self.pass, &s, self.padding, s1, l1, s2, l2)?;
        Ok((out, self.out_shape(&s)))
    }

    #[cfg(not(feature = "cudnn"))]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        candle_core::bail!("this build has no cuDNN: rebuild with `--features cudnn`")
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.pass != Pass::Forward {
            candle_core::bail!("conv: no second derivative");
        }
        let (x, w) = (a, b);
        let grad = grad.contiguous()?;
        let op = |pass| LibConv {
            pass,
            padding: self.padding,
            k: self.k,
        };
        let dx = grad.apply_op2(w, op(Pass::Data))?;
        let dw = x.apply_op2(&grad, op(Pass::Filter))?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(feature = "cudnn")]
mod cuda {
    use std::any::Any;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::safe::{
        ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor,
        TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use candle_core::{CudaStorage, DType, Error as E, Layout, WithDType};
    use half::{bf16, f16};

    use super::{ConvShape, Pass};

    /// The most workspace an algorithm may ask for when algorithms are timed (1 GiB).
    const MAX_WORKSPACE: usize = 1 << 30;

    thread_local! {
        /// cuDNN handles are neither `Send` nor `Sync`: one per thread and device.
        static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
        /// Per shape: the descriptors and, per pass, the algorithm and its workspace size (a
        /// [`Plan`] of the shape's data and compute types).
        static PLANS: RefCell<HashMap<Key, Rc<dyn Any>>> = RefCell::new(HashMap::new());
    }

    /// What a convolution shape needs, made once and kept for every later call: cuDNN's
    /// descriptors (creating, setting and destroying four of them, and asking for the
    /// workspace size, on every call was most of the host's time in a training step: the step
    /// was host-bound on an H200) and, for each pass once it has run, its algorithm and workspace
    /// size.
    struct Plan<T: CudnnDataType, C: CudnnDataType> {
        x: TensorDescriptor<T>,
        y: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        conv: ConvDescriptor<C>,
        fwd: Cell<Option<(sys::cudnnConvolutionFwdAlgo_t, usize)>>,
        data: Cell<Option<(sys::cudnnConvolutionBwdDataAlgo_t, usize)>>,
        filter: Cell<Option<(sys::cudnnConvolutionBwdFilterAlgo_t, usize)>>,
    }

    /// Device, shape `(n, c_in, c_out, h, w, k)`, padding, data type, TF32 allowed?, timed?
    type Key = (DeviceId, [usize; 6], usize, DType, bool, bool);

    const FWD_ALGOS: [sys::cudnnConvolutionFwdAlgo_t; 8] = {
        use sys::cudnnConvolutionFwdAlgo_t::*;
        [
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ]
    };
    const DATA_ALGOS: [sys::cudnnConvolutionBwdDataAlgo_t; 6] = {
        use sys::cudnnConvolutionBwdDataAlgo_t::*;
        [
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        ]
    };
    const FILTER_ALGOS: [sys::cudnnConvolutionBwdFilterAlgo_t; 6] = {
        use sys::cudnnConvolutionBwdFilterAlgo_t::*;
        [
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        ]
    };

    /// The algorithm and workspace size of a pass: `slot`'s, or chosen by `pick` and kept there.
    fn chosen<A: Copy>(
        slot: &Cell<Option<(A, usize)>>,
        pick: impl FnOnce() -> candle_core::Result<A>,
        size: impl FnOnce(A) -> candle_core::Result<usize>,
    ) -> candle_core::Result<(A, usize)> {
        if let Some(c) = slot.get() {
            return Ok(c);
        }
        let algo = pick()?;
        let c = (algo, size(algo)?);
        slot.set(Some(c));
        Ok(c)
    }

    /// The fastest of `algos` for this call, as `torch.backends.cudnn.benchmark` finds it: each
    /// algorithm that this shape supports (and whose workspace is at most [`MAX_WORKSPACE`]) runs
    /// once to warm up and twice timed, the device synchronised around them. `run` launches one
    /// algorithm with a workspace of the size `workspace` gives; the outputs it writes are
    /// overwritten by the real call afterwards. Falls back to `heuristic` when none runs.
    fn fastest<A: Copy + std::fmt::Debug>(
        dev: &CudaDevice,
        algos: &[A],
        workspace: impl Fn(A) -> Option<usize>,
        mut run: impl FnMut(A, &mut CudaSlice<u8>) -> bool,
        heuristic: impl FnOnce() -> candle_core::Result<A>,
    ) -> candle_core::Result<A> {
        let stream = dev.cuda_stream();
        let mut best: Option<(Duration, A)> = None;
        for &algo in algos {
            let Some(bytes) = workspace(algo).filter(|&b| b <= MAX_WORKSPACE) else {
                continue;
            };
            // SAFETY: scratch space for cuDNN, never read by us.
            let Ok(mut ws) = (unsafe { stream.alloc::<u8>(bytes.max(1)) }) else {
                continue;
            };
            if !run(algo, &mut ws) || stream.synchronize().is_err() {
                continue;
            }
            let start = Instant::now();
            if !(run(algo, &mut ws) && run(algo, &mut ws)) || stream.synchronize().is_err() {
                continue;
            }
            let took = start.elapsed();
            tracing::debug!(?algo, ?took, "cuDNN algorithm timed");
            if best.is_none_or(|(t, _)| took < t) {
                best = Some((took, algo));
            }
        }
        match best {
            Some((_, algo)) => Ok(algo),
            None => heuristic(),
        }
    }

    fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
        HANDLES.with(|h| {
            if let Some(c) = h.borrow().get(&dev.id()) {
                return Ok(c.clone());
            }
            let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
            h.borrow_mut().insert(dev.id(), c.clone());
            Ok(c)
        })
    }

    pub(super) fn run(
        pass: Pass,
        s: &ConvShape,
        padding: usize,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<CudaStorage> {
        match (s1.dtype(), s2.dtype()) {
            (DType::F32, DType::F32) => launch::<f32, f32>(pass, s, padding, s1, l1, s2, l2),
            (DType::F64, DType::F64) => launch::<f64, f64>(pass, s, padding, s1, l1, s2, l2),
            // Half precision in, f32 arithmetic (cuDNN's PSEUDO_BFLOAT16 / PSEUDO_HALF configs).
            (DType::BF16, DType::BF16) => launch::<bf16, f32>(pass, s, padding, s1, l1, s2, l2),
            (DType::F16, DType::F16) => launch::<f16, f32>(pass, s, padding, s1, l1, s2, l2),
            (a, b) => candle_core::bail!(
                "conv: cuDNN needs two operands of one float type, not {a:?} and {b:?}"
            ),
        }
    }

    /// A pass's cuDNN call on its two inputs `a` and `b`: `(x, w)` forward, `(dy, w)` for the
    /// input's gradient, `(x, dy)` for the kernel's.
    struct Call<'a, Op, T: DeviceRepr> {
        op: Op,
        a: &'a CudaView<'a, T>,
        b: &'a CudaView<'a, T>,
    }

    /// What [`execute`] needs of a pass.
    trait PassCall<T: DeviceRepr> {
        type Algo: Copy + std::fmt::Debug + 'static;
        /// Every algorithm cuDNN has for the pass.
        const ALGOS: &'static [Self::Algo];
        fn heuristic(&self) -> candle_core::Result<Self::Algo>;
        fn workspace(&self, algo: Self::Algo) -> candle_core::Result<usize>;
        /// # Safety
        /// `out` must hold as many elements as the pass's output.
        unsafe fn run(
            &self,
            algo: Self::Algo,
            ws: Option<&mut CudaSlice<u8>>,
            out: &mut CudaSlice<T>,
        ) -> candle_core::Result<()>;
    }

    macro_rules! pass_call {
        ($op:ident, $algo:ty, $algos:expr, |$call:ident, $out:ident| ($($args:expr),*)) => {
            impl<T, C> PassCall<T> for Call<'_, $op<'_, T, C, T>, T>
            where
                T: CudnnDataType + DeviceRepr + WithDType,
                C: CudnnDataType,
            {
                type Algo = $algo;
                const ALGOS: &'static [$algo] = &$algos;
                fn heuristic(&self) -> candle_core::Result<$algo> {
                    self.op.pick_algorithm().map_err(E::wrap)
                }
                fn workspace(&self, algo: $algo) -> candle_core::Result<usize> {
                    self.op.get_workspace_size(algo).map_err(E::wrap)
                }
                unsafe fn run(
                    &self,
                    algo: $algo,
                    ws: Option<&mut CudaSlice<u8>>,
                    $out: &mut CudaSlice<T>,
                ) -> candle_core::Result<()> {
                    let $call = self;
                    let scale = (T::from_f64(1.0), T::from_f64(0.0));
                    // SAFETY: the descriptors describe the inputs (contiguous) and `out`, as
                    // the caller promises.
                    unsafe { self.op.launch(algo, ws, scale, $($args),*) }.map_err(E::wrap)
                }
            }
        };
    }
    pass_call!(
        ConvForward,
        sys::cudnnConvolutionFwdAlgo_t,
        FWD_ALGOS,
        |c, out| (c.a, c.b, out)
    );
    pass_call!(
        ConvBackwardData,
        sys::cudnnConvolutionBwdDataAlgo_t,
        DATA_ALGOS,
        |c, out| (out, c.b, c.a)
    );
    pass_call!(
        ConvBackwardFilter,
        sys::cudnnConvolutionBwdFilterAlgo_t,
        FILTER_ALGOS,
        |c, out| (c.a, out, c.b)
    );

    /// Runs a pass into a new buffer of `len` elements, with the algorithm kept in `slot`, or
    /// chosen now (timed when `timed`, else cuDNN's heuristics) and kept there.
    fn execute<T: DeviceRepr, P: PassCall<T>>(
        dev: &CudaDevice,
        call: &P,
        slot: &Cell<Option<(P::Algo, usize)>>,
        timed: bool,
        len: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let stream = dev.cuda_stream();
        // SAFETY: cuDNN writes every output element (beta = 0) before anything reads it.
        let mut out = unsafe { stream.alloc::<T>(len) }.map_err(E::wrap)?;
        let pick = || {
            if !timed {
                return call.heuristic();
            }
            let size = |algo| call.workspace(algo).ok();
            // SAFETY: `out` holds the pass's output.
            let run = |algo, ws: &mut CudaSlice<u8>| unsafe {
                call.run(algo, Some(ws), &mut out).is_ok()
            };
            fastest(dev, P::ALGOS, size, run, || call.heuristic())
        };
        let (algo, bytes) = chosen(slot, pick, |algo| call.workspace(algo))?;
        // No workspace where the algorithm needs none: one allocation less per call.
        let mut ws = match bytes {
            0 => None,
            // SAFETY: scratch space for cuDNN, never read by us.
            _ => Some(unsafe { stream.alloc::<u8>(bytes) }.map_err(E::wrap)?),
        };
        // SAFETY: `out` holds the pass's output.
        unsafe { call.run(algo, ws.as_mut(), &mut out) }?;
        Ok(out)
    }

    /// The [`Plan`] of a shape: made on its first call on this thread.
    fn plan<T, C>(
        dev: &CudaDevice,
        key: Key,
        s: &ConvShape,
        padding: usize,
    ) -> candle_core::Result<Rc<Plan<T, C>>>
    where
        T: CudnnDataType + 'static,
        C: CudnnDataType + 'static,
    {
        if let Some(p) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
            if let Ok(p) = p.downcast::<Plan<T, C>>() {
                return Ok(p);
            }
        }
        let cudnn = handle(dev)?;
        let i = |v: usize| v as std::ffi::c_int;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let p = i(padding);
        let mut conv = cudnn
            .create_conv2d::<C>(
                [p, p],
                [1, 1],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(E::wrap)?;
        // cuDNN's default math lets f32 convolutions run in TF32 on Ampere and later; PyTorch asks
        // for FMA math unless TF32 is allowed, and so do we. Half precision takes the tensor
        // cores, as in PyTorch.
        let (_, _, _, dtype, tf32, _) = key;
        let math = if matches!(dtype, DType::BF16 | DType::F16) {
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        } else if tf32 && dtype == DType::F32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        conv.set_math_type(math).map_err(E::wrap)?;
        let plan = Rc::new(Plan {
            x: cudnn
                .create_4d_tensor::<T>(nchw, [i(s.n), i(s.c_in), i(s.h), i(s.w)])
                .map_err(E::wrap)?,
            y: cudnn
                .create_4d_tensor::<T>(nchw, [i(s.n), i(s.c_out), i(s.h), i(s.w)])
                .map_err(E::wrap)?,
            w: cudnn
                .create_4d_filter::<T>(nchw, [i(s.c_out), i(s.c_in), i(s.k), i(s.k)])
                .map_err(E::wrap)?,
            conv,
            fwd: Cell::new(None),
            data: Cell::new(None),
            filter: Cell::new(None),
        });
        PLANS.with(|p| p.borrow_mut().insert(key, plan.clone() as Rc<dyn Any>));
        Ok(plan)
    }

    /// One pass with data in `T` and arithmetic in `C`.
    fn launch<T, C>(
        pass: Pass,
        s: &ConvShape,
        padding: usize,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<CudaStorage>
    where
        T: CudnnDataType + DeviceRepr + WithDType + candle_core::cuda_backend::CudaDType,
        C: CudnnDataType + 'static,
    {
        let dev = s1.device().clone();
        let a = crate::operands::cuda_view::<T>(s1, l1, "conv")?;
        let b = crate::operands::cuda_view::<T>(s2, l2, "conv")?;
        let tf32 = candle_core::cuda_backend::gemm_reduced_precision_f32();
        let timed = super::benchmark();
        let key: Key = (
            dev.id(),
            [s.n, s.c_in, s.c_out, s.h, s.w, s.k],
            padding,
            T::DTYPE,
            tf32,
            timed,
        );
        let plan = plan::<T, C>(&dev, key, s, padding)?;
        let (a, b) = (&a, &b);
        let (x, y, w) = (&plan.x, &plan.y, &plan.w);
        let conv = &plan.conv;
        let out = match pass {
            Pass::Forward => {
                let op = ConvForward { conv, x, w, y };
                let len = s.n * s.c_out * s.h * s.w;
                execute(&dev, &Call { op, a, b }, &plan.fwd, timed, len)?
            }
            Pass::Data => {
                let op = ConvBackwardData {
                    conv,
                    dx: x,
                    w,
                    dy: y,
                };
                let len = s.n * s.c_in * s.h * s.w;
                execute(&dev, &Call { op, a, b }, &plan.data, timed, len)?
            }
            Pass::Filter => {
                let op = ConvBackwardFilter {
                    conv,
                    x,
                    dw: w,
                    dy: y,
                };
                let len = s.c_out * s.c_in * s.k * s.k;
                execute(&dev, &Call { op, a, b }, &plan.filter, timed, len)?
            }
        };
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
