//! Learning-rate schedule and early stopping, with their state in the open for checkpoints.

use serde::{Deserialize, Serialize};

/// PyTorch's `StepLR`: the rate is multiplied by `gamma` every `step_size` epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepLr {
    /// The rate of the first `step_size` epochs.
    pub base_lr: f64,
    /// Epochs between decays (0: a constant rate).
    pub step_size: usize,
    /// Factor of each decay.
    pub gamma: f64,
}

impl StepLr {
    /// The rate during epoch `epoch` (counted from 0).
    pub fn lr(&self, epoch: usize) -> f64 {
        // A step size of 0 means a constant rate.
        let k = epoch.checked_div(self.step_size).unwrap_or(0);
        self.base_lr * self.gamma.powi(k as i32)
    }
}

/// Stops after `patience` validations in a row without a better loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Validations without improvement that stop the run (0: never).
    pub patience: usize,
    /// The best validation loss so far.
    pub best: Option<f64>,
    /// Validations in a row since the best (named after the original's per-epoch count).
    pub bad_epochs: usize,
}

impl EarlyStopping {
    /// No validation seen yet.
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Records a validation loss; returns whether it is the best so far.
    pub fn observe(&mut self, loss: f64) -> bool {
        if self.best.is_none_or(|b| loss < b) {
            self.best = Some(loss);
            self.bad_epochs = 0;
            true
        } else {
            self.bad_epochs += 1;
            false
        }
    }

    /// Whether the run should stop now.
    pub fn should_stop(&self) -> bool {
        self.patience > 0 && self.bad_epochs >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_matches_pytorch() {
        let s = StepLr {
            base_lr: 1e-3,
            step_size: 10,
            gamma: 0.7,
        };
        assert_eq!(s.lr(0), 1e-3);
        assert_eq!(s.lr(9), 1e-3);
        assert!((s.lr(10) - 7e-4).abs() < 1e-15);
        assert!((s.lr(25) - 4.9e-4).abs() < 1e-15);
    }

    #[test]
    fn early_stopping_counts_epochs_without_improvement() {
        let mut e = EarlyStopping::new(3);
        assert!(e.observe(1.0));
        assert!(!e.observe(1.0));
        assert!(!e.observe(1.1));
        assert!(!e.should_stop());
        assert!(e.observe(0.9));
        for _ in 0..3 {
            e.observe(2.0);
        }
        assert!(e.should_stop());
    }
}
