//! Where a training step's time goes on the CPU (batch 64): forward, loss, backward,
//! optimizer. `cargo run --release -p denoise-trainer --example step_profile [-- cond-unet]
//! [--candle-adam]` (the optimizer step from candle's element-wise ops instead of the fused one).

use std::time::Instant;

use candle_core::{Device, Tensor};
use denoise_loss::MixLoss;
use denoise_model::{Model, ModelConfig};
use denoise_trainer::{Adam, AdamConfig};

fn main() -> anyhow_free::Result {
    if std::env::var_os("DENOISE_NO_TUNE").is_none() {
        denoise_trainer::bench::tune_allocator();
    }
    let dev = Device::Cpu;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let candle_adam = args.iter().any(|a| a == "--candle-adam");
    let arch = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "seed-unet".into());
    let config = ModelConfig::from_arch(&arch).ok_or("unknown architecture")?;
    let model = Model::new(&config, &dev, 0)?;
    let sigma = Tensor::full(0.1f32, 64, &dev)?;
    let mut adam = Adam::new(model.vars(), AdamConfig::default())?;
    let clean = Tensor::rand(0f32, 1f32, (64, 3, 32, 32), &dev)?;
    let noisy = (&clean + Tensor::randn(0f32, 0.1f32, clean.shape(), &dev)?)?;
    let loss_fn = MixLoss::default();
    let mut rng = denoise_model::rng(0);
    let mut t = [0f64; 5];
    let steps = 4;
    for i in 0..=steps {
        let s = Instant::now();
        let out = model.forward(&noisy, Some(&sigma), Some(&mut rng))?;
        let a = s.elapsed().as_secs_f64();
        let loss = loss_fn.forward(&out, &clean)?;
        let b = s.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let c = s.elapsed().as_secs_f64();
        if candle_adam {
            adam.step_with_candle_ops(&grads)?;
        } else {
            adam.step(&grads)?;
        }
        let d = s.elapsed().as_secs_f64();
        if i > 0 {
            t[0] += a;
            t[1] += b - a;
            t[2] += c - b;
            t[3] += d - c;
            t[4] += d;
        }
    }
    let n = steps as f64;
    println!(
        "per step: forward {:.0} ms, loss {:.0} ms, backward {:.0} ms, adam {:.0} ms, total {:.0} ms ({:.1} img/s)",
        t[0] / n * 1e3,
        t[1] / n * 1e3,
        t[2] / n * 1e3,
        t[3] / n * 1e3,
        t[4] / n * 1e3,
        64.0 * n / t[4]
    );
    Ok(())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
