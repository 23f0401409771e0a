//! `denoise generate`: denoise an image or a folder of them (tiled, with the model that suits
//! their size), or sample new images from pure noise.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use denoise_trainer::eval;

use crate::images::{self, images_of};
use crate::models;
use crate::output::{
    count_of, is_same_file, is_tty, progress_bar, report, require_png, some_failed,
};
use crate::runtime::{ensemble_note, parse_ensemble, pick_device, DeviceArg, DtypeArg};

#[derive(Args)]
pub struct GenerateArgs {
    /// A noisy image (PNG, JPEG, TIFF, WebP or BMP; 8- or 16-bit; gray, RGB or with alpha; any
    /// size), or a folder of them.
    #[arg(long, conflicts_with = "random", required_unless_present = "random")]
    pub image: Option<PathBuf>,
    /// The image's noise standard deviation in 0..255 units of the full range, whatever the
    /// bit depth (default: estimated from the image and printed).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Generate new images from pure noise with the diffusion sampler.
    #[arg(long)]
    pub random: bool,
    /// --random: how many images.
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// --random: sampler steps (Heun: 2 steps - 1 network evaluations).
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
    /// --random: heun (second order, EDM's default) or euler.
    #[arg(long, default_value = "heun")]
    pub sampler: String,
    /// --random: seed of the initial noise (same seed, same images).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// --random: image side (default: 32, the training images').
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// The model checkpoint, or a training folder for its best.safetensors (default: the
    /// shipped model in models/, or $DENOISE_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output: an image file (.png, .jpg, .tif, .webp (lossless) or .bmp), a folder for a
    /// folder of images, or the grid PNG for --random (the single images go into a folder named
    /// after it).
    #[arg(long)]
    pub out: PathBuf,
    /// Images with more pixels than this are denoised in overlapping tiles of at most 256x256.
    #[arg(long, default_value_t = 512 * 512)]
    pub whole_limit: usize,
    /// Geometric self-ensemble: denoise every image in 1, 2, 4 or 8 of its flips and rotations
    /// and average them (slightly higher PSNR for N times the time).
    #[arg(long, default_value_t = 1, value_parser = parse_ensemble)]
    pub ensemble: usize,
    /// Quality of .jpg outputs, 1 to 100 (the image crate's default, 75, adds visible
    /// artifacts to a cleaned image).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// The network's precision: f32, or bf16 / f16 (half the memory traffic: for GPUs; the CPU
    /// emulates them, a little slower). Normalisation, softmax and the skip path stay in f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

pub fn run(a: GenerateArgs) -> Result<()> {
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
    denoise_ops::cudnn_conv::set_benchmark(false);
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
        ensemble: a.ensemble,
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
        "denoised {} ({}, noise sigma {:.2} {how}{told}, model {}{}) -> {}",
        input.display(),
        pic.describe(),
        sigma * 255.0,
        models::name_of(model_file),
        ensemble_note(a.ensemble),
        out.display()
    ))
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
