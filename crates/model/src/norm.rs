//! The GroupNorm layer of `cond-unet` (learned scale and shift, optional SiLU) on
//! [`denoise_ops::norm::group_norm`].

use candle_core::{Tensor, Var};

use crate::layers::param;
use crate::params::ParamStore;
use crate::Result;

/// `GroupNorm(groups, channels)` with learned per-channel scale and shift (initialised to 1
/// and 0, as PyTorch), optionally followed by SiLU.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    /// Per-channel scale (`weight` in PyTorch).
    pub gamma: Var,
    /// Per-channel shift (`bias` in PyTorch).
    pub beta: Var,
    /// Groups the channels are split into ([`default_groups`]).
    pub groups: usize,
    /// Added to the variance. Default 1e-5.
    pub eps: f64,
}

/// Groups for `channels`: 32 where that divides them into groups of at least 4 channels,
/// otherwise the largest divisor of `channels` not above `channels / 4` (at least 1).
pub fn default_groups(channels: usize) -> usize {
    let cap = (channels / 4).clamp(1, 32);
    (1..=cap)
        .rev()
        .find(|g| channels.is_multiple_of(*g))
        .unwrap_or(1)
}

impl GroupNorm {
    /// Creates the layer for `channels` and registers its parameters.
    pub fn new(store: &mut ParamStore, name: &str, channels: usize) -> Result<Self> {
        let gamma = store.filled(&format!("{name}.weight"), channels, 1.0)?;
        let beta = store.filled(&format!("{name}.bias"), channels, 0.0)?;
        Ok(Self {
            gamma,
            beta,
            groups: default_groups(channels),
            eps: 1e-5,
        })
    }

    /// Normalises `x` `(N, C, H, W)`; applies SiLU after the affine map when `silu`
    /// ([`denoise_ops::norm::group_norm`]).
    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let (gamma, beta) = (param(&self.gamma), param(&self.beta));
        Ok(denoise_ops::norm::group_norm(
            x,
            &gamma,
            &beta,
            self.groups,
            self.eps,
            silu,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts() {
        assert_eq!(default_groups(64), 16);
        assert_eq!(default_groups(128), 32);
        assert_eq!(default_groups(256), 32);
        assert_eq!(default_groups(8), 2);
        assert_eq!(default_groups(3), 1);
        assert_eq!(default_groups(96), 24);
    }
}
