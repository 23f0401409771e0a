//! Evaluation: PSNR and SSIM of the noisy input and of the model's output at several noise
//! levels, per image then averaged; and a PNG grid of noisy / denoised / clean images.

use std::path::Path;

use candle_core::{Device, Tensor};
use denoise_data::estimate::estimate_sigma;
use denoise_data::noise::{rng_for, Corruption};
use denoise_data::ImageSet;
use denoise_loss::{psnr, Ssim};
use denoise_model::ensemble;
use denoise_model::tiles::{self, TileConfig};
use denoise_model::Model;
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The scores at one noise level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Noise standard deviation in 0..255 pixel units.
    pub sigma: f64,
    /// Images scored.
    pub images: usize,
    /// Mean PSNR of the noisy images, in dB.
    pub noisy_psnr: f64,
    /// Mean SSIM of the noisy images.
    pub noisy_ssim: f64,
    /// Mean PSNR of the denoised images, in dB.
    pub psnr: f64,
    /// Mean SSIM of the denoised images.
    pub ssim: f64,
    /// Set when the model was given each image's noise level estimated from the noisy image
    /// rather than the true one: the mean estimate (0..255 units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_estimate: Option<f64>,
}

/// The noisy version of image `i` at `sigma` (0..255 units), made as `corruption` says:
/// randomness from `(seed, sigma, i)`, so it does not depend on the batch size; Gaussian noise
/// is not clipped.
pub fn noisy_image(
    set: &ImageSet,
    i: usize,
    sigma: f64,
    seed: u64,
    corruption: &Corruption,
) -> Vec<f32> {
    noisy_at(set, i, i, sigma, seed, corruption)
}

/// [`noisy_image`] of image `i` of `set`, which is image `index` of the whole evaluation.
fn noisy_at(
    set: &ImageSet,
    i: usize,
    index: usize,
    sigma: f64,
    seed: u64,
    corruption: &Corruption,
) -> Vec<f32> {
    let mut rng = rng_for(&[seed, 0x4556_414c, sigma.to_bits(), index as u64]);
    corruption.apply(
        &set.image_f32(i),
        (set.c, set.h, set.w),
        (sigma / 255.0) as f32,
        &mut rng,
    )
}

/// Denoises a batch `(n, c, h, w)` of any size at noise levels `sigmas` (pixel `[0, 1]`
/// scale, one per image or one for all) and clips the result to `[0, 1]`.
pub fn denoise_batch(model: &Model, noisy: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
    Ok(model.denoise_any_size(noisy, sigmas)?)
}

fn mean(v: &[f32]) -> f64 {
    // Identical images have infinite PSNR; count them at 100 dB so that means stay finite.
    v.iter().map(|&x| x.min(100.0) as f64).sum::<f64>() / v.len().max(1) as f64
}

/// Refuses images too small for [`evaluate`]'s SSIM (its window is 11x11 pixels).
pub fn check_size(set: &ImageSet) -> Result<()> {
    let window = Ssim::default().window;
    if set.h < window || set.w < window {
        return Err(TrainError::TooSmall {
            w: set.w,
            h: set.h,
            window,
        });
    }
    Ok(())
}

/// How [`evaluate`] runs.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Give the model each image's noise level as [`estimate_sigma`] finds it in the noisy
    /// image, instead of the true one.
    pub estimate: bool,
    /// Seed of the noise.
    pub seed: u64,
    /// Images of one size per pass through the network (for images that run whole).
    pub batch: usize,
    /// How the clean images are made noisy.
    pub corruption: Corruption,
    /// Images larger than `tiles.whole_limit` pixels are denoised one at a time through the
    /// tiled path of [`denoise_model::tiles::denoise_image`], as `generate` does; every image
    /// is denoised in `tiles.ensemble` orientations ([`denoise_model::ensemble`]).
    pub tiles: TileConfig,
    /// Show a progress bar.
    pub progress: bool,
}

/// The scores of the images seen so far at one noise level.
#[derive(Default)]
struct Scores {
    noisy_psnr: Vec<f32>,
    noisy_ssim: Vec<f32>,
    psnr: Vec<f32>,
    ssim: Vec<f32>,
    estimates: Vec<f64>,
}

impl Scores {
    fn add(&mut self, ssim: &Ssim, noisy: &Tensor, den: &Tensor, clean: &Tensor) -> Result<()> {
        self.noisy_psnr
            .extend(psnr(noisy, clean, 1.0)?.to_vec1::<f32>()?);
        self.noisy_ssim
            .extend(ssim.per_image(noisy, clean)?.to_vec1::<f32>()?);
        self.psnr.extend(psnr(den, clean, 1.0)?.to_vec1::<f32>()?);
        self.ssim
            .extend(ssim.per_image(den, clean)?.to_vec1::<f32>()?);
        Ok(())
    }

    fn result(&self, sigma: f64, estimate: bool) -> EvalResult {
        let e = &self.estimates;
        EvalResult {
            sigma,
            images: self.psnr.len(),
            noisy_psnr: mean(&self.noisy_psnr),
            noisy_ssim: mean(&self.noisy_ssim),
            psnr: mean(&self.psnr),
            ssim: mean(&self.ssim),
            mean_estimate: estimate.then(|| e.iter().sum::<f64>() / e.len().max(1) as f64),
        }
    }
}

/// Scores `model` on every image of `groups` (sets of images of one size each; image `k` of
/// the whole evaluation gets the noise of index `k`) at each noise level in `sigmas` (0..255
/// units), giving it the true noise level, or, with `opts.estimate`, the level
/// [`estimate_sigma`] finds in each noisy image. Small images go through the network in
/// batches; large ones whole, one at a time, tiled.
pub fn evaluate(
    model: &Model,
    groups: &[ImageSet],
    sigmas: &[f64],
    opts: &EvalOptions,
    device: &Device,
) -> Result<Vec<EvalResult>> {
    let total: usize = groups.iter().map(|g| g.n).sum();
    if total == 0 {
        return Err(TrainError::Config("no images to evaluate".into()));
    }
    for g in groups {
        check_size(g)?;
    }
    let ssim = Ssim::default();
    let bar = if opts.progress {
        indicatif::ProgressBar::new((total * sigmas.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating {bar:30} {pos}/{len} images {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let batch = if opts.batch == 0 { 1 } else { opts.batch };
    let mut out = Vec::new();
    for &sigma in sigmas {
        let mut scores = Scores::default();
        let mut first = 0; // index of the group's first image in the whole evaluation
        for set in groups {
            let (c, h, w) = (set.c, set.h, set.w);
            let whole = h * w <= opts.tiles.whole_limit;
            let step = if whole { batch } else { 1 };
            for start in (0..set.n).step_by(step) {
                let idx: Vec<usize> = (start..(start + step).min(set.n)).collect();
                let clean: Vec<f32> = idx.iter().flat_map(|&i| set.image_f32(i)).collect();
                let noisy: Vec<f32> = idx
                    .iter()
                    .flat_map(|&i| noisy_at(set, i, first + i, sigma, opts.seed, &opts.corruption))
                    .collect();
                let levels: Vec<f64> = if opts.estimate {
                    noisy
                        .chunks(c * h * w)
                        .map(|img| estimate_sigma(img, (c, h, w)))
                        .collect()
                } else {
                    vec![sigma / 255.0]
                };
                if opts.estimate {
                    scores.estimates.extend(levels.iter().map(|s| s * 255.0));
                }
                let shape = (idx.len(), c, h, w);
                let den = if whole {
                    let noisy = Tensor::from_slice(&noisy, shape, device)?;
                    ensemble::denoise(model, &noisy, &levels, opts.tiles.ensemble)?
                        .to_device(&Device::Cpu)?
                } else {
                    let den = tiles::denoise_image(
                        model,
                        &noisy,
                        (c, h, w),
                        levels[0],
                        &opts.tiles,
                        &mut |_, _| {},
                    )?;
                    Tensor::from_vec(den, shape, &Device::Cpu)?
                };
                let clean = Tensor::from_vec(clean, shape, &Device::Cpu)?;
                let noisy = Tensor::from_vec(noisy, shape, &Device::Cpu)?;
                scores.add(&ssim, &noisy, &den, &clean)?;
                bar.inc(idx.len() as u64);
            }
            first += set.n;
        }
        out.push(scores.result(sigma, opts.estimate));
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The results as a Markdown table.
pub fn table(results: &[EvalResult]) -> String {
    let mut s = String::from("| sigma | model given | images | noisy PSNR | noisy SSIM | denoised PSNR | denoised SSIM |\n|---:|:---|---:|---:|---:|---:|---:|\n");
    for r in results {
        let given = match r.mean_estimate {
            Some(m) => format!("estimate (mean {m:.2})"),
            None => "true sigma".to_string(),
        };
        s += &format!(
            "| {} | {given} | {} | {:.2} | {:.4} | {:.2} | {:.4} |\n",
            r.sigma, r.images, r.noisy_psnr, r.noisy_ssim, r.psnr, r.ssim
        );
    }
    s
}

/// Converts a `(c, h, w)` tensor in `[0, 1]` to an RGB image.
pub fn to_rgb(t: &Tensor) -> Result<image::RgbImage> {
    let (c, h, w) = t.dims3()?;
    let v = t.clamp(0f32, 1f32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let px = |ch: usize| (v[ch.min(c - 1) * h * w + y * w + x] * 255.0).round() as u8;
            img.put_pixel(x as u32, y as u32, image::Rgb([px(0), px(1), px(2)]));
        }
    }
    Ok(img)
}

/// Writes a grid: for each noise level (noise seeded and made as `opts` says) three rows (noisy, denoised, clean) of the first
/// `columns` images, each pixel drawn as a `scale` x `scale` block.
pub fn write_grid(
    model: &Model,
    set: &ImageSet,
    sigmas: &[f64],
    opts: &EvalOptions,
    columns: usize,
    device: &Device,
    path: &Path,
) -> Result<()> {
    let k = columns.min(set.n);
    let (c, h, w) = (set.c, set.h, set.w);
    let scale = if h * w <= 64 * 64 { 4 } else { 1 };
    let pad = 2;
    let rows = 3 * sigmas.len();
    let (cw, ch) = ((w * scale + pad) as u32, (h * scale + pad) as u32);
    let mut canvas = image::RgbImage::from_pixel(
        cw * k as u32 + pad as u32,
        ch * rows as u32 + pad as u32,
        image::Rgb([255, 255, 255]),
    );
    let clean = Tensor::from_vec(
        (0..k).flat_map(|i| set.image_f32(i)).collect::<Vec<_>>(),
        (k, c, h, w),
        &Device::Cpu,
    )?;
    for (si, &sigma) in sigmas.iter().enumerate() {
        let noisy = Tensor::from_vec(
            (0..k)
                .flat_map(|i| noisy_image(set, i, sigma, opts.seed, &opts.corruption))
                .collect::<Vec<_>>(),
            (k, c, h, w),
            &Device::Cpu,
        )?;
        let den = denoise_batch(model, &noisy.to_device(device)?, &[sigma / 255.0])?
            .to_device(&Device::Cpu)?;
        for (r, t) in [&noisy, &den, &clean].into_iter().enumerate() {
            for i in 0..k {
                let img = to_rgb(&t.get(i)?)?;
                let img = image::imageops::resize(
                    &img,
                    (w * scale) as u32,
                    (h * scale) as u32,
                    image::imageops::FilterType::Nearest,
                );
                let x0 = pad as u32 + i as u32 * cw;
                let y0 = pad as u32 + (3 * si + r) as u32 * ch;
                image::imageops::replace(&mut canvas, &img, x0 as i64, y0 as i64);
            }
        }
    }
    save_png_atomic(&canvas, path)
}

/// Lays images out in a grid of `columns`, with a white 2-pixel border, small images
/// enlarged (nearest neighbour) to at least 96 pixels.
pub fn grid_of(images: &[image::RgbImage], columns: usize) -> image::RgbImage {
    let Some(first) = images.first() else {
        return image::RgbImage::new(1, 1);
    };
    let (w, h) = (first.width(), first.height());
    let scale = (96 / w.max(h)).max(1);
    let (cw, ch) = (w * scale + 2, h * scale + 2);
    let cols = columns.clamp(1, images.len()) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let mut canvas =
        image::RgbImage::from_pixel(cw * cols + 2, ch * rows + 2, image::Rgb([255, 255, 255]));
    for (i, img) in images.iter().enumerate() {
        let big = image::imageops::resize(
            img,
            w * scale,
            h * scale,
            image::imageops::FilterType::Nearest,
        );
        let (x0, y0) = (2 + (i as u32 % cols) * cw, 2 + (i as u32 / cols) * ch);
        image::imageops::replace(&mut canvas, &big, x0 as i64, y0 as i64);
    }
    canvas
}

/// Saves an RGB image as PNG through a temporary file and a rename.
pub fn save_png_atomic(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| TrainError::Plot(format!("{}: {e}", path.display())))?;
    denoise_model::checkpoint::write_atomic(path, &bytes)?;
    Ok(())
}
