//! Device self-test: the same network, batch and loss on the CPU and on another device, with
//! outputs, loss, every parameter's gradient and two optimizer steps compared. It is how a GPU build checks its
//! kernels against the CPU reference on the machine where it runs.

use candle_core::{DType, Device, Tensor};
use denoise_loss::MixLoss;
use denoise_model::{CondUnetConfig, Model, ModelConfig, SeedUnetConfig};
use serde::{Deserialize, Serialize};

use crate::{Adam, AdamConfig, Result};

/// One comparison of a device's result with the CPU's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was compared (`forward`, `loss`, `grad <parameter>`, ...).
    pub name: String,
    /// max |a - b| / max |b|
    pub rel_err: f64,
    /// Whether the error is within the tolerance.
    pub passed: bool,
}

/// The largest relative error of the bf16 forward check.
pub const HALF_TOL: f64 = 5e-2;

/// The largest relative L2 error of the mixed-precision gradients check.
pub const HALF_GRAD_TOL: f64 = 0.15;

/// `t`'s values on the CPU, in f64, flattened.
fn cpu64(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?)
}

/// `|a - b| / |b|` (L2 norms).
fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (cpu64(a)?, cpu64(b)?);
    let diff = (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.max(1e-30);
    Ok((diff / norm).sqrt())
}

fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (cpu64(a)?, cpu64(b)?);
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?.max(1e-12);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f64>()? / scale)
}

/// Compares `device` with the CPU on a seed-unet and a cond-unet of width `width`, batch `n`
/// of `size`x`size`; check names start with the architecture.
pub fn selftest(
    device: &Device,
    width: usize,
    n: usize,
    size: usize,
    tol: f64,
) -> Result<Vec<Check>> {
    let mut checks = selftest_one(
        &ModelConfig::SeedUnet(SeedUnetConfig {
            base: width,
            ..Default::default()
        }),
        device,
        n,
        size,
        tol,
    )?;
    checks.extend(selftest_one(
        &ModelConfig::CondUnet(CondUnetConfig {
            base: width,
            attention: true,
            ..Default::default()
        }),
        device,
        n,
        size,
        tol,
    )?);
    Ok(checks)
}

fn selftest_one(
    config: &ModelConfig,
    device: &Device,
    n: usize,
    size: usize,
    tol: f64,
) -> Result<Vec<Check>> {
    let cpu = Model::new(config, &Device::Cpu, 7)?;
    let dev = Model::new(config, device, 0)?;
    for ((name, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        if name.starts_with("out.") && cpu.is_conditioned() {
            // cond-unet's last layer starts at zero; give it values so that gradients flow.
            a.set(&(Tensor::randn(0f32, 0.05f32, a.shape(), &Device::Cpu)?))?;
        }
        b.set(&a.as_tensor().to_device(device)?)?;
    }
    let clean = Tensor::rand(0f32, 1f32, (n, 3, size, size), &Device::Cpu)?;
    let noisy = (&clean + Tensor::randn(0f32, 0.1f32, clean.shape(), &Device::Cpu)?)?;
    let sigma = Tensor::full(0.1f32, n, &Device::Cpu)?;
    let loss = MixLoss::default();
    let arch = config.arch();
    let mut checks = Vec::new();
    let mut push = |name: String, e: f64, limit: f64| {
        checks.push(Check {
            name: format!("{arch} {name}"),
            rel_err: e,
            passed: e < limit,
        })
    };

    let out_c = cpu.forward(&noisy, Some(&sigma), None)?;
    let out_d = dev.forward(
        &noisy.to_device(device)?,
        Some(&sigma.to_device(device)?),
        None,
    )?;
    push("forward".into(), rel(&out_d, &out_c)?, tol);
    // Half-precision inference on the device (candle's and cuDNN's bf16 paths on CUDA) against
    // the CPU's f32 network: bf16's 8 significant bits allow errors near 1e-2 (the CPU's own bf16
    // is within 1e-2 of its f32), while a wrong kernel or layout is off by the signal itself.
    let out_h = dev.to_dtype(DType::BF16)?.forward(
        &noisy.to_device(device)?,
        Some(&sigma.to_device(device)?),
        None,
    )?;
    push(
        "bf16 forward".into(),
        rel(&out_h, &out_c)?,
        HALF_TOL.max(tol),
    );
    let l_c = loss.forward(&out_c, &clean)?;
    let l_d = loss.forward(&out_d, &clean.to_device(device)?)?;
    push("loss".into(), rel(&l_d, &l_c)?, tol);
    let g_c = l_c.backward()?;
    let mut g_d = l_d.backward()?;
    // Mixed-precision training on the device (f32 weights, bf16 arithmetic): every gradient
    // against the CPU's f32 one, as the relative L2 error of the whole tensor (bf16 leaves up
    // to about 7 % in the deepest layers; a wrong gradient is off by about 100 %).
    let mixed = dev.with_compute_dtype(DType::BF16);
    let out_m = mixed.forward(
        &noisy.to_device(device)?,
        Some(&sigma.to_device(device)?),
        None,
    )?;
    let g_m = loss
        .forward(&out_m, &clean.to_device(device)?)?
        .backward()?;
    let mut worst = 0f64;
    for ((_, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        let e = match (g_c.get(a.as_tensor()), g_m.get(b.as_tensor())) {
            (Some(ga), Some(gb)) => rel_l2(gb, ga)?,
            _ => f64::INFINITY,
        };
        worst = worst.max(e);
    }
    push("bf16 gradients".into(), worst, HALF_GRAD_TOL.max(tol));
    for ((name, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        let (Some(ga), Some(gb)) = (g_c.get(a.as_tensor()), g_d.get(b.as_tensor())) else {
            push(format!("grad {name} (missing)"), f64::INFINITY, tol);
            continue;
        };
        push(format!("grad {name}"), rel(gb, ga)?, tol);
    }

    // Two Adam steps from the same (the CPU's) gradients on both devices: the optimizer's
    // kernels against the CPU's.
    for ((_, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        if let Some(ga) = g_c.get(a.as_tensor()) {
            g_d.insert(b.as_tensor(), ga.to_device(device)?);
        }
    }
    let mut adam_c = Adam::new(cpu.vars(), AdamConfig::default())?;
    let mut adam_d = Adam::new(dev.vars(), AdamConfig::default())?;
    for _ in 0..2 {
        adam_c.step(&g_c)?;
        adam_d.step(&g_d)?;
    }
    let mut worst = 0f64;
    for ((_, a), (_, b)) in cpu.vars().iter().zip(dev.vars()) {
        worst = worst.max(rel(b.as_tensor(), a.as_tensor())?);
    }
    push("adam steps".into(), worst, tol);
    Ok(checks)
}
