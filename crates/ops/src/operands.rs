//! The operands of our custom ops: contiguous values of a CPU storage, the f32/f64 dispatch of
//! a two-operand CPU kernel, and (feature `cuda`) a contiguous view of a CUDA storage. Every op
//! names itself (`what`) in the errors.

use candle_core::{CpuStorage, Layout};

use crate::cpu_conv::Float;

/// Whether our custom ops (and their kernels) run on `device`: always on the CPU, on CUDA in
/// builds with the `cuda` feature.
pub fn has_own_kernels(device: &candle_core::Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// Whether our custom ops run on `t`: on a device with our kernels ([`has_own_kernels`]) and in
/// f32 or f64. Half-precision tensors (bf16 inference, `Model::with_dtype`) take candle's ops.
pub fn own_kernels_for(t: &candle_core::Tensor) -> bool {
    has_own_kernels(t.device())
        && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// `t` in f32 when it is half precision (bf16 or f16), else `t` itself: for the sums that half
/// precision cannot carry (normalisation statistics, softmax denominators).
pub fn widened(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    match t.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => t.to_dtype(candle_core::DType::F32),
        _ => Ok(t.clone()),
    }
}

/// Whether our ops run on `t` by way of f32 ([`via_f32`]): as it is ([`own_kernels_for`]), or
/// half precision widened on the way in and rounded on the way out.
pub fn own_kernels_via_f32(t: &candle_core::Tensor) -> bool {
    own_kernels_for(t)
        || (has_own_kernels(t.device())
            && matches!(
                t.dtype(),
                candle_core::DType::BF16 | candle_core::DType::F16
            ))
}

/// A half-precision CPU operand's values widened to f32 (`None` for other dtypes).
pub fn widened_values(
    s: &CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<Option<Vec<f32>>> {
    Ok(match s {
        CpuStorage::BF16(v) => Some(contiguous(v, l, what)?.iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F16(v) => Some(contiguous(v, l, what)?.iter().map(|x| x.to_f32()).collect()),
        _ => None,
    })
}

/// f32 values rounded to `dtype` (bf16 or f16; f32 otherwise).
pub fn narrowed(v: Vec<f32>, dtype: candle_core::DType) -> CpuStorage {
    match dtype {
        candle_core::DType::BF16 => {
            CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect())
        }
        candle_core::DType::F16 => {
            CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect())
        }
        _ => CpuStorage::F32(v),
    }
}

/// Runs `op` (our f32/f64 op) on `x` widened to f32 when it is half precision, and rounds the
/// result back to `x`'s dtype: our kernels for bf16 and f16 tensors.
pub fn via_f32(
    x: &candle_core::Tensor,
    op: impl FnOnce(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    // (`to_dtype` to the same dtype is the tensor itself.)
    op(&widened(x)?)?.to_dtype(x.dtype())
}

/// The values of a contiguous operand.
pub fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: the operands must be contiguous"),
    }
}

/// A CPU kernel on two operands' values, for f32 and f64 alike.
pub trait BinaryKernel {
    /// The result's values from the two operands' values.
    fn run<T: Float>(&self, a: &[T], b: &[T]) -> Vec<T>;
}

/// Runs `k` on two contiguous CPU operands, both f32 or both f64.
pub fn binary(
    k: &impl BinaryKernel,
    what: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
) -> candle_core::Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(k.run(contiguous(a, l1, what)?, contiguous(b, l2, what)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(k.run(contiguous(a, l1, what)?, contiguous(b, l2, what)?))
        }
        _ => candle_core::bail!("{what}: both operands must be f32 or both f64"),
    })
}

/// A contiguous CUDA operand as a view of `T`s.
#[cfg(feature = "cuda")]
pub fn cuda_view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a candle_core::CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("{what}: the operands must be contiguous");
    }
    Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..))
}
