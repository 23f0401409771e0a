//! An exponential moving average of the weights (EDM's, with its half-life ramp-up).

use denoise_model::{Checkpoint, Model};

use crate::Result;

/// A second network whose weights trail the trained ones.
pub struct Ema {
    /// The averaged network (same architecture as the trained one).
    pub model: Model,
    /// Half-life in images.
    pub half_life: f64,
    /// While `rampup * images_seen` is shorter, it is the half-life.
    pub rampup: f64,
}

impl Ema {
    /// An average that starts at `model`'s current weights.
    pub fn new(model: &Model, half_life: f64, rampup: f64) -> Result<Self> {
        let copy = Model::new(&model.config(), model.device(), 0)?;
        for ((_, e), (_, w)) in copy.vars().iter().zip(model.vars()) {
            e.set(&w.as_tensor().detach())?;
        }
        Ok(Self {
            model: copy,
            half_life,
            rampup,
        })
    }

    /// Restores the average saved in a checkpoint as `ema.*` (or starts it at `model`).
    pub fn resume(model: &Model, ckpt: &Checkpoint, half_life: f64, rampup: f64) -> Result<Self> {
        let ema = Self::new(model, half_life, rampup)?;
        if ckpt.has_tensor(&format!("ema.{}", model.vars()[0].0)) {
            ema.model.load_weights_from(ckpt, "ema")?;
        }
        Ok(ema)
    }

    /// The decay after a batch of `batch` images, `images_seen` counted after it.
    pub fn beta(&self, images_seen: u64, batch: usize) -> f64 {
        let hl = self
            .half_life
            .min(self.rampup * images_seen as f64)
            .max(1e-8);
        0.5f64.powf(batch as f64 / hl)
    }

    /// `ema = beta ema + (1 - beta) w`, in place: one pass over each tensor (Adam's moment
    /// update without weight decay, the same op and CUDA kernel) instead of three passes and
    /// two temporaries.
    pub fn update(&self, model: &Model, images_seen: u64, batch: usize) -> Result<()> {
        let lerp = crate::adam_ops::Moment {
            beta: self.beta(images_seen, batch),
            weight_decay: 0.0,
            square: false,
        };
        for ((_, e), (_, w)) in self.model.vars().iter().zip(model.vars()) {
            let w = w.as_tensor();
            e.as_tensor().inplace_op3(w, w, &lerp)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use denoise_model::ModelConfig;

    /// The in-place update gives `beta e + (1 - beta) w` as candle's ops compute it (to f32
    /// rounding), for every tensor, and leaves the trained weights alone.
    #[test]
    fn update_is_the_moving_average() {
        let mut cfg = ModelConfig::from_arch("cond-unet").unwrap();
        cfg.set_width(8);
        let trained = Model::new(&cfg, &Device::Cpu, 1).unwrap();
        let ema = Ema::new(&Model::new(&cfg, &Device::Cpu, 2).unwrap(), 1000.0, 0.05).unwrap();
        let before: Vec<_> = ema
            .model
            .vars()
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        let weights: Vec<_> = trained
            .vars()
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        let beta = ema.beta(64_000, 64);
        assert!(beta > 0.5 && beta < 1.0, "{beta}");
        ema.update(&trained, 64_000, 64).unwrap();
        for (((_, e), e0), w) in ema.model.vars().iter().zip(&before).zip(&weights) {
            let want = ((e0 * beta).unwrap() + (w * (1.0 - beta)).unwrap()).unwrap();
            let diff = (e.as_tensor() - &want).unwrap().abs().unwrap();
            let worst = diff
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(worst <= 1e-6, "{worst}");
        }
        for ((_, w), w0) in trained.vars().iter().zip(&weights) {
            let same = (w.as_tensor() - w0)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}
