//! Device self-test: the same network, batch and loss on the CPU and on another device, with
//! outputs, loss and every parameter's gradient compared. It is how a GPU build checks its
//! kernels against the CPU reference on the machine where it runs.

use candle_core::{DType, Device, Tensor};
use denoise_loss::MixLoss;
use denoise_model::{Model, ModelConfig, SeedUnetConfig};
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// max |a - b| / max |b|
    pub rel_err: f64,
    pub passed: bool,
}

fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?.max(1e-12);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f64>()? / scale)
}

/// Compares `device` with the CPU on a seed-unet of width `width`, batch `n` of `size`x`size`.
pub fn selftest(
    device: &Device,
    width: usize,
    n: usize,
    size: usize,
    tol: f64,
) -> Result<Vec<Check>> {
    let config = ModelConfig::SeedUnet(SeedUnetConfig {
        base: width,
        ..Default::default()
    });
    let cpu = Model::new(&config, &Device::Cpu, 7)?;
    let dev = Model::new(&config, device, 0)?;
    for ((_, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        b.set(&a.as_tensor().to_device(device)?)?;
    }
    let clean = Tensor::rand(0f32, 1f32, (n, 3, size, size), &Device::Cpu)?;
    let noisy = (&clean + Tensor::randn(0f32, 0.1f32, clean.shape(), &Device::Cpu)?)?;
    let loss = MixLoss::default();
    let mut checks = Vec::new();
    let mut push = |name: String, e: f64| {
        checks.push(Check {
            name,
            rel_err: e,
            passed: e < tol,
        })
    };

    let out_c = cpu.forward(&noisy, None)?;
    let out_d = dev.forward(&noisy.to_device(device)?, None)?;
    push("forward".into(), rel(&out_d, &out_c)?);
    let l_c = loss.forward(&out_c, &clean)?;
    let l_d = loss.forward(&out_d, &clean.to_device(device)?)?;
    push("loss".into(), rel(&l_d, &l_c)?);
    let g_c = l_c.backward()?;
    let g_d = l_d.backward()?;
    for ((name, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        let (Some(ga), Some(gb)) = (g_c.get(a.as_tensor()), g_d.get(b.as_tensor())) else {
            push(format!("grad {name} (missing)"), f64::INFINITY);
            continue;
        };
        push(format!("grad {name}"), rel(gb, ga)?);
    }
    Ok(checks)
}
