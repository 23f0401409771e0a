//! Adam with L2 weight decay added to the gradient, exactly as PyTorch's
//! `torch.optim.Adam(params, lr, betas, eps, weight_decay)` (not AdamW): its moments and step
//! count are public so that they go into checkpoints and come back on resume.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::adam_ops::{Moment, Update};
use crate::Result;

/// Adam's settings, with PyTorch's meanings and the original project's values by default.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate. Default 1e-3.
    pub lr: f64,
    /// Decay of the first moment. Default 0.9.
    pub beta1: f64,
    /// Decay of the second moment. Default 0.999.
    pub beta2: f64,
    /// Added to the root of the second moment. Default 1e-8.
    pub eps: f64,
    /// L2 penalty added to the gradient (PyTorch's `Adam(weight_decay=...)`, not AdamW's
    /// decoupled decay). Default 1e-4.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// The optimizer: parameters, first and second moments, and the step count.
pub struct Adam {
    /// The settings; the learning rate changes with the schedule ([`Adam::set_lr`]).
    pub config: AdamConfig,
    /// `(name, parameter, m, v)` for every parameter.
    pub state: Vec<(String, Var, Tensor, Tensor)>,
    /// Updates made so far (for the bias corrections).
    pub step: u64,
}

impl Adam {
    /// An optimizer for these parameters, with zero moments.
    pub fn new(vars: &[(String, Var)], config: AdamConfig) -> Result<Self> {
        let state = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.clone(), v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            state,
            step: 0,
        })
    }

    /// Sets the learning rate of the next updates.
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One update from the gradients of a backward pass. Parameters without a gradient are
    /// left alone (as PyTorch skips parameters whose `.grad` is `None`). Per parameter, three
    /// in-place passes (first moment, second moment, parameter): custom ops on the CPU and,
    /// with the `cuda` feature, CUDA kernels.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let (bc2_sqrt, step_size) = self.advance();
        let c = self.config;
        for (_, var, m, v) in self.state.iter_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.contiguous()?;
            let p = var.as_tensor();
            let moment = |beta, square| Moment {
                beta,
                weight_decay: c.weight_decay,
                square,
            };
            m.inplace_op3(&g, p, &moment(c.beta1, false))?;
            v.inplace_op3(&g, p, &moment(c.beta2, true))?;
            let update = Update {
                step_size,
                bc2_sqrt,
                eps: c.eps,
            };
            p.inplace_op3(m, v, &update)?;
        }
        Ok(())
    }

    /// Counts the step; `(sqrt(1 - beta2^t), lr / (1 - beta1^t))`.
    fn advance(&mut self) -> (f64, f64) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.config.beta1.powi(t);
        let bc2 = 1.0 - self.config.beta2.powi(t);
        (bc2.sqrt(), self.config.lr / bc1)
    }

    /// [`Adam::step`] from candle's element-wise ops (a dozen kernels and temporaries per
    /// parameter): the reference the fused step is tested against.
    pub fn step_with_candle_ops(&mut self, grads: &GradStore) -> Result<()> {
        let (bc2_sqrt, step_size) = self.advance();
        let AdamConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        for (_, var, m, v) in self.state.iter_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: the moments must not keep this step's graph (and through it every
            // earlier step's) alive.
            let g = g.detach();
            let p = var.as_tensor().detach();
            let g = if weight_decay != 0.0 {
                (g + (&p * weight_decay)?)?
            } else {
                g
            };
            *m = ((&*m * beta1)? + (&g * (1.0 - beta1))?)?.detach();
            *v = ((&*v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?.detach();
            let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
            let update = (m.div(&denom)? * step_size)?;
            var.set(&(p - update)?)?;
        }
        Ok(())
    }
}
