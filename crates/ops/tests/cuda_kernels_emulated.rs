//! Our CUDA kernels (`kernels/*.cu`: Adam, bias + ReLU, GroupNorm + SiLU, max pooling) run on the CPU under a
//! small CUDA emulation (`kernels/emulation/`: a thread per CUDA thread, barriers for
//! `__syncthreads`), against plain double-precision references, so that their indexing,
//! reductions and arithmetic are checked on machines without a GPU. On a GPU, `denoise selftest`
//! checks the compiled kernels against the CPU.

use std::path::Path;
use std::process::Command;

#[test]
fn cuda_kernels_match_references_under_emulation() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("harness");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emulation/harness.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("could not run {cxx}: this test needs a C++20 compiler ({e})"));
    assert!(
        built.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    assert!(
        run.status.success(),
        "kernels differ from their references:\n{report}"
    );
    assert!(report.contains("0 failed"));
}
