//! Training losses read from the device in groups: summed where they are computed and read
//! together, since reading a value waits for everything queued before it.

use candle_core::{DType, Tensor};

use crate::{Result, TrainError};

/// The training loss since the last validation.
#[derive(Default)]
pub(crate) struct Running {
    pub sum: f64,
    pub n: u64,
}

/// Training losses not read yet: summed on the device (one small addition per step) and read
/// together, since reading a value waits for everything queued on the device.
#[derive(Default)]
pub(crate) struct PendingLosses {
    sum: Option<Tensor>,
    n: u64,
}

impl PendingLosses {
    pub fn push(&mut self, loss: &Tensor) -> Result<()> {
        let loss = loss.detach().to_dtype(DType::F32)?;
        self.sum = Some(match self.sum.take() {
            Some(s) => (s + loss)?,
            None => loss,
        });
        self.n += 1;
        Ok(())
    }

    /// Reads the pending losses into `running` and returns their mean (`None` when there were
    /// none). A mean that is not finite stops training: some loss at or before `step` was not.
    pub fn settle(&mut self, step: u64, running: &mut Running) -> Result<Option<f64>> {
        let Some(sum) = self.sum.take() else {
            return Ok(None);
        };
        let n = std::mem::take(&mut self.n);
        let sum = sum.to_scalar::<f32>()? as f64;
        let mean = sum / n as f64;
        if !mean.is_finite() {
            return Err(TrainError::Diverged { step, loss: mean });
        }
        running.sum += sum;
        running.n += n;
        Ok(Some(mean))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(v: f32) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn pending_losses_are_read_together() {
        let (mut pending, mut running) = (PendingLosses::default(), Running::default());
        assert_eq!(pending.settle(1, &mut running).unwrap(), None);
        for v in [1.0, 2.0, 4.5] {
            pending.push(&scalar(v)).unwrap();
        }
        assert_eq!(pending.settle(3, &mut running).unwrap(), Some(2.5));
        assert_eq!((running.sum, running.n), (7.5, 3));
        // Read once: nothing is left to read.
        assert_eq!(pending.settle(3, &mut running).unwrap(), None);
        pending.push(&scalar(0.5)).unwrap();
        assert_eq!(pending.settle(4, &mut running).unwrap(), Some(0.5));
        assert_eq!((running.sum, running.n), (8.0, 4));
    }

    #[test]
    fn a_loss_that_is_not_finite_stops_training_when_read() {
        let (mut pending, mut running) = (PendingLosses::default(), Running::default());
        for v in [1.0, f32::NAN, 2.0] {
            pending.push(&scalar(v)).unwrap();
        }
        match pending.settle(12, &mut running) {
            Err(TrainError::Diverged { step: 12, loss }) => assert!(loss.is_nan()),
            other => panic!("expected Diverged at step 12, got {other:?}"),
        }
        // Nothing of the diverged window reaches the running mean.
        assert_eq!(running.n, 0);
    }
}
