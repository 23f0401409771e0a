//! One full-size seed-unet step (batch 8, 32x32) with our conv kernels against candle's conv
//! ops: the largest relative gradient error per parameter. In f64 (`-- --f64`) the two agree to
//! ~1e-14; in f32 to ~1e-3, rounding amplified where a ReLU or a max-pool choice flips (also
//! with `DENOISE_CONV=im2col`).
//! `cargo run --release -p denoise-model --example step_check [-- --f64]`

use candle_core::{DType, Device, Tensor};
use denoise_ops::conv::with_reference_convs;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let f64_ = std::env::args().any(|a| a == "--f64");
    let dt = if f64_ { DType::F64 } else { DType::F32 };
    let model = denoise_model::SeedUnet::with_dtype(Default::default(), &dev, dt, 1).unwrap();
    let x = Tensor::rand(0f32, 1f32, (8, 3, 32, 32), &dev)?.to_dtype(dt)?;
    let target = Tensor::rand(0f32, 1f32, (8, 3, 32, 32), &dev)?.to_dtype(dt)?;
    let step = || {
        let out = model.forward(&x, None).unwrap();
        let loss = (out - &target).unwrap().abs().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        (loss, grads)
    };
    let (l1, g1) = step();
    let (l2, g2) = with_reference_convs(step);
    println!(
        "loss {} vs {}",
        l1.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        l2.to_dtype(DType::F64)?.to_scalar::<f64>()?
    );
    let mut worst = 0f64;
    for (name, var) in model.vars() {
        let (a, b) = (
            g1.get(var.as_tensor()).unwrap(),
            g2.get(var.as_tensor()).unwrap(),
        );
        let scale = b
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let err = (a - b)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            / scale;
        let mean_a = a.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mean_b = b.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        println!("{name:24} max rel err {err:.2e}  mean {mean_a:.4e} vs {mean_b:.4e}");
        worst = worst.max(err);
    }
    println!("worst {worst:.2e}");
    Ok(())
}
