//! `denoise`: train image denoisers, evaluate them, denoise images, generate new ones.
//!
//! The command-line edge of the workspace: it parses flags, picks the device, finds or
//! downloads the data, reads and writes image files in their own layout ([`images`]), finds
//! the shipped model, and maps every failure to a message and a non-zero exit code in one
//! place (`main`). All the work is done by the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use denoise_data::noise::NoiseKind;
use denoise_data::{download, LoadOptions, Splits};
use denoise_model::Model;
use denoise_trainer::{eval, TrainConfig, TrainOptions};

mod images;
mod info;
mod models;

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
    Train(Box<TrainArgs>),
    /// PSNR and SSIM of a model on the test images at several noise levels.
    Eval(EvalArgs),
    /// Denoise an image or a folder of images (--image), or generate new images from noise
    /// with the diffusion sampler (--random).
    Generate(GenerateArgs),
    /// Write a model-only checkpoint for shipping: the averaged weights, optionally as f16,
    /// with the training recipe and an eval table in its metadata.
    Export(ExportArgs),
    /// Training and inference throughput on synthetic batches (images/s).
    Bench(BenchArgs),
    /// Compare a device's forward, loss and gradients with the CPU's on a small network.
    Selftest(SelftestArgs),
    /// What a checkpoint holds: network, tensors, training progress and recipe, whether it can
    /// be resumed, and its stored eval table.
    Info(InfoArgs),
    /// The noise level of an image or of each image in a folder, as `generate` estimates it
    /// (no model needed).
    Estimate(EstimateArgs),
}

#[derive(Args)]
struct EstimateArgs {
    /// An image (PNG, JPEG, TIFF, WebP or BMP), or a folder of them.
    #[arg(long)]
    image: PathBuf,
    /// Also write the estimates as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    /// A checkpoint written by `train` (best.safetensors, last.safetensors) or `export`, or a
    /// training folder (its last.safetensors).
    checkpoint: PathBuf,
    /// Print everything as JSON instead (the training state and eval table in full).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// The network: seed-unet or cond-unet.
    #[arg(long, default_value = "seed-unet")]
    arch: String,
    /// Network width (default: the architecture's).
    #[arg(long)]
    width: Option<usize>,
    /// Images per training step (forward, loss, backward, Adam).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Images per inference batch.
    #[arg(long, default_value_t = 256)]
    infer_batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Steps per timed round.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Timed rounds (min / median / max are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// The network's arithmetic: training in mixed precision (f32 weights), inference with the
    /// weights rounded to it.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    /// A training checkpoint (best.safetensors or last.safetensors, or a training folder for
    /// its best).
    #[arg(long)]
    model: PathBuf,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as f16 (half the size).
    #[arg(long)]
    f16: bool,
    /// An `eval --json` file to store in the metadata (`denoise.eval`).
    #[arg(long)]
    eval_json: Option<PathBuf>,
}

#[derive(Args)]
struct SelftestArgs {
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Largest relative error accepted.
    #[arg(long, default_value_t = 1e-3)]
    tol: f64,
    /// Write the checks as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum DeviceArg {
    /// The CPU, on all its cores.
    Cpu,
    /// The first NVIDIA GPU (a build with `--features cuda`).
    Cuda,
    /// The first NVIDIA GPU when this build has CUDA and one answers, else the CPU.
    Auto,
}

#[derive(Args)]
struct DataArgs {
    /// A folder with the CIFAR-10 binary files (or `cifar-10-batches-bin/` inside), or a folder
    /// of images (PNG, JPEG, TIFF, WebP, BMP; `train/` and `test/` with class folders, or any
    /// tree). Default: the cache folder, downloaded into when empty.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Center-crop every image to the smallest height and width among them, instead of refusing
    /// images whose size is not the first one's.
    #[arg(long)]
    crop: bool,
    /// Cut every image (of any size, at least N x N) into N x N patches and use those: to
    /// train and evaluate on photos of different sizes. Training takes as many crops per epoch
    /// as a grid would give, at new random positions and orientations every epoch; validation
    /// and test patches lie on a fixed grid. `--patch` alone: 64, what the shipped photo model
    /// was trained on.
    #[arg(long, value_name = "N", conflicts_with = "crop", num_args = 0..=1, default_missing_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    patch: Option<u32>,
    /// With --patch: train on the fixed grid of patches too, the same ones every epoch.
    #[arg(long, requires = "patch")]
    grid_patches: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output folder: best.safetensors, last.safetensors, metrics.jsonl, steps.csv, loss.png.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// A TOML or JSON file with any of the training keys; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the configuration these flags give, as a TOML file for --config, and exit.
    #[arg(long)]
    print_config: bool,
    /// Continue the run in --out from its last.safetensors.
    #[arg(long)]
    resume: bool,
    /// Start a new run in an --out that holds one, replacing its checkpoints (without it, or
    /// --resume, such a folder is refused).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Network architecture: cond-unet (noise-level conditioned, the default) or seed-unet
    /// (the original blind U-Net).
    #[arg(long)]
    arch: Option<String>,
    /// Width of the network's first level (default 64).
    #[arg(long)]
    width: Option<usize>,
    /// cond-unet: width multiple of each level, comma-separated (default 1,2,2).
    #[arg(long, value_delimiter = ',')]
    mults: Option<Vec<usize>>,
    /// cond-unet: residual blocks per level (default 1).
    #[arg(long)]
    blocks: Option<usize>,
    /// cond-unet: self-attention at the lowest resolution.
    #[arg(long)]
    attention: bool,
    /// cond-unet: dropout in the residual blocks (default 0.1).
    #[arg(long)]
    dropout: Option<f64>,
    /// Loss: edm (sigma-weighted MSE, cond-unet's default) or l1-ssim (the original's).
    #[arg(long)]
    loss: Option<String>,
    /// Share of training noise levels drawn from EDM's log-normal instead of uniformly from
    /// [sigma-min, sigma-max] (default 1 for cond-unet, 0 for seed-unet).
    #[arg(long)]
    lognormal_fraction: Option<f64>,
    /// Half-life of the weights' moving average in images (0: none; default 500000 for cond-unet).
    #[arg(long)]
    ema_halflife: Option<f64>,
    /// Stop after this many optimizer steps in total (counting earlier runs when resuming).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Stop after this many seconds of training in this run.
    #[arg(long)]
    time_budget: Option<f64>,
    /// Passes over the training images at most (default 30).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per optimizer step (default 64).
    #[arg(long)]
    batch: Option<usize>,
    /// Adam's learning rate before StepLR's decay (default 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Adam's weight decay, added to the gradient as in PyTorch's Adam (default 1e-4).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// StepLR period in epochs (0: a constant rate; default 10).
    #[arg(long)]
    lr_step: Option<usize>,
    /// StepLR factor (default 0.7).
    #[arg(long)]
    lr_gamma: Option<f64>,
    /// Early-stopping patience in validations (0: off; default 3).
    #[arg(long)]
    patience: Option<usize>,
    /// Weight of (1 - SSIM) in the loss; L1 gets the rest.
    #[arg(long)]
    ssim_weight: Option<f64>,
    /// Lowest training noise level, in 0..255 units.
    #[arg(long)]
    sigma_min: Option<f64>,
    /// Highest training noise level, in 0..255 units.
    #[arg(long)]
    sigma_max: Option<f64>,
    /// Turn off random horizontal flips.
    #[arg(long)]
    no_flip: bool,
    /// Seed of the weights' initialisation, the batches, the noise and dropout (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Also validate every N steps (0 or none: only at the end of each epoch).
    #[arg(long)]
    val_every: Option<u64>,
    /// Validate on at most N images.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Log a line every N steps (default 10).
    #[arg(long)]
    log_every: Option<u64>,
    /// The training steps' arithmetic: f32, or bf16 (mixed precision: f32 weights, optimizer
    /// and loss; the network computes in bf16, for GPU tensor cores). Validation stays f32.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Start a new run from the weights of this checkpoint (a run's best.safetensors or a model
    /// in models/) with a fresh optimizer: fine-tuning. The network is the checkpoint's.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    #[command(flatten)]
    corruption: NoiseArgs,
}

/// How clean images are made noisy, in training and in evaluation.
#[derive(Args)]
struct NoiseArgs {
    /// The noise: gaussian (the same sigma everywhere, the default), or poisson-gaussian
    /// (signal-dependent, as a camera's: variance sigma^2 ((1 - r) + 2 r x) at a pixel of value
    /// x in [0, 1], the shot-noise share r drawn in [0, 1] for each image, so sigma is the level
    /// at mid grey).
    #[arg(long, value_enum)]
    noise: Option<NoiseArg>,
    /// JPEG-compress each noisy image (clipped to 8 bits) at a quality drawn from LOW,HIGH
    /// (1-100; the same number twice for one quality).
    #[arg(long, value_name = "LOW,HIGH", value_parser = quality_range)]
    jpeg_quality_range: Option<[u8; 2]>,
}

/// `LOW,HIGH`: two JPEG qualities.
fn quality_range(text: &str) -> std::result::Result<[u8; 2], String> {
    let parts: Vec<&str> = text.split(',').collect();
    match parts.as_slice() {
        [lo, hi] => match (lo.trim().parse::<u8>(), hi.trim().parse::<u8>()) {
            (Ok(lo), Ok(hi)) => Ok([lo, hi]),
            _ => Err(format!(
                "`{text}`: expected two qualities from 1 to 100, such as 30,95"
            )),
        },
        _ => Err(format!(
            "`{text}`: expected LOW,HIGH, such as 30,95 (or 75,75 for one quality)"
        )),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum NoiseArg {
    Gaussian,
    PoissonGaussian,
}

impl NoiseArgs {
    /// The noise kind the flag names, if given.
    fn kind(&self) -> Option<NoiseKind> {
        self.noise.map(|n| match n {
            NoiseArg::Gaussian => NoiseKind::Gaussian,
            NoiseArg::PoissonGaussian => NoiseKind::PoissonGaussian,
        })
    }

    /// The corruption these flags give (Gaussian noise, no JPEG, by default).
    fn corruption(&self) -> Result<denoise_data::noise::Corruption> {
        let c = denoise_data::noise::Corruption {
            kind: self.kind().unwrap_or_default(),
            jpeg: self.jpeg_quality_range.map(|[lo, hi]| (lo, hi)),
        };
        c.check()
            .map_err(|e| anyhow::anyhow!("--jpeg-quality-range: {e}"))?;
        Ok(c)
    }

    /// Sets the noise and the JPEG range these flags give in a recipe's `noise` and `jpeg`.
    fn apply(&self, noise: &mut String, jpeg: &mut Option<[u8; 2]>) {
        if let Some(kind) = self.kind() {
            *noise = kind.name().into();
        }
        if let Some(r) = self.jpeg_quality_range {
            *jpeg = Some(r);
        }
    }
}

#[derive(Args)]
struct EvalArgs {
    /// The checkpoint to evaluate (best.safetensors or last.safetensors, or a training folder
    /// for its best; default: the shipped model in models/, or $DENOISE_MODEL).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Noise levels in 0..255 units, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "15,25,50")]
    sigmas: Vec<f64>,
    /// Evaluate about N test images: the first N/classes of each class, at least one (file
    /// order; N/10 of each of CIFAR-10's ten classes, so --limit 4 takes 10).
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per batch through the network (memory grows with it; the noise drawn and the
    /// scores stay the same, to rounding).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Also evaluate with each image's noise level estimated from the noisy image.
    #[arg(long)]
    estimate_sigma: bool,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    corruption: NoiseArgs,
    /// Write a PNG grid of noisy / denoised / clean images.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Draw PSNR against the noise level as a PNG (noisy, denoised, and denoised with the
    /// estimated level under --estimate-sigma); most telling with many --sigmas.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The network's precision: f32, or bf16 / f16 (half the memory traffic: for GPUs; the CPU
    /// emulates them, a little slower). Normalisation, softmax and the skip path stay in f32.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

#[derive(Args)]
struct GenerateArgs {
    /// A noisy image (PNG, JPEG, TIFF, WebP or BMP; 8- or 16-bit; gray, RGB or with alpha; any
    /// size), or a folder of them.
    #[arg(long, conflicts_with = "random", required_unless_present = "random")]
    image: Option<PathBuf>,
    /// The image's noise standard deviation in 0..255 units of the full range, whatever the
    /// bit depth (default: estimated from the image and printed).
    #[arg(long)]
    sigma: Option<f64>,
    /// Generate new images from pure noise with the diffusion sampler.
    #[arg(long)]
    random: bool,
    /// --random: how many images.
    #[arg(long, default_value_t = 16)]
    count: usize,
    /// --random: sampler steps (Heun: 2 steps - 1 network evaluations).
    #[arg(long, default_value_t = 18)]
    steps: usize,
    /// --random: heun (second order, EDM's default) or euler.
    #[arg(long, default_value = "heun")]
    sampler: String,
    /// --random: seed of the initial noise (same seed, same images).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// --random: image side (default: 32, the training images').
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// The model checkpoint, or a training folder for its best.safetensors (default: the
    /// shipped model in models/, or $DENOISE_MODEL).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output: an image file (.png, .jpg, .tif, .webp (lossless) or .bmp), a folder for a
    /// folder of images, or the grid PNG for --random (the single images go into a folder named
    /// after it).
    #[arg(long)]
    out: PathBuf,
    /// Images with more pixels than this are denoised in overlapping tiles of at most 256x256.
    #[arg(long, default_value_t = 512 * 512)]
    whole_limit: usize,
    /// Quality of .jpg outputs, 1 to 100 (the image crate's default, 75, adds visible
    /// artifacts to a cleaned image).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// The network's precision: f32, or bf16 / f16 (half the memory traffic: for GPUs; the CPU
    /// emulates them, a little slower). Normalisation, softmax and the skip path stay in f32.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

fn pick_device(d: DeviceArg) -> Result<Device> {
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

/// How to read `--data` for a network whose image sides are multiples of `multiple`.
fn data_options(args: &DataArgs, multiple: usize) -> LoadOptions {
    LoadOptions {
        crop: args.crop,
        size: None,
        multiple,
        patch: args.patch.map(|p| p as usize),
        random_crops: args.patch.is_some() && !args.grid_patches,
    }
}

/// `--data`, or the cache folder with CIFAR-10 downloaded into it.
fn data_path(args: &DataArgs, progress: bool) -> Result<PathBuf> {
    Ok(match &args.data {
        Some(p) => p.clone(),
        None => {
            let dir = denoise_data::default_data_dir();
            tracing::info!("no --data: using {}", dir.display());
            download::ensure_cifar10(&dir, progress)?
        }
    })
}

fn load_data(args: &DataArgs, multiple: usize, progress: bool) -> Result<Splits> {
    let path = data_path(args, progress)?;
    denoise_data::load(&path, &data_options(args, multiple))
        .with_context(|| format!("reading the dataset in {}", path.display()))
}

/// The test images, in groups of one size each: images of different sizes are each evaluated
/// whole (unless --crop or --patch make them one size).
fn load_test_data(
    args: &DataArgs,
    multiple: usize,
    progress: bool,
) -> Result<Vec<denoise_data::ImageSet>> {
    let path = data_path(args, progress)?;
    let context = || format!("reading the test images in {}", path.display());
    let groups = denoise_data::load_test_groups(&path, &data_options(args, multiple))
        .with_context(context)?;
    for g in &groups {
        eval::check_size(g).with_context(context)?;
    }
    Ok(groups)
}

/// About `n` of the images of `groups` as [`denoise_data::ImageSet::first_balanced`] picks them:
/// of one group, the first `n / classes` of each class; of images of several sizes, the first `n`.
fn first_balanced(groups: Vec<denoise_data::ImageSet>, n: usize) -> Vec<denoise_data::ImageSet> {
    if groups.len() == 1 {
        return vec![groups[0].first_balanced(n)];
    }
    let mut left = n;
    let mut out = Vec::new();
    for g in groups {
        if left == 0 {
            break;
        }
        let take = g.n.min(left);
        left -= take;
        out.push(g.select(&(0..take).collect::<Vec<_>>()));
    }
    out
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_file(p)?,
        None if a.resume => match denoise_trainer::read_state(&a.out)? {
            Some(state) => state.config,
            None => TrainConfig::default(),
        },
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f.clone() { c.$f = v; })* };
    }
    set!(
        arch,
        epochs,
        batch,
        lr,
        weight_decay,
        lr_step,
        lr_gamma,
        patience,
        ssim_weight,
        sigma_min,
        sigma_max,
        seed,
        log_every
    );
    macro_rules! set_opt {
        ($($f:ident),*) => { $(if a.$f.is_some() { c.$f = a.$f.clone(); })* };
    }
    set_opt!(
        width,
        mults,
        blocks,
        dropout,
        loss,
        lognormal_fraction,
        ema_halflife,
        max_steps,
        val_every,
        val_limit
    );
    if a.attention {
        c.attention = Some(true);
    }
    if a.time_budget.is_some() {
        c.time_budget_secs = a.time_budget;
    }
    if a.no_flip {
        c.flip = false;
    }
    if let Some(d) = a.dtype {
        c.dtype = d.dtype().as_str().to_string();
    }
    if let Some(p) = &a.init_from {
        if !p.is_file() {
            bail!(
                "--init-from {}: expected a checkpoint file (.safetensors), found {}",
                p.display(),
                if p.exists() { "a folder" } else { "nothing" }
            );
        }
        c.init_from = Some(p.display().to_string());
    }
    a.corruption.apply(&mut c.noise, &mut c.jpeg_quality_range);
    c.validate()?;
    Ok(c)
}

fn is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let config = train_config(&a)?;
    if a.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    if a.out.exists() && !a.out.is_dir() {
        bail!(
            "--out {}: expected a folder for the run (checkpoints, metrics, plot), found a file",
            a.out.display()
        );
    }
    let device = pick_device(a.device)?;
    let mut opts = TrainOptions {
        resume: a.resume,
        overwrite: a.overwrite,
        progress: is_tty(),
        ..Default::default()
    };
    // Refused before the data is read, not after.
    denoise_trainer::check_out_dir(&a.out, &opts)?;
    let multiple = config.model_config().map_or(1, |c| c.size_multiple());
    let data = load_data(&a.data, multiple, is_tty())?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing the current step and saving (Ctrl-C again to quit now)"
            );
        });
    }
    opts.stop = stop;
    let s = denoise_trainer::train(&config, &data, &a.out, &device, &opts)?;
    let st = &s.state;
    let best = st.early.best.map_or("-".into(), |b| format!("{b:.4}"));
    println!(
        "stopped ({}): {} ({}) in {:.0} s; best validation loss {best}; checkpoints in {}",
        s.stopped_by,
        count_of(st.global_step as usize, "step"),
        count_of(st.images_seen as usize, "image"),
        st.elapsed_secs,
        s.out_dir.display()
    );
    Ok(())
}

/// Fails before a long run, not after it, on an output file that cannot be written: a
/// folder's name, or a folder that cannot be made (it is made here).
fn prepare_output(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: a folder, expected a file name", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "{flag} {}: cannot make its folder {}",
                path.display(),
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Refuses a grid's file name that is not `.png` (grids are written as PNG only).
fn require_png(flag: &str, path: &Path) -> Result<()> {
    if images::format_of(path).ok() != Some(image::ImageFormat::Png) {
        bail!(
            "{flag} {}: the grid is written as PNG: use a .png name",
            path.display()
        );
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    // The error names the file.
    denoise_model::checkpoint::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())?;
    Ok(())
}

/// Refuses a `--json` output that is the model file itself.
fn refuse_same_json(json: &Path, model_file: &Path) -> Result<()> {
    if is_same_file(json, model_file) {
        bail!(
            "--json {} is the --model itself: the results would replace the checkpoint",
            json.display()
        );
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    for (flag, path) in [("--grid", &a.grid), ("--plot", &a.plot)] {
        if let Some(path) = path {
            require_png(flag, path)?;
            prepare_output(flag, path)?;
        }
    }
    if a.sigmas.is_empty() || a.sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        bail!("--sigmas: expected non-negative numbers such as 15,25,50");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let corruption = a.corruption.corruption()?;
    if let (Some(path), Some(named)) = (&a.json, &a.model) {
        // Before the data is read (or downloaded).
        let named = models::model_path(Some(named), models::CIFAR_MODEL)?;
        refuse_same_json(path, &named)?;
    }
    // The data is read for the network's size multiple, the same for both shipped models;
    // then the images' size picks the default model.
    let models = models::Models::new(a.model.as_deref(), &device, a.dtype.dtype());
    let (_, first) = models.for_size(1, 1)?;
    let groups = load_test_data(&a.data, first.size_multiple(), is_tty())?;
    let largest = groups
        .iter()
        .max_by_key(|g| g.h * g.w)
        .expect("at least one group");
    let (model_file, model) = models.for_size(largest.h, largest.w)?;
    if let Some(path) = &a.json {
        refuse_same_json(path, model_file)?;
        prepare_output("--json", path)?;
    }
    let groups = match a.limit {
        Some(0) => bail!("--limit must be at least 1"),
        Some(n) => first_balanced(groups, n),
        None => groups,
    };
    let images: usize = groups.iter().map(|g| g.n).sum();
    let grid_set = groups.iter().find(|g| g.h * g.w <= 256 * 256);
    if let (Some(path), None) = (&a.grid, grid_set) {
        bail!(
            "--grid {}: the grid shows test images of at most 256x256 pixels, and these are \
             larger (--patch N cuts them into such patches)",
            path.display()
        );
    }
    let mut opts = eval::EvalOptions {
        estimate: false,
        seed: a.seed,
        batch: a.batch,
        corruption,
        tiles: denoise_model::tiles::TileConfig::default(),
        progress: is_tty(),
    };
    let mut results = eval::evaluate(model, &groups, &a.sigmas, &opts, &device)?;
    if a.estimate_sigma {
        opts.estimate = true;
        results.extend(eval::evaluate(model, &groups, &a.sigmas, &opts, &device)?);
    }
    let sizes = match groups.as_slice() {
        [one] => format!("{}x{}", one.w, one.h),
        _ => "of several sizes, each whole".into(),
    };
    println!(
        "model {} ({}, {}), {images} test images {sizes}, {} noise{}, noise seed {}",
        model_file.display(),
        model.config().arch(),
        model.dtype().as_str(),
        corruption.kind.name(),
        corruption.jpeg.map_or(String::new(), |(lo, hi)| format!(
            " then JPEG quality {lo}-{hi}"
        )),
        a.seed
    );
    print!("{}", eval::table(&results));
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "model": model_file.display().to_string(),
            "arch": model.config().arch(),
            "dtype": model.dtype().as_str(),
            "images": images,
            "noise": corruption.kind.name(),
            "jpeg_quality_range": corruption.jpeg.map(|(lo, hi)| [lo, hi]),
            "seed": a.seed,
            "results": results,
        });
        write_json(path, &json)?;
    }
    if let Some(path) = &a.grid {
        let test = grid_set.expect("checked before the evaluation");
        eval::write_grid(model, test, &a.sigmas, &opts, 8, &device, path)
            .with_context(|| format!("--grid {}", path.display()))?;
        println!("grid: {}", path.display());
    }
    if let Some(path) = &a.plot {
        denoise_trainer::plot::plot_psnr(&results, path)
            .with_context(|| format!("--plot {}", path.display()))?;
        println!("plot: {}", path.display());
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    if let Some(s) = a.sigma {
        if !(s.is_finite() && s >= 0.0) {
            bail!("--sigma: expected a noise level >= 0 in 0..255 units, got {s}");
        }
    }
    if a.random {
        return generate_random(&a, &device);
    }
    let input = a
        .image
        .as_deref()
        .expect("clap requires --image without --random");
    if !input.exists() {
        bail!("--image {}: no such file or folder", input.display());
    }
    if is_same_file(input, &a.out) {
        let (what, other) = if input.is_dir() {
            ("images would replace the noisy ones", "folder")
        } else {
            ("image would replace the noisy one", "file name")
        };
        bail!(
            "--out {} is the --image itself: the denoised {what}; choose another {other}",
            a.out.display()
        );
    }
    let models = models::Models::new(a.model.as_deref(), &device, a.dtype.dtype());
    // Pictures come in all sizes, each convolution shape seen a few times at most: cuDNN's
    // heuristics pick its algorithms rather than timing every one first.
    denoise_model::cudnn_conv::set_benchmark(false);
    if input.is_dir() {
        return denoise_folder(&a, input, &models);
    }
    let format = images::format_of(&a.out)?;
    let bar = progress_bar(is_tty(), "tiles");
    let msg = denoise_file(&a, input, &a.out, format, &models, &bar)?;
    bar.finish_and_clear();
    println!("{msg}");
    Ok(())
}

/// Whether two paths name one existing file or folder (through links and `..`).
fn is_same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn progress_bar(show: bool, unit: &str) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Denoises one file into `out`; returns the line to print.
fn denoise_file(
    a: &GenerateArgs,
    input: &Path,
    out: &Path,
    format: image::ImageFormat,
    models: &models::Models,
    bar: &indicatif::ProgressBar,
) -> Result<String> {
    let pic = images::read(input)?;
    // Fail on an impossible output before the (long) denoising.
    images::check_writable(&pic, format).with_context(|| format!("--out {}", out.display()))?;
    let (model_file, model) = models.for_size(pic.h, pic.w)?;
    let (sigma, how) = match a.sigma {
        Some(s) => (s / 255.0, "given"),
        None => {
            use denoise_data::estimate::{estimate_sigma_from, Basis};
            match estimate_sigma_from(&pic.rgb, (3, pic.h, pic.w)) {
                (s, Basis::Channels) => (s, "estimated"),
                (s, Basis::Luma) => (
                    s,
                    "estimated from the brightness: the colours are smoother, as in most JPEGs",
                ),
            }
        }
    };
    let min = denoise_data::estimate::MIN_SIDE;
    if a.sigma.is_none() && model.is_conditioned() && (pic.h < min || pic.w < min) {
        tracing::warn!(
            "{}: {}x{} pixels are too few to estimate the noise level from (at least {min}x{min}): \
             denoising as if there were none; pass --sigma to give it",
            input.display(),
            pic.w,
            pic.h
        );
    }
    if !model.is_conditioned() && a.sigma.is_some() {
        tracing::warn!(
            "{} is a blind denoiser: --sigma is ignored",
            model.config().arch()
        );
    }
    let cfg = denoise_model::tiles::TileConfig {
        whole_limit: a.whole_limit,
        ..Default::default()
    };
    bar.set_message(format!("{}", input.display()));
    let rgb = denoise_model::tiles::denoise_image(
        model,
        &pic.rgb,
        (3, pic.h, pic.w),
        sigma,
        &cfg,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    let bytes = images::encode(&rgb, &pic, format, a.jpeg_quality)?;
    denoise_model::checkpoint::write_atomic(out, &bytes)?;
    // `denoise_image` tells the network more for a gray picture: say so.
    let told = if model.is_conditioned() && denoise_model::tiles::is_gray(&pic.rgb, 3) {
        let factor = denoise_model::tiles::GRAY_SIGMA_FACTOR;
        format!(", network told {:.2} as gray", sigma * 255.0 * factor)
    } else {
        String::new()
    };
    Ok(format!(
        "denoised {} ({}, noise sigma {:.2} {how}{told}, model {}) -> {}",
        input.display(),
        pic.describe(),
        sigma * 255.0,
        models::name_of(model_file),
        out.display()
    ))
}

/// The image files `--image` names: itself, or those in the folder it names.
fn images_of(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            bail!("--image {}: no such file or folder", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let files = images::list_images(path)?;
    if files.is_empty() {
        bail!(
            "--image {}: the folder has no image files (.png, .jpg, .tif, .webp, .bmp)",
            path.display()
        );
    }
    Ok(files)
}

fn cmd_estimate(a: EstimateArgs) -> Result<()> {
    use denoise_data::estimate::{estimate_sigma_from, Basis};
    let files = images_of(&a.image)?;
    if let Some(path) = &a.json {
        if let Some(f) = files.iter().find(|f| is_same_file(f, path)) {
            bail!(
                "--json {} is the image {} itself: the estimates would replace it",
                path.display(),
                f.display()
            );
        }
    }
    println!("| image | size | noise sigma | from |");
    println!("|:---|:---|---:|:---|");
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    for f in &files {
        match images::read(f) {
            Ok(pic) => {
                let (sigma, basis) = estimate_sigma_from(&pic.rgb, (3, pic.h, pic.w));
                let from = match basis {
                    _ if pic.h.min(pic.w) < denoise_data::estimate::MIN_SIDE => "too small",
                    _ if denoise_model::tiles::is_gray(&pic.rgb, 3) => "gray",
                    Basis::Channels => "colour channels",
                    Basis::Luma => "brightness (colours subsampled)",
                };
                println!(
                    "| {} | {} | {:.2} | {from} |",
                    f.display(),
                    pic.describe(),
                    sigma * 255.0
                );
                rows.push(serde_json::json!({
                    "image": f.display().to_string(),
                    "width": pic.w,
                    "height": pic.h,
                    "sigma": sigma * 255.0,
                    "from": from,
                }));
            }
            Err(e) => {
                eprintln!("error: {}", report(&e));
                failed.push(f.display().to_string());
            }
        }
    }
    if let Some(path) = &a.json {
        write_json(
            path,
            &serde_json::json!({ "sigma_units": "0..255", "images": rows }),
        )?;
    }
    some_failed(&failed, files.len())?;
    Ok(())
}

/// An error naming the `failed` files of `total`, if any (each was reported as it failed).
fn some_failed(failed: &[String], total: usize) -> Result<()> {
    if !failed.is_empty() {
        bail!(
            "{} of {total} images failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn denoise_folder(a: &GenerateArgs, dir: &Path, models: &models::Models) -> Result<()> {
    let files = images_of(dir)?;
    if a.out.exists() && !a.out.is_dir() {
        bail!(
            "--out {}: with a folder of images, --out must be a folder",
            a.out.display()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = progress_bar(is_tty(), "images");
    bar.set_length(files.len() as u64);
    let tiles = indicatif::ProgressBar::hidden();
    let mut failed = Vec::new();
    for (i, f) in files.iter().enumerate() {
        bar.set_message(format!("{}", f.display()));
        let out = a.out.join(f.file_name().expect("listed files have names"));
        let result = images::format_of(&out)
            .and_then(|format| denoise_file(a, f, &out, format, models, &tiles));
        match result {
            Ok(msg) => bar.suspend(|| println!("{msg}")),
            Err(e) => {
                bar.suspend(|| eprintln!("error: {}", report(&e)));
                failed.push(f.display().to_string());
            }
        }
        bar.set_position(i as u64 + 1);
    }
    bar.finish_and_clear();
    some_failed(&failed, files.len())?;
    println!(
        "{} denoised into {}",
        count_of(files.len(), "image"),
        a.out.display()
    );
    Ok(())
}

/// The largest side `generate --random` samples: one network evaluation of an image takes
/// about 5 KB per pixel (1.37 GB peak at 512x512, measured).
const MAX_SAMPLE_SIDE: usize = 1024;

/// The most pixels `generate --random` samples at once: the sampler keeps about six copies of
/// every image (72 bytes a pixel, 2.4 GB here), and they make one grid.
const MAX_SAMPLE_PIXELS: usize = 1 << 25;

/// `n` and the word, in the plural unless `n` is 1.
fn count_of(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn generate_random(a: &GenerateArgs, device: &Device) -> Result<()> {
    use denoise_model::sampler::{self, Method, SamplerConfig};
    require_png("--out", &a.out)?;
    if a.count == 0 || a.steps == 0 {
        bail!("--count and --steps must be at least 1");
    }
    let path = models::model_path(a.model.as_deref(), models::CIFAR_MODEL)?;
    let model = models::load(&path, device, a.dtype.dtype())?;
    if !model.is_conditioned() {
        bail!(
            "{} is a blind denoiser and cannot sample new images: use a cond-unet model",
            model.config().arch()
        );
    }
    let m = model.size_multiple();
    if a.size == 0 || !a.size.is_multiple_of(m) {
        bail!("--size must be a positive multiple of {m}");
    }
    if a.size > MAX_SAMPLE_SIDE {
        bail!(
            "--size {}: at most {MAX_SAMPLE_SIDE} (the network takes about 5 KB per pixel of an \
             image it samples, 5.5 GB at 1024x1024; it learned from small images, and much larger \
             samples are textures rather than pictures)",
            a.size
        );
    }
    let pixels = a.count.saturating_mul(a.size * a.size);
    if pixels > MAX_SAMPLE_PIXELS {
        bail!(
            "--count {} at --size {}: {pixels} pixels sampled at once, at most {MAX_SAMPLE_PIXELS} \
             ({} images of that size): sample them in several runs with other --seed values",
            a.count,
            a.size,
            MAX_SAMPLE_PIXELS / (a.size * a.size)
        );
    }
    let method: Method = a
        .sampler
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--sampler: {e}"))?;
    let cfg = SamplerConfig {
        steps: a.steps,
        method,
        ..Default::default()
    };
    let c = model.channels();
    let bar = progress_bar(is_tty(), "steps");
    bar.set_length(a.steps as u64);
    bar.set_message(format!("sampling {} images", a.count));
    let t = std::time::Instant::now();
    let x = sampler::sample(
        &sampler::ModelDenoiser::new(&model),
        &[a.count, c, a.size, a.size],
        &cfg,
        a.seed,
        device,
        &mut |i, _| bar.set_position(i as u64),
    )?;
    bar.finish_and_clear();
    let x = sampler::to_pixels(&x)?.to_device(&Device::Cpu)?;
    let dir = a.out.with_extension("");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tiles = Vec::new();
    for i in 0..a.count {
        let img = eval::to_rgb(&x.get(i)?)?;
        let path = dir.join(format!("{i:03}.png"));
        eval::save_png_atomic(&img, &path)?;
        tiles.push(img);
    }
    let grid = eval::grid_of(&tiles, (a.count as f64).sqrt().ceil() as usize);
    eval::save_png_atomic(&grid, &a.out)?;
    println!(
        "{} ({}x{}, {:?} sampler, {} = {}, seed {}) in {:.1} s -> {} and {}/",
        count_of(a.count, "image"),
        a.size,
        a.size,
        method,
        count_of(a.steps, "step"),
        count_of(cfg.evaluations(), "network evaluation"),
        a.seed,
        t.elapsed().as_secs_f64(),
        a.out.display(),
        dir.display()
    );
    Ok(())
}

fn cmd_export(mut a: ExportArgs) -> Result<()> {
    a.model = models::model_path(Some(&a.model), models::CIFAR_MODEL)?;
    if is_same_file(&a.model, &a.out) {
        bail!(
            "--out {} is the --model itself: the model-only file would replace the training \
             checkpoint; choose another file name",
            a.out.display()
        );
    }
    let ckpt = denoise_model::Checkpoint::load(&a.model)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let model = Model::from_checkpoint(&ckpt, &Device::Cpu)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let mut out = denoise_model::Checkpoint::new(&a.out);
    out.set_model(&model)?;
    if let Some(train) = ckpt.metadata.get("denoise.train") {
        out.metadata.insert("denoise.train".into(), train.clone());
    }
    if let Some(path) = &a.eval_json {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--eval-json {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--eval-json {}: not JSON", path.display()))?;
        out.metadata.insert("denoise.eval".into(), v.to_string());
    }
    if a.f16 {
        out.to_f16()?;
    }
    out.metadata.insert(
        "denoise.weights".into(),
        format!(
            "{} ({}), {}",
            if ckpt.has_tensor(&format!("ema.{}", model.vars()[0].0)) {
                "moving average of the trained weights"
            } else {
                "trained weights"
            },
            if a.f16 { "f16" } else { "f32" },
            a.model.display()
        ),
    );
    out.save()?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({} parameters) -> {} ({:.1} MB)",
        model.config().arch(),
        model.num_params(),
        a.out.display(),
        size as f64 / 1e6
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    let tc = TrainConfig {
        arch: a.arch.clone(),
        width: a.width,
        ..Default::default()
    };
    tc.validate()?;
    if a.batch == 0 || a.infer_batch == 0 || a.size == 0 || !a.size.is_multiple_of(8) {
        bail!("--batch and --infer-batch must be at least 1 and --size a positive multiple of 8");
    }
    if let Some(path) = &a.json {
        prepare_output("--json", path)?;
    }
    let config = tc.model_config().expect("validated");
    let r = denoise_trainer::bench::bench(
        &config,
        &device,
        a.batch,
        a.infer_batch,
        a.size,
        a.steps,
        a.repeats,
        a.dtype.dtype(),
    )?;
    println!(
        "{} ({} parameters, {}) on {}: train {:.1} img/s (batch {}, min {:.1}, max {:.1}; {:.1} GFLOP/s), \
         inference {:.1} img/s (batch {}, min {:.1}, max {:.1}; {:.1} GFLOP/s), {} threads, peak RSS {:.0} MB",
        r.arch, r.params, r.dtype, r.device, r.train_img_per_s.median, r.train_batch, r.train_img_per_s.min, r.train_img_per_s.max,
        r.train_gflops, r.infer_img_per_s.median, r.infer_batch, r.infer_img_per_s.min, r.infer_img_per_s.max,
        r.infer_gflops, r.threads, r.peak_rss_mb
    );
    if let Some(p) = r.train_phases_ms {
        println!("a training step, phase by phase (device synchronised after each): {p}");
    }
    if let Some(h) = r.train_host_ms {
        print!(
            "the host queues a training step in {:.1} ms (median; min {:.1}, max {:.1})",
            h.median, h.min, h.max
        );
        match r.train_host_phases_ms {
            Some(p) => println!(": {p}"),
            None => println!(),
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &serde_json::to_value(&r)?)?;
    }
    Ok(())
}

fn cmd_selftest(a: SelftestArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    if let Some(path) = &a.json {
        prepare_output("--json", path)?;
    }
    let checks = denoise_trainer::selftest::selftest(&device, 8, 4, 32, a.tol)?;
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    let worst = |half: bool| {
        checks
            .iter()
            .filter(|c| c.name.contains("bf16") == half)
            .map(|c| c.rel_err)
            .fold(0.0, f64::max)
    };
    println!(
        "selftest on {device:?}: {} checks, {} failed, worst relative error {:.2e} (bf16 checks: {:.2e})",
        checks.len(),
        failed.len(),
        worst(false),
        worst(true)
    );
    for c in &failed {
        println!("  FAILED {}: relative error {:.2e}", c.name, c.rel_err);
    }
    if let Some(path) = &a.json {
        let json =
            serde_json::json!({ "device": format!("{device:?}"), "tol": a.tol, "checks": checks });
        write_json(path, &json)?;
    }
    if !failed.is_empty() {
        bail!("{} of {} checks failed", failed.len(), checks.len());
    }
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`denoise info X | head`) ends the process
    // quietly, as for other command-line tools, instead of a panic in `println!`. Every file is
    // written atomically, so nothing is left half-written.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
        Command::Train(a) => cmd_train(*a),
        Command::Eval(a) => cmd_eval(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Export(a) => cmd_export(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Selftest(a) => cmd_selftest(a),
        Command::Info(a) => info::info(&a.checkpoint, a.json),
        Command::Estimate(a) => cmd_estimate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as anyhow's `{:#}`, but without a cause whose text
/// the message above it already quotes (our library errors, and the image crate's, print
/// their source in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

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
