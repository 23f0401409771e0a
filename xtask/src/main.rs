//! `cargo xtask`: the project's tasks, as Rust (see `.cargo/config.toml`).
//!
//! - `cargo xtask train|eval|generate|export|info|selftest [ARGS]`: builds the `denoise` binary in release mode and
//!   runs the subcommand with ARGS (`--help` for each).
//! - `cargo xtask ci`: what CI runs: format check, clippy, tests.
//! - `cargo xtask bench`: throughput, optionally side by side with PyTorch (see `bench.rs`).
//! - `cargo xtask gpu-bundle`: a CUDA build and a folder to run on a GPU machine (see `gpu.rs`).
//! - `cargo xtask gpu-dry-run`: that folder's `gpu-check.sh` run on the CPU, to check the script.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod bench;
mod gpu;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

/// Builds `denoise` in release mode (with `--features` from `DENOISE_FEATURES`); its path.
fn build_denoise() -> Result<PathBuf> {
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "denoise-cli",
        "--bin",
        "denoise",
    ]);
    if let Ok(f) = std::env::var("DENOISE_FEATURES") {
        if !f.is_empty() {
            build.args(["--features", &f]);
        }
    }
    run(build)?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    Ok(target
        .join("release")
        .join(format!("denoise{}", std::env::consts::EXE_SUFFIX)))
}

/// Builds `denoise` and runs one of its subcommands.
fn denoise(sub: &str, args: &[String]) -> Result<ExitCode> {
    let bin = build_denoise()?;
    let status = Command::new(&bin)
        .arg(sub)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn ci() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;
    let mut test = cargo();
    test.args(["test", "--workspace"]);
    run(test)
}

const USAGE: &str = "usage: cargo xtask <train|eval|generate|export|info|selftest> [ARGS]
                                                    (release build of `denoise`, then the subcommand)
       cargo xtask ci                               (fmt --check, clippy -D warnings, tests)
       cargo xtask bench [--arch A] [--repeats N] [--steps N] [--compare-torch] [--json FILE]
                                                    (training and inference images/s, against PyTorch)
       cargo xtask gpu-bundle [--data DIR] [--skip-build]
                                                    (CUDA build for sm_90 + target/gpu-bundle/ with gpu-check.sh)
       cargo xtask gpu-dry-run [--data DIR] [--python PATH]
                                                    (gpu-check.sh end to end on the CPU: checks the script)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(sub @ ("train" | "eval" | "generate" | "export" | "info" | "selftest")) => {
            denoise(sub, &args[1..])
        }
        Some("ci") => ci().map(|_| ExitCode::SUCCESS),
        Some("bench") => build_denoise()
            .and_then(|bin| bench::bench(&root(), &bin, &args[1..]))
            .map(|_| ExitCode::SUCCESS),
        Some("gpu-bundle") => gpu::gpu_bundle(&root(), &args[1..]).map(|_| ExitCode::SUCCESS),
        Some("gpu-dry-run") => gpu::gpu_dry_run(&root(), &args[1..]).map(|_| ExitCode::SUCCESS),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
