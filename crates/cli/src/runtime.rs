//! Where and how the network runs: the `--device` and `--dtype` flags and the self-ensemble.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::ValueEnum;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DeviceArg {
    /// The CPU, on all its cores.
    Cpu,
    /// The first NVIDIA GPU (a build with `--features cuda`).
    Cuda,
    /// The first NVIDIA GPU when this build has CUDA and one answers, else the CPU.
    Auto,
}

/// `--ensemble`: one of [`denoise_model::ensemble::SIZES`].
pub fn parse_ensemble(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if denoise_model::ensemble::SIZES.contains(&n) => Ok(n),
        _ => Err(format!("expected 1, 2, 4 or 8 orientations, got {s:?}")),
    }
}

/// ", self-ensemble of N" for N > 1 orientations, for the lines that name the model.
pub fn ensemble_note(n: usize) -> String {
    if n > 1 {
        format!(", self-ensemble of {n}")
    } else {
        String::new()
    }
}

pub fn pick_device(d: DeviceArg) -> Result<Device> {
    match d {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this build of denoise has no CUDA support; rebuild with `--features cuda` (see docs/gpu.md)");
            }
            new_cuda().context("--device cuda: no usable CUDA GPU")
        }
        DeviceArg::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                if let Ok(d) = new_cuda() {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// The first CUDA GPU, set up for many small allocations (what candle's ops make):
/// - without cudarc's per-buffer event tracking: candle runs everything on one stream per
///   thread, where cudarc never waits on those events, but with tracking on it still creates
///   and destroys two CUDA events for every buffer;
/// - with the memory pool behind `cuMemAllocAsync` keeping what it has (by default it hands
///   its memory back to the driver at every synchronisation, and the next step maps it again),
///   as PyTorch's caching allocator does.
fn new_cuda() -> candle_core::Result<Device> {
    let device = Device::new_cuda(0)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: no buffer is shared between streams: every op runs on the thread's stream.
        unsafe { cuda.disable_event_tracking() };
        let stream = cuda.cuda_stream();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut keep_all = u64::MAX;
        // SAFETY: plain driver calls on a valid device; the attribute takes a u64.
        unsafe {
            let got = sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device());
            if got == sys::CUresult::CUDA_SUCCESS {
                let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
                let set =
                    sys::cuMemPoolSetAttribute(pool, attr, (&mut keep_all as *mut u64).cast());
                if set != sys::CUresult::CUDA_SUCCESS {
                    tracing::warn!("could not keep the CUDA memory pool's memory ({set:?})");
                }
            }
        }
    }
    Ok(device)
}
