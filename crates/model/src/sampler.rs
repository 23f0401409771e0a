//! EDM's deterministic samplers (Karras et al. 2022, Algorithm 1): new images from pure noise.
//!
//! The sampler works on EDM's scale (data in `[-1, 1]`, noise levels up to `sigma_max = 80`)
//! and needs only a denoiser `D(x; sigma)` ([`Denoiser`]); [`ModelDenoiser`] adapts a
//! conditioned [`Model`] (whose interface is on the `[0, 1]` pixel scale). With `steps = N`
//! the noise levels are `t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho`
//! for `i < N`, then `t_N = 0`; Heun takes a second-order correction on every step but the
//! last, so 18 steps cost 35 network evaluations.

use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Model, ModelError, Result};

/// A denoiser `D(x; sigma)` on EDM's scale: `x` `(N, C, H, W)`, one `sigma` for the batch.
pub trait Denoiser {
    /// The denoised estimate of `x` at noise level `sigma`.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;
}

/// First or second order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One network evaluation per step.
    Euler,
    /// Euler plus a trapezoidal correction: two evaluations per step, except the last.
    Heun,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "euler" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            _ => Err(format!("unknown sampler `{s}` (expected heun or euler)")),
        }
    }
}

/// The sampler's settings; the defaults are EDM's for CIFAR-10.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Steps from `sigma_max` down to 0. Default 18.
    pub steps: usize,
    /// The last noise level before 0, on the `[-1, 1]` scale. Default 0.002.
    pub sigma_min: f64,
    /// The starting noise level, on the `[-1, 1]` scale. Default 80.
    pub sigma_max: f64,
    /// Spacing of the levels: larger spends more steps at low noise. Default 7.
    pub rho: f64,
    /// Euler or Heun. Default Heun.
    pub method: Method,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            steps: 18,
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
            method: Method::Heun,
        }
    }
}

impl SamplerConfig {
    /// The noise levels `t_0 > t_1 > ... > t_{N-1} > t_N = 0`.
    pub fn sigmas(&self) -> Vec<f64> {
        let n = self.steps;
        let (a, b) = (
            self.sigma_max.powf(1.0 / self.rho),
            self.sigma_min.powf(1.0 / self.rho),
        );
        let mut t: Vec<f64> = (0..n)
            .map(|i| {
                let f = if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                (a + f * (b - a)).powf(self.rho)
            })
            .collect();
        t.push(0.0);
        t
    }

    /// Network evaluations one sample costs.
    pub fn evaluations(&self) -> usize {
        match self.method {
            Method::Euler => self.steps,
            Method::Heun => 2 * self.steps - 1,
        }
    }

    /// Refuses settings the sampler cannot run, saying which.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min && self.rho > 0.0) {
            return Err(format!(
                "need 0 < sigma_min < sigma_max and rho > 0, got {}, {}, {}",
                self.sigma_min, self.sigma_max, self.rho
            ));
        }
        Ok(())
    }
}

/// Standard normal noise of a shape, drawn from `seed` (Box-Muller on ChaCha8).
pub fn gaussian(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = crate::rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
}

/// Samples a batch `shape` from noise drawn from `seed`; returns it on EDM's scale.
/// `progress` is called after each step with `(step, steps)`.
pub fn sample(
    denoiser: &dyn Denoiser,
    shape: &[usize],
    config: &SamplerConfig,
    seed: u64,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    config.check().map_err(ModelError::BadConfig)?;
    let t = config.sigmas();
    let mut x = (gaussian(shape, seed, device)? * t[0])?;
    for i in 0..config.steps {
        let (ti, tn) = (t[i], t[i + 1]);
        let d = ((&x - denoiser.denoise(&x, ti)?)? / ti)?;
        let euler = (&x + (&d * (tn - ti))?)?;
        x = if config.method == Method::Heun && tn > 0.0 {
            let d2 = ((&euler - denoiser.denoise(&euler, tn)?)? / tn)?;
            (&x + ((d + d2)? * (0.5 * (tn - ti)))?)?
        } else {
            euler
        };
        // The network's weights are variables, so every output carries its autograd graph;
        // cut it each step, or all the evaluations' activations stay alive.
        x = x.detach();
        progress(i + 1, config.steps);
    }
    Ok(x)
}

/// A conditioned [`Model`] seen as a denoiser on EDM's scale. It runs the network on at most
/// `max_pixels` pixels at a time (whole images, at least one), so that memory stays bounded
/// however many images are sampled; the result does not depend on it.
pub struct ModelDenoiser<'a> {
    /// The network (conditioned).
    pub model: &'a Model,
    /// Pixels per network evaluation at most.
    pub max_pixels: usize,
}

impl<'a> ModelDenoiser<'a> {
    /// Pixels per network evaluation by default: 256 CIFAR-10 images (about 1 GB of
    /// cond-unet's activations in f32).
    pub const MAX_PIXELS: usize = 256 * 32 * 32;

    /// The model, with [`Self::MAX_PIXELS`].
    pub fn new(model: &'a Model) -> Self {
        Self {
            model,
            max_pixels: Self::MAX_PIXELS,
        }
    }

    fn run(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let n = x.dim(0)?;
        let pix = ((x + 1.0)? * 0.5)?;
        let s = Tensor::full((sigma / 2.0) as f32, n, x.device())?.to_dtype(x.dtype())?;
        let d = crate::layers::inference(|| self.model.forward(&pix, Some(&s), None))?.detach();
        Ok(((d * 2.0)? - 1.0)?)
    }
}

impl Denoiser for ModelDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let chunk = (self.max_pixels / (h * w).max(1)).max(1);
        if n <= chunk {
            return self.run(x, sigma);
        }
        let parts = (0..n)
            .step_by(chunk)
            .map(|i| self.run(&x.narrow(0, i, chunk.min(n - i))?, sigma))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// EDM-scale samples to pixels in `[0, 1]`.
pub fn to_pixels(x: &Tensor) -> Result<Tensor> {
    Ok(((x + 1.0)? * 0.5)?.clamp(0f32, 1f32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_levels_follow_the_edm_schedule() {
        let c = SamplerConfig::default();
        let t = c.sigmas();
        assert_eq!(t.len(), 19);
        assert!((t[0] - 80.0).abs() < 1e-9);
        assert!((t[17] - 0.002).abs() < 1e-12);
        assert_eq!(t[18], 0.0);
        assert!(t.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(c.evaluations(), 35);
    }
}
