//! The data flags shared by `train` and `eval`: where the images are (downloading CIFAR-10
//! when none are named) and how they are made noisy.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use denoise_data::noise::NoiseKind;
use denoise_data::{download, LoadOptions, Splits};
use denoise_trainer::eval;

#[derive(Args)]
pub struct DataArgs {
    /// A folder with the CIFAR-10 binary files (or `cifar-10-batches-bin/` inside), or a folder
    /// of images (PNG, JPEG, TIFF, WebP, BMP; `train/` and `test/` with class folders, or any
    /// tree). Default: the cache folder, downloaded into when empty.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Center-crop every image to the smallest height and width among them, instead of refusing
    /// images whose size is not the first one's.
    #[arg(long)]
    pub crop: bool,
    /// Cut every image (of any size, at least N x N) into N x N patches and use those: to
    /// train and evaluate on photos of different sizes. Training takes as many crops per epoch
    /// as a grid would give, at new random positions and orientations every epoch; validation
    /// and test patches lie on a fixed grid. `--patch` alone: 64, what the shipped photo model
    /// was trained on.
    #[arg(long, value_name = "N", conflicts_with = "crop", num_args = 0..=1, default_missing_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub patch: Option<u32>,
    /// With --patch: train on the fixed grid of patches too, the same ones every epoch.
    #[arg(long, requires = "patch")]
    pub grid_patches: bool,
}

/// How clean images are made noisy, in training and in evaluation.
#[derive(Args)]
pub struct NoiseArgs {
    /// The noise: gaussian (the same sigma everywhere, the default), or poisson-gaussian
    /// (signal-dependent, as a camera's: variance sigma^2 ((1 - r) + 2 r x) at a pixel of value
    /// x in [0, 1], the shot-noise share r drawn in [0, 1] for each image, so sigma is the level
    /// at mid grey).
    #[arg(long, value_enum)]
    pub noise: Option<NoiseArg>,
    /// JPEG-compress each noisy image (clipped to 8 bits) at a quality drawn from LOW,HIGH
    /// (1-100; the same number twice for one quality).
    #[arg(long, value_name = "LOW,HIGH", value_parser = quality_range)]
    pub jpeg_quality_range: Option<[u8; 2]>,
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
pub enum NoiseArg {
    Gaussian,
    PoissonGaussian,
}

impl NoiseArgs {
    /// The noise kind the flag names, if given.
    pub fn kind(&self) -> Option<NoiseKind> {
        self.noise.map(|n| match n {
            NoiseArg::Gaussian => NoiseKind::Gaussian,
            NoiseArg::PoissonGaussian => NoiseKind::PoissonGaussian,
        })
    }

    /// The corruption these flags give (Gaussian noise, no JPEG, by default).
    pub fn corruption(&self) -> Result<denoise_data::noise::Corruption> {
        let c = denoise_data::noise::Corruption {
            kind: self.kind().unwrap_or_default(),
            jpeg: self.jpeg_quality_range.map(|[lo, hi]| (lo, hi)),
        };
        c.check()
            .map_err(|e| anyhow::anyhow!("--jpeg-quality-range: {e}"))?;
        Ok(c)
    }

    /// Sets the noise and the JPEG range these flags give in a recipe's `noise` and `jpeg`.
    pub fn apply(&self, noise: &mut String, jpeg: &mut Option<[u8; 2]>) {
        if let Some(kind) = self.kind() {
            *noise = kind.name().into();
        }
        if let Some(r) = self.jpeg_quality_range {
            *jpeg = Some(r);
        }
    }
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

pub fn load_data(args: &DataArgs, multiple: usize, progress: bool) -> Result<Splits> {
    let path = data_path(args, progress)?;
    denoise_data::load(&path, &data_options(args, multiple))
        .with_context(|| format!("reading the dataset in {}", path.display()))
}

/// The test images, in groups of one size each: images of different sizes are each evaluated
/// whole (unless --crop or --patch make them one size).
pub fn load_test_data(
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
pub fn first_balanced(
    groups: Vec<denoise_data::ImageSet>,
    n: usize,
) -> Vec<denoise_data::ImageSet> {
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
