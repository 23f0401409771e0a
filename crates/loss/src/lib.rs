//! Differentiable image losses and quality metrics on candle tensors.
//!
//! `denoise-loss` is the one crate of the workspace meant to be imported on its own: it gives
//! SSIM (Wang et al. 2004, as scikit-image computes it: 11x11 Gaussian window with sigma 1.5,
//! K1 = 0.01, K2 = 0.03, mean over the valid region and then over channels), PSNR, L1, MSE and
//! the original project's training mix `w * (1 - SSIM) + (1 - w) * L1` with `w = 0.84`, and
//! EDM's noise-level-weighted MSE ([`weighted_mse`], [`edm_weight`]).
//! Every loss is built from candle operations, so gradients flow through it on any device.
//! It knows nothing of models, files or training loops.
//!
//! Images are `(N, C, H, W)` or `(C, H, W)` tensors of a float dtype; values are compared on the
//! scale given by `data_range` (1.0 for images in `[0, 1]`).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use denoise_loss::{psnr, MixLoss, Ssim};
//!
//! let dev = Device::Cpu;
//! let clean = Tensor::rand(0f32, 1f32, (2, 3, 16, 16), &dev)?;
//! let noisy = (&clean + 0.05)?;
//! let ssim = Ssim::default().mean(&clean, &clean)?.to_scalar::<f32>()?;
//! assert!((ssim - 1.0).abs() < 1e-5);
//! let db = psnr(&noisy, &clean, 1.0)?.to_vec1::<f32>()?;
//! assert!((db[0] - 26.0206).abs() < 1e-2); // an offset of 0.05 everywhere: 10 log10(1 / 0.0025)
//! let loss = MixLoss::default().forward(&noisy, &clean)?; // a scalar, differentiable
//! assert!(loss.to_scalar::<f32>()? > 0.0);
//! # Ok::<(), denoise_loss::LossError>(())
//! ```

#![warn(missing_docs)]

use candle_core::{DType, Device, Tensor, D};

/// What can go wrong when computing a loss or metric.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// The two images do not have the same shape.
    #[error("image shapes differ: {0:?} vs {1:?}")]
    ShapeMismatch(Vec<usize>, Vec<usize>),
    /// An image is not `(C, H, W)` or `(N, C, H, W)`.
    #[error("expected an image tensor of shape (C, H, W) or (N, C, H, W), got {0:?}")]
    BadRank(Vec<usize>),
    /// The image is smaller than the SSIM window.
    #[error(
        "SSIM needs images of at least {window}x{window} pixels, got {w}x{h} (width x height)"
    )]
    TooSmall {
        /// The window's side.
        window: usize,
        /// The image's height.
        h: usize,
        /// The image's width.
        w: usize,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A result whose error is a [`LossError`].
pub type Result<T> = std::result::Result<T, LossError>;

fn as_4d(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    if a.dims() != b.dims() {
        return Err(LossError::ShapeMismatch(
            a.dims().to_vec(),
            b.dims().to_vec(),
        ));
    }
    match a.rank() {
        4 => Ok((a.clone(), b.clone())),
        3 => Ok((a.unsqueeze(0)?, b.unsqueeze(0)?)),
        _ => Err(LossError::BadRank(a.dims().to_vec())),
    }
}

/// Mean absolute error over all elements (a scalar).
pub fn l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = as_4d(a, b)?;
    Ok((a - b)?.abs()?.mean_all()?)
}

/// Mean squared error over all elements (a scalar).
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a, b) = as_4d(a, b)?;
    Ok((a - b)?.sqr()?.mean_all()?)
}

/// Mean over all elements of `w_i (a - b)^2`, with one weight per image (`weights` of shape
/// `(N,)`): a scalar, differentiable in `a` and `b`.
pub fn weighted_mse(a: &Tensor, b: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let (a, b) = as_4d(a, b)?;
    let n = a.dim(0)?;
    let w = weights.to_dtype(a.dtype())?.reshape((n, 1, 1, 1))?;
    Ok((a - b)?.sqr()?.broadcast_mul(&w)?.mean_all()?)
}

/// EDM's loss weight for an image whose noise level is `sigma` on the `[0, 1]` pixel scale,
/// for a denoiser compared with the clean image on that same scale: `lambda(s) = (s^2 + sd^2)
/// / (s sd)^2` with `s = 2 sigma` on EDM's `[-1, 1]` scale, times 4 because differences on
/// the pixel scale are half as large. `sigma` is floored at EDM's `sigma_min` (0.002 / 2).
pub fn edm_weight(sigma: f64, sigma_data: f64) -> f64 {
    let s = (2.0 * sigma).max(0.002);
    4.0 * (s * s + sigma_data * sigma_data) / (s * sigma_data).powi(2)
}

/// Peak signal-to-noise ratio in dB, one value per image (shape `(N,)`), computed in f32.
///
/// Identical images give `+inf`, as scikit-image does.
pub fn psnr(a: &Tensor, b: &Tensor, data_range: f64) -> Result<Tensor> {
    let (a, b) = as_4d(a, b)?;
    let n = a.dim(0)?;
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let mse = (a - b)?.sqr()?.reshape((n, ()))?.mean(1)?;
    // 10 log10(R^2 / mse) = 10/ln(10) * (ln(R^2) - ln(mse))
    let ln_r2 = (data_range * data_range).ln();
    let db = ((mse.log()?.neg()? + ln_r2)? * (10.0 / std::f64::consts::LN_10))?;
    Ok(db)
}

/// The normalised 1-D Gaussian window that scikit-image uses (`truncate = 3.5`).
pub fn gaussian_window(size: usize, sigma: f64) -> Vec<f64> {
    let r = (size as f64 - 1.0) / 2.0;
    let w: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - r;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Structural similarity with a Gaussian window, as scikit-image computes it with
/// `gaussian_weights=True, use_sample_covariance=False`.
#[derive(Debug, Clone, Copy)]
pub struct Ssim {
    /// Side of the square window (odd). Default 11.
    pub window: usize,
    /// Standard deviation of the Gaussian window. Default 1.5.
    pub sigma: f64,
    /// Stabiliser of the luminance term: `C1 = (k1 * data_range)^2`. Default 0.01.
    pub k1: f64,
    /// Stabiliser of the contrast-structure term: `C2 = (k2 * data_range)^2`. Default 0.03.
    pub k2: f64,
    /// The dynamic range of the images (1.0 for `[0, 1]`).
    pub data_range: f64,
}

impl Default for Ssim {
    fn default() -> Self {
        Self {
            window: 11,
            sigma: 1.5,
            k1: 0.01,
            k2: 0.03,
            data_range: 1.0,
        }
    }
}

impl Ssim {
    /// The banded matrix `(n, n - window + 1)` whose product with a signal of length `n` is
    /// the valid-region Gaussian filter. A constant: no gradient is ever computed for it.
    fn band(&self, n: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let g = gaussian_window(self.window, self.sigma);
        let m = n + 1 - self.window;
        let mut v = vec![0f32; n * m];
        for j in 0..m {
            for (k, gk) in g.iter().enumerate() {
                v[(j + k) * m + j] = *gk as f32;
            }
        }
        Ok(Tensor::from_vec(v, (n, m), dev)?.to_dtype(dtype)?)
    }

    /// The SSIM map over the valid region: `(N, C, H - window + 1, W - window + 1)`.
    pub fn map(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (a, b) = as_4d(a, b)?;
        let (n, c, h, w) = a.dims4()?;
        if h < self.window || w < self.window {
            return Err(LossError::TooSmall {
                window: self.window,
                h,
                w,
            });
        }
        let dev = a.device();
        let gw = self.band(w, a.dtype(), dev)?; // (W, Wv)
        let gh = self.band(h, a.dtype(), dev)?.t()?.contiguous()?; // (Hv, H)
        let (hv, wv) = (h + 1 - self.window, w + 1 - self.window);
        // Filter the five signals at once: stack them along the batch dimension.
        let stacked = Tensor::cat(&[&a, &b, &(&a * &a)?, &(&b * &b)?, &(&a * &b)?], 0)?;
        let rows = stacked.reshape((5 * n * c * h, w))?.matmul(&gw)?; // (5NCH, Wv)
        let rows = rows.reshape((5 * n * c, h, wv))?;
        let filt = gh.broadcast_left(5 * n * c)?.matmul(&rows)?; // (5NC, Hv, Wv)
        let filt = filt.reshape((5, n, c, hv, wv))?;
        let mu_a = filt.get(0)?;
        let mu_b = filt.get(1)?;
        let mu_a2 = mu_a.sqr()?;
        let mu_b2 = mu_b.sqr()?;
        let mu_ab = (&mu_a * &mu_b)?;
        let var_a = (filt.get(2)? - &mu_a2)?;
        let var_b = (filt.get(3)? - &mu_b2)?;
        let cov = (filt.get(4)? - &mu_ab)?;
        let c1 = (self.k1 * self.data_range).powi(2);
        let c2 = (self.k2 * self.data_range).powi(2);
        let num = ((mu_ab * 2.0)? + c1)?.mul(&((cov * 2.0)? + c2)?)?;
        let den = ((mu_a2 + mu_b2)? + c1)?.mul(&((var_a + var_b)? + c2)?)?;
        Ok(num.div(&den)?)
    }

    /// SSIM per image and channel: `(N, C)`.
    pub fn per_channel(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let m = self.map(a, b)?;
        let (n, c, _, _) = m.dims4()?;
        Ok(m.reshape((n, c, ()))?.mean(D::Minus1)?)
    }

    /// SSIM per image (mean over channels): `(N,)`.
    pub fn per_image(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(self.per_channel(a, b)?.mean(1)?)
    }

    /// Mean SSIM over the batch (a scalar).
    pub fn mean(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(self.map(a, b)?.mean_all()?)
    }
}

/// The original project's training loss: `ssim_weight * (1 - SSIM) + (1 - ssim_weight) * L1`.
#[derive(Debug, Clone, Copy)]
pub struct MixLoss {
    /// Weight of the SSIM term; the L1 term gets `1 - ssim_weight`. Default 0.84.
    pub ssim_weight: f64,
    /// The SSIM of the SSIM term.
    pub ssim: Ssim,
}

impl Default for MixLoss {
    fn default() -> Self {
        Self {
            ssim_weight: 0.84,
            ssim: Ssim::default(),
        }
    }
}

impl MixLoss {
    /// The mix with this SSIM weight and the default SSIM.
    pub fn new(ssim_weight: f64) -> Self {
        Self {
            ssim_weight,
            ..Self::default()
        }
    }

    /// The loss of `pred` against `target`, a scalar.
    pub fn forward(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        let s = self.ssim.mean(pred, target)?;
        let l = l1(pred, target)?;
        let ssim_term = (s.affine(-1.0, 1.0)? * self.ssim_weight)?;
        Ok((ssim_term + (l * (1.0 - self.ssim_weight))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_normalised_and_symmetric() {
        let g = gaussian_window(11, 1.5);
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((g[0] - g[10]).abs() < 1e-15);
        assert!(g[5] > g[4]);
    }

    #[test]
    fn band_matrix_filters_a_constant_to_itself() -> Result<()> {
        let s = Ssim::default();
        let x = Tensor::ones((1, 20), DType::F32, &Device::Cpu)?;
        let y = x.matmul(&s.band(20, DType::F32, &Device::Cpu)?)?;
        for v in y.flatten_all()?.to_vec1::<f32>()? {
            assert!((v - 1.0).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn shape_errors_are_typed() {
        let a = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((1, 3, 16, 15), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(l1(&a, &b), Err(LossError::ShapeMismatch(..))));
        let small = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            Ssim::default().mean(&small, &small),
            Err(LossError::TooSmall { .. })
        ));
    }
}
