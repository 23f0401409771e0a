//! Our CUDA kernels (`kernels/*.cu`), compiled to PTX by `build.rs` with the `cuda` feature, and
//! how they are launched. Each has a CPU twin with the same arithmetic, tested here against
//! candle's ops; on a GPU, `denoise selftest` compares the two.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig};
use candle_core::cuda_backend::CudaDevice;
use candle_core::DType;

/// Adam's moment and parameter updates (`denoise_trainer`'s optimizer).
pub const ADAM: &str = include_str!(concat!(env!("OUT_DIR"), "/adam.ptx"));
/// Bias and ReLU after a convolution, forward and backward ([`crate::bias_act`]).
pub const BIAS_ACT: &str = include_str!(concat!(env!("OUT_DIR"), "/bias_act.ptx"));
/// GroupNorm (+ SiLU), forward and backward ([`crate::norm`]).
pub const GROUP_NORM: &str = include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx"));
/// 2x2 max pooling, forward and backward ([`crate::pool::max_pool2x2`]).
pub const MAX_POOL: &str = include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx"));

/// `{name}_float` or `{name}_double` from the module `ptx`, for `dtype`; launch it with
/// `dev.cuda_stream().launch_builder(&f)`.
pub fn function(
    dev: &CudaDevice,
    module: &str,
    ptx: &'static str,
    name: &str,
    dtype: DType,
) -> candle_core::Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "float",
        DType::F64 => "double",
        dt => candle_core::bail!("{name}: CUDA kernels for f32 and f64, not {dt:?}"),
    };
    Ok(dev
        .get_or_load_custom_func(&format!("{name}_{suffix}"), module, ptx)?
        .into_cuda_function())
}

/// A grid-stride launch over `n` elements: 256 threads a block, at most 65,535 blocks.
pub fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
