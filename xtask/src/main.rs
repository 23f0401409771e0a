//! `cargo xtask`: the project's tasks, as Rust (see `.cargo/config.toml`).
//!
//! - `cargo xtask train|eval|generate|export|info|selftest [ARGS]`: builds the `denoise` binary in release mode and
//!   runs the subcommand with ARGS (`--help` for each).
//! - `cargo xtask ci`: what CI runs: format check, clippy, tests.
//! - `cargo xtask deps`: the dependency rules of `docs/ARCHITECTURE.md` against `cargo metadata`.
//! - `cargo xtask bench`: throughput, optionally side by side with PyTorch (see `bench.rs`).
//! - `cargo xtask gpu-bundle`: a CUDA build and a folder to run on a GPU machine (see `gpu.rs`).
//! - `cargo xtask gpu-dry-run`: that folder's `gpu-check.sh` run on the CPU, to check the script.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod bench;
mod deps;
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

/// `cargo xtask TASK --help` for the tasks that are xtask's own.
fn task_help(task: &str) -> &'static str {
    match task {
        "deps" => {
            "usage: cargo xtask deps

Checks the \"**Never depends on**:\" lines of docs/ARCHITECTURE.md against `cargo metadata`: no
workspace crate depends on a crate its section forbids, directly or through others, and every
library crate of the workspace has a section with such a line. Also run by `cargo test`."
        }
        "ci" => {
            "usage: cargo xtask ci

What CI runs: `cargo fmt --all --check`, `cargo clippy --workspace --all-targets -- -D warnings`
and `cargo test --workspace`, stopping at the first that fails."
        }
        "bench" => {
            "usage: cargo xtask bench [--arch A]... [--repeats N] [--steps N] [--compare-torch]
                         [--python PY] [--json FILE]

Training (batch 64) and inference (batch 256) images/s of `denoise` on this machine's CPU
(release build), median of the repeats, and the peak memory.

  --arch A          seed-unet or cond-unet; repeat for both (default: both)
  --repeats N       rounds per measurement (default 5)
  --steps N         training steps or inference batches per round (default 3)
  --compare-torch   time the same network in PyTorch eager too, alternating with ours, on the
                    same number of threads, and print the ratios
  --python PY       the Python with torch for --compare-torch (default $DENOISE_PYTHON or python3)
  --json FILE       also write every number to FILE"
        }
        "gpu-bundle" => {
            "usage: cargo xtask gpu-bundle [--data DIR] [--skip-build]

Builds `denoise` with CUDA for sm_90 (an H100/H200) on this machine, which needs no GPU: CUDA 13.0
comes from PyPI wheels into ~/.cache/denoise/cuda-13.0 (once; $DENOISE_CUDA_CACHE moves it).
Lays out target/gpu-bundle/ (under 64 MiB): the binaries, gpu-check.sh, the PyTorch twin and a
few thousand images. On the GPU machine: `cd gpu-bundle && bash gpu-check.sh` (docs/gpu.md).

  --data DIR      the image folder with train/ and test/ to take the shipped images from
                  (default ../data/cifar10-jpeg)
  --skip-build    lay out the folder from the binaries already built"
        }
        _ => {
            "usage: cargo xtask gpu-dry-run [--data DIR] [--python PATH]

Runs gpu-check.sh end to end on the CPU (the CPU build standing in for the CUDA ones, a few
steps of each part) to check the script before a GPU's minutes go into it; fails if any step
failed.

  --data DIR      as for gpu-bundle (default ../data/cifar10-jpeg)
  --python PATH   a Python with torch for the PyTorch parts (default: python3 on the PATH)"
        }
    }
}

const USAGE: &str = "usage: cargo xtask <train|eval|generate|export|info|selftest|estimate> [ARGS]
                                                    (release build of `denoise`, then the subcommand)
       cargo xtask ci                               (fmt --check, clippy -D warnings, tests)
       cargo xtask deps                             (the dependency rules of docs/ARCHITECTURE.md)
       cargo xtask bench [--arch A] [--repeats N] [--steps N] [--compare-torch] [--python PY] [--json FILE]
                                                    (training and inference images/s, against PyTorch)
       cargo xtask gpu-bundle [--data DIR] [--skip-build]
                                                    (CUDA build for sm_90 + target/gpu-bundle/ with gpu-check.sh)
       cargo xtask gpu-dry-run [--data DIR] [--python PATH]
                                                    (gpu-check.sh end to end on the CPU: checks the script)
       cargo xtask TASK --help                      (the options of each)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some(
            sub @ ("train" | "eval" | "generate" | "export" | "info" | "selftest" | "estimate"),
        ) => denoise(sub, &args[1..]),
        Some(task @ ("ci" | "deps" | "bench" | "gpu-bundle" | "gpu-dry-run"))
            if args[1..].iter().any(|a| a == "-h" || a == "--help") =>
        {
            println!("{}", task_help(task));
            Ok(ExitCode::SUCCESS)
        }
        Some("ci") if args.len() > 1 => Err(anyhow::anyhow!(
            "ci: unexpected argument {} (it takes none)",
            args[1]
        )),
        Some("ci") => ci().map(|_| ExitCode::SUCCESS),
        Some("deps") => deps::check(&root()).map(|_| ExitCode::SUCCESS),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz targets' bodies (`fuzz/`, a workspace of its own so that libFuzzer stays out
    /// of the main build) build on stable and run on their seeds; `cargo fuzz run NAME` on
    /// nightly runs the same bodies under libFuzzer (`docs/reliability.md`).
    #[test]
    fn fuzz_bodies_build_and_run_on_their_seeds() {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target"));
        let out = cargo()
            .env("CARGO_TARGET_DIR", target)
            .args([
                "test",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--no-default-features",
                "--quiet",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each of xtask's own tasks has its help, and every option its parser accepts is in it.
    #[test]
    fn every_task_documents_its_options() {
        for (task, options) in [
            ("ci", &[][..]),
            ("deps", &[][..]),
            (
                "bench",
                &[
                    "--arch",
                    "--repeats",
                    "--steps",
                    "--compare-torch",
                    "--python",
                    "--json",
                ][..],
            ),
            ("gpu-bundle", &["--data", "--skip-build"][..]),
            ("gpu-dry-run", &["--data", "--python"][..]),
        ] {
            let help = task_help(task);
            assert!(
                help.starts_with(&format!("usage: cargo xtask {task}")),
                "{task}"
            );
            for o in options {
                assert!(help.contains(o), "{task} help lacks {o}");
                assert!(USAGE.contains(o), "USAGE lacks {task} {o}");
            }
        }
    }
}
