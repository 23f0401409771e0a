//! The convolution on CUDA through cuDNN, all three passes: `cudnnConvolutionForward`,
//! `...BackwardData` and `...BackwardFilter`, as PyTorch runs them (candle's own conv2d uses cuDNN
//! for the forward pass only, and lets TF32 in even for f32).
//!
//! Each pass is one custom op ([`Pass`]); the forward's backward is the other two. The ops also
//! run on the CPU (with the im2col kernels of [`crate::cpu_conv`]), which is how the wiring of the
//! graph (which gradient goes where, with which shape) is tested on machines without a GPU; on the
//! GPU, `denoise selftest --device cuda` checks the cuDNN results against the CPU's. The cuDNN
//! calls exist only with the `cudnn` feature: without it, [`conv`] on CUDA is an error, and
//! [`crate::layers::Conv2d`] does not call it.
//!
//! Math mode: plain FMA (true f32) unless candle's f32 matrix products may use TF32
//! (`denoise --tf32`), as PyTorch's `torch.backends.cudnn.allow_tf32`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::cpu_conv::{self, ConvShape, Float};
use crate::operands::{binary, BinaryKernel};
use crate::Result;

/// `conv2d(x, w)` with stride 1 and `padding`, as a graph op whose gradients come from
/// [`Pass::Data`] and [`Pass::Filter`]. `x` and `w` are made contiguous.
pub fn conv(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    let k = w.dim(2)?;
    Ok(x.contiguous()?.apply_op2(
        &w.contiguous()?,
        LibConv {
            pass: Pass::Forward,
            padding,
            k,
        },
    )?)
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
        Ok((binary(&k, "conv", (s1, l1), (s2, l2))?, self.out_shape(&s)))
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
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::safe::{
        ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn,
    };
    use candle_core::cuda_backend::cudarc::cudnn::{sys, CudnnDataType};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
    use candle_core::cuda_backend::{CudaDevice, DeviceId};
    use candle_core::{CudaStorage, Error as E, Layout, WithDType};

    use super::{ConvShape, Pass};

    thread_local! {
        /// cuDNN handles are neither `Send` nor `Sync`: one per thread and device.
        static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
        /// The algorithm cuDNN's heuristics chose for each pass and shape (asked once, as
        /// PyTorch does, rather than on every call).
        static FWD: RefCell<HashMap<Key, sys::cudnnConvolutionFwdAlgo_t>> = RefCell::new(HashMap::new());
        static DATA: RefCell<HashMap<Key, sys::cudnnConvolutionBwdDataAlgo_t>> = RefCell::new(HashMap::new());
        static FILTER: RefCell<HashMap<Key, sys::cudnnConvolutionBwdFilterAlgo_t>> = RefCell::new(HashMap::new());
    }

    /// Device, shape `(n, c_in, c_out, h, w, k)`, padding, f64?, TF32 allowed?
    type Key = (DeviceId, [usize; 6], usize, bool, bool);

    fn cached<A: Copy + 'static>(
        table: &'static std::thread::LocalKey<RefCell<HashMap<Key, A>>>,
        key: Key,
        pick: impl FnOnce() -> candle_core::Result<A>,
    ) -> candle_core::Result<A> {
        if let Some(a) = table.with(|t| t.borrow().get(&key).copied()) {
            return Ok(a);
        }
        let a = pick()?;
        table.with(|t| t.borrow_mut().insert(key, a));
        Ok(a)
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
            (candle_core::DType::F32, candle_core::DType::F32) => {
                launch::<f32>(pass, s, padding, s1, l1, s2, l2)
            }
            (candle_core::DType::F64, candle_core::DType::F64) => {
                launch::<f64>(pass, s, padding, s1, l1, s2, l2)
            }
            (a, b) => candle_core::bail!("conv: cuDNN path for f32 or f64, not {a:?} and {b:?}"),
        }
    }

    fn launch<T>(
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
    {
        let dev = s1.device().clone();
        let cudnn = handle(&dev)?;
        let a = crate::operands::cuda_view::<T>(s1, l1, "conv")?;
        let b = crate::operands::cuda_view::<T>(s2, l2, "conv")?;
        let i = |v: usize| v as std::ffi::c_int;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let x_d = cudnn
            .create_4d_tensor::<T>(nchw, [i(s.n), i(s.c_in), i(s.h), i(s.w)])
            .map_err(E::wrap)?;
        let y_d = cudnn
            .create_4d_tensor::<T>(nchw, [i(s.n), i(s.c_out), i(s.h), i(s.w)])
            .map_err(E::wrap)?;
        let w_d = cudnn
            .create_4d_filter::<T>(nchw, [i(s.c_out), i(s.c_in), i(s.k), i(s.k)])
            .map_err(E::wrap)?;
        let p = i(padding);
        let mut conv = cudnn
            .create_conv2d::<T>(
                [p, p],
                [1, 1],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(E::wrap)?;
        // cuDNN's default math lets f32 convolutions run in TF32 on Ampere and later; PyTorch asks
        // for FMA math unless TF32 is allowed, and so do we.
        let tf32 = candle_core::cuda_backend::gemm_reduced_precision_f32();
        let key: Key = (
            dev.id(),
            [s.n, s.c_in, s.c_out, s.h, s.w, s.k],
            padding,
            T::DTYPE == candle_core::DType::F64,
            tf32,
        );
        let math = if tf32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        conv.set_math_type(math).map_err(E::wrap)?;
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        let stream = dev.cuda_stream();
        // Uninitialised buffers: cuDNN writes every output element (beta = 0), and the
        // workspace is scratch.
        let alloc = |len: usize| -> candle_core::Result<CudaSlice<T>> {
            // SAFETY: every element is written by the cuDNN call before anything reads it.
            unsafe { stream.alloc::<T>(len) }.map_err(E::wrap)
        };
        let workspace = |bytes: usize| -> candle_core::Result<CudaSlice<u8>> {
            // SAFETY: scratch space for cuDNN, never read by us.
            unsafe { stream.alloc::<u8>(bytes.max(1)) }.map_err(E::wrap)
        };
        let out = match pass {
            Pass::Forward => {
                let op = ConvForward {
                    conv: &conv,
                    x: &x_d,
                    w: &w_d,
                    y: &y_d,
                };
                let algo = cached(&FWD, key, || op.pick_algorithm().map_err(E::wrap))?;
                let mut ws = workspace(op.get_workspace_size(algo).map_err(E::wrap)?)?;
                let mut y = alloc(s.n * s.c_out * s.h * s.w)?;
                // SAFETY: the descriptors describe `a` (x), `b` (w) and `y`, all contiguous.
                unsafe { op.launch(algo, Some(&mut ws), (one, zero), &a, &b, &mut y) }
                    .map_err(E::wrap)?;
                y
            }
            Pass::Data => {
                let op = ConvBackwardData {
                    conv: &conv,
                    dx: &x_d,
                    w: &w_d,
                    dy: &y_d,
                };
                let algo = cached(&DATA, key, || op.pick_algorithm().map_err(E::wrap))?;
                let mut ws = workspace(op.get_workspace_size(algo).map_err(E::wrap)?)?;
                let mut dx = alloc(s.n * s.c_in * s.h * s.w)?;
                // SAFETY: the descriptors describe `a` (dy), `b` (w) and `dx`, all contiguous.
                unsafe { op.launch(algo, Some(&mut ws), (one, zero), &mut dx, &b, &a) }
                    .map_err(E::wrap)?;
                dx
            }
            Pass::Filter => {
                let op = ConvBackwardFilter {
                    conv: &conv,
                    x: &x_d,
                    dw: &w_d,
                    dy: &y_d,
                };
                let algo = cached(&FILTER, key, || op.pick_algorithm().map_err(E::wrap))?;
                let mut ws = workspace(op.get_workspace_size(algo).map_err(E::wrap)?)?;
                let mut dw = alloc(s.c_out * s.c_in * s.k * s.k)?;
                // SAFETY: the descriptors describe `a` (x), `b` (dy) and `dw`, all contiguous.
                unsafe { op.launch(algo, Some(&mut ws), (one, zero), &a, &mut dw, &b) }
                    .map_err(E::wrap)?;
                dw
            }
        };
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
