//! Half-precision inference: a network rounded to bf16 or f16 ([`Model::to_dtype`]) runs in
//! that dtype, takes and returns f32, and stays close to the f32 network.

use candle_core::{DType, Device, Tensor};
use denoise_model::{CondUnetConfig, Model, ModelConfig, SeedUnetConfig};

mod common;
use common::{images, rand, vec64};

fn configs() -> Vec<ModelConfig> {
    vec![
        ModelConfig::SeedUnet(SeedUnetConfig {
            base: 8,
            ..Default::default()
        }),
        ModelConfig::CondUnet(CondUnetConfig {
            base: 8,
            mults: vec![1, 2],
            blocks: 1,
            attention: true,
            emb_dim: 16,
            ..Default::default()
        }),
    ]
}

/// A network whose every weight has a random value (cond-unet's last layer starts at zero, which
/// would hide the network behind its skip connection).
fn random_model(config: &ModelConfig) -> Model {
    let model = Model::new(config, &Device::Cpu, 5).unwrap();
    for (i, (name, var)) in model.vars().iter().enumerate() {
        if name.starts_with("out.") {
            let v = (rand(var.dims(), 100 + i as u64) * 0.2).unwrap();
            var.set(&v.to_dtype(DType::F32).unwrap()).unwrap();
        }
    }
    model
}

fn batch() -> (Tensor, Tensor) {
    let x = images(&[3, 3, 16, 16], 7);
    let sigma = Tensor::new(&[0.02f32, 0.1, 0.3], &Device::Cpu).unwrap();
    (x, sigma)
}

/// `max |a - b|` on the pixel scale.
fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    vec64(a)
        .iter()
        .zip(vec64(b))
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn half_precision_networks_stay_close_to_f32() {
    let (x, sigma) = batch();
    for config in configs() {
        let model = random_model(&config);
        let full = model.forward(&x, Some(&sigma), None).unwrap();
        // bf16 keeps 8 significant bits, f16 11: errors about 2^-9 and 2^-12 of the activations.
        for (dtype, lo, hi) in [(DType::BF16, 1e-5, 2e-2), (DType::F16, 1e-6, 3e-3)] {
            let half = model.to_dtype(dtype).unwrap();
            assert_eq!(half.dtype(), dtype);
            assert!(half.vars().iter().all(|(_, v)| v.dtype() == dtype));
            let y = half.forward(&x, Some(&sigma), None).unwrap();
            assert_eq!(y.dtype(), DType::F32, "the result keeps the input's dtype");
            let err = max_abs(&y, &full);
            // Not zero: the network did run in half precision.
            assert!(
                err > lo && err < hi,
                "{} in {dtype:?}: max error {err:e}, expected in ({lo:e}, {hi:e})",
                config.arch()
            );
        }
    }
}

#[test]
fn a_network_rounded_and_widened_again_has_rounded_weights() {
    let model = random_model(&configs()[1]);
    let back = model
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    for ((name, a), (_, b)) in model.vars().iter().zip(back.vars()) {
        let (a, b) = (vec64(a.as_tensor()), vec64(b.as_tensor()));
        for (x, y) in a.iter().zip(&b) {
            // Rounding to 8 significant bits: within half a unit of the last, 2^-8 relative.
            assert!((x - y).abs() <= x.abs() / 256.0, "{name}: {x} -> {y}");
        }
    }
}

#[test]
fn half_precision_denoises_images_of_any_size() {
    let model = random_model(&configs()[1]).to_dtype(DType::BF16).unwrap();
    let x = images(&[1, 3, 13, 21], 9);
    let y = model.denoise_any_size(&x, &[0.1]).unwrap();
    assert_eq!(y.dims(), &[1, 3, 13, 21]);
    assert_eq!(y.dtype(), DType::F32);
    assert!(vec64(&y).iter().all(|v| (0.0..=1.0).contains(v)));
}

/// Mixed precision: f32 weights, bf16 arithmetic. Every weight gets its gradient, in f32, close
/// to the f32 network's.
#[test]
fn mixed_precision_gradients_reach_the_f32_weights() {
    let (x, sigma) = batch();
    let target = images(&[3, 3, 16, 16], 8);
    for config in configs() {
        let model = random_model(&config);
        let mixed = model.with_compute_dtype(DType::BF16);
        assert_eq!(mixed.dtype(), DType::BF16);
        let grads = |m: &Model| {
            let y = m.forward(&x, Some(&sigma), None).unwrap();
            assert_eq!(y.dtype(), DType::F32);
            (y - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g32, g16) = (grads(&model), grads(&mixed));
        let mut errors = Vec::new();
        for (name, var) in model.vars() {
            let a = g32.get(var.as_tensor()).unwrap();
            let b = g16
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{} {name}: no gradient in bf16", config.arch()));
            assert_eq!(b.dtype(), DType::F32, "{name}");
            // Relative L2 error of the whole gradient. bf16's 8 bits, rounded at every layer
            // forward and backward, leave 0.1 % near the output and up to about 7 % in the
            // deepest layers of these random networks; a wrong gradient is off by about 100 %.
            let (a, b) = (vec64(a), vec64(b));
            let diff: f64 = a.iter().zip(&b).map(|(p, q)| (p - q).powi(2)).sum();
            let norm: f64 = a.iter().map(|p| p * p).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            assert!(
                rel < 0.1,
                "{} {name}: relative error {rel:e}",
                config.arch()
            );
            errors.push(rel);
        }
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        assert!(
            mean < 4e-2,
            "{}: mean relative error {mean:e}",
            config.arch()
        );
        // The weights are shared: stepping one steps the other.
        let (_, v) = &model.vars()[0];
        v.set(&v.as_tensor().zeros_like().unwrap()).unwrap();
        assert!(vec64(mixed.vars()[0].1.as_tensor())
            .iter()
            .all(|&w| w == 0.0));
    }
}

/// The convolution that cuDNN runs (here on the CPU, as the op's CPU twin: operands widened to
/// f32, the result rounded once, as the tensor cores do), then bias and ReLU and 2x2 max pooling,
/// all in bf16 and f16 by way of our f32 kernels: the output is the f32 result rounded, and
/// every gradient is within a few roundings of the f32 one.
#[test]
fn half_precision_convs_take_the_f32_kernels() {
    use candle_core::Var;
    use common::{backward_from, max_rel};
    use denoise_ops::conv::{cudnn_conv, reference_conv};
    use denoise_ops::pool::max_pool2x2;
    for (dtype, ulp) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
        for (n, k, relu, c_in, c_out, hw) in [(2, 3, true, 3, 5, 8), (1, 1, false, 4, 2, 6)] {
            // Values that `dtype` holds exactly: both sides start from the same numbers.
            let var = |shape: &[usize], seed| {
                Var::from_tensor(&rand(shape, seed).to_dtype(dtype).unwrap()).unwrap()
            };
            let wide = |v: &Var| Var::from_tensor(&v.to_dtype(DType::F32).unwrap()).unwrap();
            let (x, w, b) = (
                var(&[n, c_in, hw, hw], 1),
                var(&[c_out, c_in, k, k], 2),
                var(&[c_out], 3),
            );
            let (xf, wf, bf) = (wide(&x), wide(&w), wide(&b));
            let ours = max_pool2x2(&cudnn_conv(&x, &w, &b, k / 2, relu).unwrap()).unwrap();
            let f32s = max_pool2x2(&reference_conv(&xf, &wf, &bf, k / 2, relu).unwrap()).unwrap();
            assert_eq!(ours.dtype(), dtype);
            let what = format!("{dtype:?}, k={k}, relu={relu}");
            let e = max_rel(&ours.to_dtype(DType::F32).unwrap(), &f32s);
            assert!(e <= ulp, "forward: error {e} ({what})");
            let upstream = rand(ours.dims(), 4).to_dtype(dtype).unwrap();
            let g = backward_from(&ours, &upstream);
            let gf = backward_from(&f32s, &upstream.to_dtype(DType::F32).unwrap());
            for (name, v, vf) in [("x", &x, &xf), ("w", &w, &wf), ("b", &b, &bf)] {
                let ours = g.get(v).unwrap();
                assert_eq!(ours.dtype(), dtype, "gradient of {name} ({what})");
                let e = max_rel(&ours.to_dtype(DType::F32).unwrap(), gf.get(vf).unwrap());
                // Measured: at most 0.67 of a rounding.
                assert!(e <= 2.0 * ulp, "gradient of {name}: error {e} ({what})");
            }
        }
    }
}
