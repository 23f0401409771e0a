//! The training loss of a batch as the recipe asks for it, and the validation loss and PSNR
//! over fixed validation batches.

use candle_core::{Device, Tensor};
use denoise_data::batch::{validation_batches, BatchConfig};
use denoise_data::ImageSet;
use denoise_loss::{edm_weight, mse, psnr, weighted_mse, MixLoss};
use denoise_model::Model;

use crate::{LossKind, Result, TrainConfig};

/// A batch's noisy images, clean images and noise levels `(N,)` on `device`.
pub(crate) fn to_tensors(
    b: &denoise_data::Batch,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let shape = b.shape();
    let noisy = Tensor::from_slice(&b.noisy, shape, &Device::Cpu)?.to_device(device)?;
    let clean = Tensor::from_slice(&b.clean, shape, &Device::Cpu)?.to_device(device)?;
    let sigma = Tensor::from_slice(&b.sigmas, b.n, &Device::Cpu)?.to_device(device)?;
    Ok((noisy, clean, sigma))
}

/// The training loss of a batch.
pub struct Objective {
    /// Which loss.
    pub kind: LossKind,
    /// The L1 + SSIM mix (for [`LossKind::L1Ssim`]).
    pub mix: MixLoss,
    /// The data's standard deviation in EDM's weighting (for [`LossKind::Edm`]).
    pub sigma_data: f64,
}

impl Objective {
    /// The loss a recipe asks for, for this model.
    pub fn new(config: &TrainConfig, model: &Model) -> Self {
        let sigma_data = match model.config() {
            denoise_model::ModelConfig::CondUnet(c) => c.sigma_data,
            _ => 0.5,
        };
        Self {
            kind: config.loss_kind(),
            mix: MixLoss::new(config.ssim_weight),
            sigma_data,
        }
    }

    /// The loss of denoised `out` against `clean` for images of noise levels `sigmas`.
    pub fn loss(&self, out: &Tensor, clean: &Tensor, sigmas: &[f32]) -> Result<Tensor> {
        Ok(match self.kind {
            LossKind::L1Ssim => self.mix.forward(out, clean)?,
            LossKind::Edm => {
                let w: Vec<f32> = sigmas
                    .iter()
                    .map(|&s| edm_weight(s as f64, self.sigma_data) as f32)
                    .collect();
                let w = Tensor::from_vec(w, sigmas.len(), out.device())?;
                weighted_mse(out, clean, &w)?
            }
        })
    }

    /// The validation loss: the training loss for L1 + SSIM; the plain MSE for EDM's loss,
    /// whose weights would let the few nearly clean validation images dominate.
    pub fn validation_loss(&self, out: &Tensor, clean: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            LossKind::L1Ssim => self.mix.forward(out, clean)?,
            LossKind::Edm => mse(out, clean)?,
        })
    }
}

/// Validation loss and PSNR over the fixed validation batches.
pub(crate) fn validate(
    model: &Model,
    set: &ImageSet,
    cfg: &BatchConfig,
    objective: &Objective,
    device: &Device,
) -> Result<(f64, f64)> {
    let (mut total, mut total_psnr, mut n) = (0f64, 0f64, 0usize);
    for b in validation_batches(set, cfg) {
        let (noisy, clean, sigma) = to_tensors(&b, device)?;
        let out = denoise_model::layers::inference(|| model.forward(&noisy, Some(&sigma), None))?;
        total += objective
            .validation_loss(&out, &clean)?
            .to_scalar::<f32>()? as f64
            * b.n as f64;
        let db = psnr(&out.clamp(0f32, 1f32)?, &clean, 1.0)?.to_vec1::<f32>()?;
        total_psnr += db.iter().map(|&v| v.min(100.0) as f64).sum::<f64>();
        n += b.n;
    }
    Ok((total / n.max(1) as f64, total_psnr / n.max(1) as f64))
}
