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

    /// `ema = beta ema + (1 - beta) w`.
    pub fn update(&self, model: &Model, images_seen: u64, batch: usize) -> Result<()> {
        let beta = self.beta(images_seen, batch);
        for ((_, e), (_, w)) in self.model.vars().iter().zip(model.vars()) {
            let next = ((e.as_tensor() * beta)? + (w.as_tensor().detach() * (1.0 - beta))?)?;
            e.set(&next)?;
        }
        Ok(())
    }
}
