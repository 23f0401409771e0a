//! `denoise`: train image denoisers, evaluate them, denoise images, generate new ones.
//!
//! The command-line edge of the workspace. Each subcommand is a module (`train`, `eval`,
//! `generate`, `estimate`, `info`, `export`, `bench`, `selftest`) with its flags and a `run`;
//! the flags and helpers they share are in `runtime` (device, precision, self-ensemble),
//! `data_args` (data and noise), `output` (outputs that never replace an input, JSON, progress
//! bars, error lines), `images` (image files in their own layout) and `models` (the shipped
//! models). `main` only parses, dispatches, and maps every failure to one message and a
//! non-zero exit code. All the work is done by the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod data_args;
mod estimate;
mod eval;
mod export;
mod generate;
mod images;
mod info;
mod models;
mod output;
mod runtime;
mod selftest;
mod train;

#[derive(Parser)]
#[command(
    name = "denoise",
    version,
    about = "Train image denoisers on CIFAR-10 or your own images, evaluate them, denoise images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// On CUDA, let f32 matrix products use TF32 tensor cores (about 1e-3 relative error, as
    /// PyTorch's `allow_tf32`); no effect on the CPU.
    #[arg(long, global = true)]
    tf32: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Train a denoiser (downloads CIFAR-10 into the cache folder when no --data is given).
    Train(Box<train::TrainArgs>),
    /// PSNR and SSIM of a model on the test images at several noise levels.
    Eval(eval::EvalArgs),
    /// Denoise an image or a folder of images (--image), or generate new images from noise
    /// with the diffusion sampler (--random).
    Generate(generate::GenerateArgs),
    /// Write a model-only checkpoint for shipping: the averaged weights, optionally as f16,
    /// with the training recipe and an eval table in its metadata.
    Export(export::ExportArgs),
    /// Training and inference throughput on synthetic batches (images/s).
    Bench(bench::BenchArgs),
    /// Compare a device's forward, loss and gradients with the CPU's on a small network.
    Selftest(selftest::SelftestArgs),
    /// What a checkpoint holds: network, tensors, training progress and recipe, whether it can
    /// be resumed, and its stored eval table.
    Info(info::InfoArgs),
    /// The noise level of an image or of each image in a folder, as `generate` estimates it
    /// (no model needed).
    Estimate(estimate::EstimateArgs),
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`denoise info X | head`) ends the process
    // quietly, as for other command-line tools, instead of a panic in `println!`. Every file is
    // written atomically, so nothing is left half-written. A file-size limit (`ulimit -f`) makes
    // a write fail with an error that names the file, instead of killing the process.
    #[cfg(unix)]
    // SAFETY: setting the dispositions of two signals, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    candle_core::cuda::set_gemm_reduced_precision_f32(cli.tf32);
    // Big buffers kept in the heap between passes: faster, at the same peak memory.
    denoise_trainer::bench::tune_allocator();
    let filter = tracing_subscriber::EnvFilter::try_from_env("DENOISE_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Export(a) => export::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Info(a) => info::run(a),
        Command::Estimate(a) => estimate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::output::report;

    /// An error that prints its source in its own message, as ours do.
    #[derive(Debug)]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn report_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "File exists");
        let e = anyhow::Error::new(Quoting {
            path: "runs/x",
            source: io,
        })
        .context("--out runs/x");
        assert_eq!(report(&e), "--out runs/x: runs/x: File exists");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(report(&plain), "outer: inner");
    }
}
