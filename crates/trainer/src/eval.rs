//! Evaluation: PSNR and SSIM of the noisy input and of the model's output at several noise
//! levels, per image then averaged; and a PNG grid of noisy / denoised / clean images.

use std::path::Path;

use candle_core::{Device, Tensor};
use denoise_data::estimate::estimate_sigma;
use denoise_data::noise::{add_gaussian, rng_for};
use denoise_data::ImageSet;
use denoise_loss::{psnr, Ssim};
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

/// The noisy version of image `i` at `sigma` (0..255 units): noise from `(seed, sigma, i)`,
/// so it does not depend on the batch size; not clipped.
pub fn noisy_image(set: &ImageSet, i: usize, sigma: f64, seed: u64) -> Vec<f32> {
    let mut rng = rng_for(&[seed, 0x4556_414c, sigma.to_bits(), i as u64]);
    add_gaussian(&set.image_f32(i), (sigma / 255.0) as f32, &mut rng)
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

/// Scores `model` on every image of `set` at each noise level in `sigmas`, giving it the true
/// noise level, or, with `estimate`, the level [`estimate_sigma`] finds in each noisy image.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    set: &ImageSet,
    sigmas: &[f64],
    estimate: bool,
    seed: u64,
    batch: usize,
    device: &Device,
    progress: bool,
) -> Result<Vec<EvalResult>> {
    if set.n == 0 {
        return Err(TrainError::Config("no images to evaluate".into()));
    }
    check_size(set)?;
    let ssim = Ssim::default();
    let shape = |n| (n, set.c, set.h, set.w);
    let bar = if progress {
        indicatif::ProgressBar::new((set.n * sigmas.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "evaluating {bar:30} {pos}/{len} images {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let mut out = Vec::new();
    for &sigma in sigmas {
        let (mut np, mut ns, mut dp, mut ds) = (vec![], vec![], vec![], vec![]);
        let mut estimates = Vec::new();
        for start in (0..set.n).step_by(batch.max(1)) {
            let idx: Vec<usize> = (start..(start + batch.max(1)).min(set.n)).collect();
            let clean: Vec<f32> = idx.iter().flat_map(|&i| set.image_f32(i)).collect();
            let noisy: Vec<f32> = idx
                .iter()
                .flat_map(|&i| noisy_image(set, i, sigma, seed))
                .collect();
            let levels: Vec<f64> = if estimate {
                noisy
                    .chunks(set.c * set.h * set.w)
                    .map(|img| estimate_sigma(img, (set.c, set.h, set.w)))
                    .collect()
            } else {
                vec![sigma / 255.0]
            };
            if estimate {
                estimates.extend(levels.iter().map(|s| s * 255.0));
            }
            let clean = Tensor::from_vec(clean, shape(idx.len()), &Device::Cpu)?;
            let noisy = Tensor::from_vec(noisy, shape(idx.len()), &Device::Cpu)?;
            let den = denoise_batch(model, &noisy.to_device(device)?, &levels)?
                .to_device(&Device::Cpu)?;
            np.extend(psnr(&noisy, &clean, 1.0)?.to_vec1::<f32>()?);
            ns.extend(ssim.per_image(&noisy, &clean)?.to_vec1::<f32>()?);
            dp.extend(psnr(&den, &clean, 1.0)?.to_vec1::<f32>()?);
            ds.extend(ssim.per_image(&den, &clean)?.to_vec1::<f32>()?);
            bar.inc(idx.len() as u64);
        }
        out.push(EvalResult {
            sigma,
            images: set.n,
            noisy_psnr: mean(&np),
            noisy_ssim: mean(&ns),
            psnr: mean(&dp),
            ssim: mean(&ds),
            mean_estimate: estimate
                .then(|| estimates.iter().sum::<f64>() / estimates.len().max(1) as f64),
        });
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

/// Writes a grid: for each noise level three rows (noisy, denoised, clean) of the first
/// `columns` images, each pixel drawn as a `scale` x `scale` block.
pub fn write_grid(
    model: &Model,
    set: &ImageSet,
    sigmas: &[f64],
    seed: u64,
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
                .flat_map(|i| noisy_image(set, i, sigma, seed))
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
