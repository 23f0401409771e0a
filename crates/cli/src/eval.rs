//! `denoise eval`: PSNR and SSIM of a model on test images at several noise levels.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use denoise_trainer::eval;

use crate::data_args::{first_balanced, load_test_data, DataArgs, NoiseArgs};
use crate::models;
use crate::output::{is_tty, prepare_output, refuse_same_json, require_png, write_json};
use crate::runtime::{ensemble_note, parse_ensemble, pick_device, DeviceArg, DtypeArg};

#[derive(Args)]
pub struct EvalArgs {
    /// The checkpoint to evaluate (best.safetensors or last.safetensors, or a training folder
    /// for its best; default: the shipped model in models/, or $DENOISE_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Noise levels in 0..255 units, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "15,25,50")]
    pub sigmas: Vec<f64>,
    /// Evaluate about N test images: the first N/classes of each class, at least one (file
    /// order; N/10 of each of CIFAR-10's ten classes, so --limit 4 takes 10).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per batch through the network (memory grows with it; the noise drawn and the
    /// scores stay the same, to rounding).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Also evaluate with each image's noise level estimated from the noisy image.
    #[arg(long)]
    pub estimate_sigma: bool,
    /// Geometric self-ensemble: denoise every image in 1, 2, 4 or 8 of its flips and rotations
    /// and average them (slightly higher PSNR for N times the time).
    #[arg(long, default_value_t = 1, value_parser = parse_ensemble)]
    pub ensemble: usize,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub corruption: NoiseArgs,
    /// Write a PNG grid of noisy / denoised / clean images.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Draw PSNR against the noise level as a PNG (noisy, denoised, and denoised with the
    /// estimated level under --estimate-sigma); most telling with many --sigmas.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The network's precision: f32, or bf16 / f16 (half the memory traffic: for GPUs; the CPU
    /// emulates them, a little slower). Normalisation, softmax and the skip path stay in f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

pub fn run(a: EvalArgs) -> Result<()> {
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
        tiles: denoise_model::tiles::TileConfig {
            ensemble: a.ensemble,
            ..Default::default()
        },
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
        "model {} ({}, {}), {images} test images {sizes}, {} noise{}, noise seed {}{}",
        model_file.display(),
        model.config().arch(),
        model.dtype().as_str(),
        corruption.kind.name(),
        corruption.jpeg.map_or(String::new(), |(lo, hi)| format!(
            " then JPEG quality {lo}-{hi}"
        )),
        a.seed,
        ensemble_note(a.ensemble)
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
            "ensemble": a.ensemble,
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
