//! Fast candle ops with correct gradients: convolutions, normalisation, pooling, resampling.
//!
//! What a user of candle 0.11 gains by importing `denoise-ops`: a stride-1 "same" convolution
//! with its bias and ReLU fused into one op ([`conv::conv2d`]) whose CPU forward and backward
//! run our own kernels (Winograd F(2x2, 3x3) for 3x3 layers, [`winograd`]; im2col + gemm for the
//! rest, [`cpu_conv`]; AVX2 / AVX-512 where the CPU has them), several times faster than
//! candle's `conv2d` and its backward, which sends the input gradient through a slow direct
//! `conv_transpose2d` loop; GroupNorm + SiLU as one op ([`norm::group_norm`]) instead of some
//! thirty element-wise passes; 2x2 max pooling whose backward routes the whole gradient to the
//! maximum ([`pool::max_pool2x2`]; candle's passes a quarter of it); bias + activation
//! ([`bias_act`]) and 2x average pooling / nearest upsampling ([`resample`]) with one-pass
//! backwards. With the `cuda` feature the same ops run our CUDA kernels (`kernels/*.cu`,
//! `cuda_kernels`), with `cudnn` the convolutions go through cuDNN for all three passes
//! ([`cudnn_conv`]). Every op is tested against the same function built from candle's own ops,
//! forward and every gradient, in f64 where possible. It depends on candle only: it knows
//! nothing of networks, checkpoints, datasets or training.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use denoise_ops::conv::{conv2d, reference_conv};
//!
//! let dev = Device::Cpu;
//! // A 3x3 layer, 8 -> 16 channels, on two 12x12 images, in f64 to compare tightly.
//! let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 8, 12, 12), &dev)?)?;
//! let w = Var::from_tensor(&Tensor::randn(0f64, 0.2, (16, 8, 3, 3), &dev)?)?;
//! let b = Var::from_tensor(&Tensor::randn(0f64, 0.1, 16, &dev)?)?;
//!
//! // relu(conv2d(x, w) + b), one op forward and backward.
//! let y = conv2d(&x, &w, &b, 1, true)?;
//! let grads = y.sqr()?.sum_all()?.backward()?;
//!
//! // The same layer from candle's own ops and autograd.
//! let r = reference_conv(&x, &w, &b, 1, true)?;
//! let want = r.sqr()?.sum_all()?.backward()?;
//!
//! let diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
//!     (a - b)?.abs()?.max_all()?.to_scalar::<f64>()
//! };
//! assert!(diff(&y, &r)? < 1e-10);
//! for v in [&x, &w, &b] {
//!     assert!(diff(grads.get(v).unwrap(), want.get(v).unwrap())? < 1e-9);
//! }
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bias_act;
pub mod conv;
pub mod cpu_conv;
#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod cudnn_conv;
pub mod norm;
pub mod operands;
pub mod pool;
pub mod resample;
mod simd;
pub mod winograd;
mod winograd_tiles;

/// Fixed pseudo-random values in `[-1, 1)` from `seed`, for the unit tests' inputs.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f64> {
    (0..len as u64)
        .map(|i| {
            let v = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
            v as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}
