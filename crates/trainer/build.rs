//! With the `cuda` feature: compiles `kernels/adam.cu` to PTX (into `OUT_DIR`) with nvcc, for
//! `CUDA_COMPUTE_CAP` (default 75, the oldest architecture CUDA 13 supports; the driver
//! compiles PTX for newer cards when it loads it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels/adam.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("adam.ptx");
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
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            &format!("-arch=compute_{cap}"),
            "kernels/adam.cu",
            "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{nvcc} --ptx kernels/adam.cu failed ({s})"),
        Err(e) => panic!(
            "could not run {nvcc} ({e}): the cuda feature needs nvcc (set NVCC or CUDA_HOME)"
        ),
    }
}
