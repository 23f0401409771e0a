//! With the `cuda` feature: compiles every `kernels/*.cu` to PTX (into `OUT_DIR`) with nvcc,
//! for `CUDA_COMPUTE_CAP` (default 75, the oldest architecture CUDA 13 supports; the driver
//! compiles PTX for newer cards when it loads it). `src/cuda_kernels.rs` embeds them.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["adam", "bias_act", "group_norm", "max_pool"];

fn main() {
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    for v in ["CUDA_COMPUTE_CAP", "NVCC", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").ok().unwrap_or_else(|| {
        std::env::var("CUDA_HOME")
            .map(|h| PathBuf::from(h).join("bin/nvcc"))
            .ok()
            .filter(|p| p.exists())
            .map_or_else(|| "nvcc".to_string(), |p| p.display().to_string())
    });
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "75".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    for k in KERNELS {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}")])
            .arg(format!("kernels/{k}.cu"))
            .arg("-o")
            .arg(out.join(format!("{k}.ptx")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{nvcc} --ptx kernels/{k}.cu failed ({s})"),
            Err(e) => panic!(
                "could not run {nvcc} ({e}): the cuda feature needs nvcc (set NVCC or CUDA_HOME)"
            ),
        }
    }
}
