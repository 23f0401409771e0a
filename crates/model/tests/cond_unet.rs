//! `cond-unet`: the fused GroupNorm against candle's ops, the whole network's gradients against
//! finite differences, the EDM preconditioning, tiled denoising, and the sampler against a
//! denoiser known in closed form.

use candle_core::{DType, Device, Tensor, Var};
use denoise_model::norm::GroupNorm;
use denoise_model::params::ParamStore;
use denoise_model::sampler::{sample, Denoiser, Method, SamplerConfig};
use denoise_model::tiles::{denoise_image, TileConfig};
use denoise_model::{CondUnet, CondUnetConfig, Model, ModelConfig};
use denoise_ops::norm::reference_group_norm;

mod common;
use common::{check_gradients, max_rel, rand, vec64};

#[test]
fn fused_group_norm_matches_candle_ops() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        for (n, c, hw, silu) in [(2, 8, 5, true), (3, 12, 4, false), (1, 64, 8, true)] {
            let mut store = ParamStore::with_dtype(&Device::Cpu, dtype, 1);
            let gn = GroupNorm::new(&mut store, "gn", c).unwrap();
            // Non-trivial scale and shift.
            gn.gamma
                .set(&(rand(&[c], 5) + 1.0).unwrap().to_dtype(dtype).unwrap())
                .unwrap();
            gn.beta
                .set(&rand(&[c], 6).to_dtype(dtype).unwrap())
                .unwrap();
            let x = Var::from_tensor(
                &(rand(&[n, c, hw, hw], 2) * 3.0)
                    .unwrap()
                    .affine(1.0, 0.7)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let up = rand(&[n, c, hw, hw], 3).to_dtype(dtype).unwrap();
            let ours = gn.forward(x.as_tensor(), silu).unwrap();
            let theirs = reference_group_norm(
                x.as_tensor(),
                gn.gamma.as_tensor(),
                gn.beta.as_tensor(),
                gn.groups,
                gn.eps,
                silu,
            )
            .unwrap();
            assert!(max_rel(&ours, &theirs) < tol, "forward {dtype:?} {n} {c}");
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for t in [x.as_tensor(), gn.gamma.as_tensor(), gn.beta.as_tensor()] {
                let e = max_rel(g1.get(t).unwrap(), g2.get(t).unwrap());
                assert!(e < tol, "gradient {dtype:?} ({n}, {c}, {hw}, {silu}): {e}");
            }
        }
    }
}

/// Sets the last layer's parameters (`out.*`) to uniform values in `[-scale, scale)` from
/// `seed`, so that the output depends on the whole network, as after training (cond-unet's
/// last layer starts at zero).
fn randomize_output_layer(vars: &[(String, Var)], seed: u64, scale: f64) {
    for (name, var) in vars {
        if name.starts_with("out.") {
            let values = (rand(var.dims(), seed) * scale).unwrap();
            var.set(&values.to_dtype(DType::F32).unwrap()).unwrap();
        }
    }
}

fn tiny(attention: bool) -> CondUnetConfig {
    CondUnetConfig {
        base: 4,
        mults: vec![1, 2],
        blocks: 1,
        attention,
        dropout: 0.0,
        emb_dim: 8,
        ..Default::default()
    }
}

/// The preconditioned network's gradient for a few entries of every parameter, against
/// central finite differences of the f64 network.
#[test]
fn cond_unet_gradients_match_finite_differences() {
    let net = CondUnet::with_dtype(tiny(true), &Device::Cpu, DType::F64, 11).unwrap();
    // The output layer starts at zero; give it values so that every path carries gradient.
    for (name, var) in net.vars() {
        if name.starts_with("out.") {
            let v = (rand(var.dims(), 99) * 0.3).unwrap();
            var.set(&v).unwrap();
        }
    }
    let x = (rand(&[2, 3, 8, 8], 12) * 0.5)
        .unwrap()
        .affine(1.0, 0.5)
        .unwrap();
    let sigma = Tensor::new(&[0.1f64, 0.4], &Device::Cpu).unwrap();
    let target = (rand(&[2, 3, 8, 8], 13) * 0.5).unwrap();
    let loss_t = |net: &CondUnet| {
        (net.denoise(&x, &sigma, None).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    check_gradients(net.vars(), &|| loss_t(&net), 1e-4);
}

/// With the last layer at zero (as initialised), `D(x; s)` is `c_skip x` on the [-1, 1] scale.
#[test]
fn preconditioning_follows_edm() {
    let net = CondUnet::new(tiny(false), &Device::Cpu, 3).unwrap();
    let x = (rand(&[3, 3, 8, 8], 1) * 0.5)
        .unwrap()
        .affine(1.0, 0.5)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let sig = [0.01f32, 0.25, 5.0];
    let d = net
        .denoise(&x, &Tensor::new(&sig, &Device::Cpu).unwrap(), None)
        .unwrap();
    let (xv, dv) = (vec64(&x), vec64(&d));
    let per = 3 * 8 * 8;
    for (i, &s) in sig.iter().enumerate() {
        let s = 2.0 * s as f64;
        let c_skip = 0.25 / (s * s + 0.25);
        for j in i * per..(i + 1) * per {
            let expect = (c_skip * (2.0 * xv[j] - 1.0) + 1.0) / 2.0;
            assert!(
                (dv[j] - expect).abs() < 1e-5,
                "sigma {s}: {} vs {expect}",
                dv[j]
            );
        }
    }
}

/// Tiling: a pixel-wise network (the initial one) gives the same image tiled as whole, so the
/// windows, weights and blending are right; and a real network's seams stay small.
#[test]
fn tiles_blend_back_into_the_whole_image() {
    let model = Model::new(&ModelConfig::CondUnet(tiny(false)), &Device::Cpu, 4).unwrap();
    let (h, w) = (70, 53);
    let img: Vec<f32> = vec64(
        &(rand(&[3, h, w], 8) * 0.5)
            .unwrap()
            .affine(1.0, 0.5)
            .unwrap(),
    )
    .into_iter()
    .map(|v| v as f32)
    .collect();
    let whole = TileConfig::default();
    let tiled = TileConfig {
        tile: 24,
        overlap: 6,
        whole_limit: 0,
        ..Default::default()
    };
    let mut calls = 0;
    let a = denoise_image(&model, &img, (3, h, w), 0.1, &whole, &mut |_, _| {}).unwrap();
    let b = denoise_image(&model, &img, (3, h, w), 0.1, &tiled, &mut |_, _| calls += 1).unwrap();
    assert!(calls > 10, "{calls} progress calls");
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err < 1e-5, "pixel-wise network: tiled differs by {err}");

    // With a trained-like (random) last layer the network sees context: tiles differ a little.
    let Model::CondUnet(net) = &model else {
        unreachable!()
    };
    randomize_output_layer(net.vars(), 5, 0.05);
    let a = denoise_image(&model, &img, (3, h, w), 0.1, &whole, &mut |_, _| {}).unwrap();
    let b = denoise_image(&model, &img, (3, h, w), 0.1, &tiled, &mut |_, _| {}).unwrap();
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean < 0.02, "mean tiling difference {mean}");
    assert_eq!(b.len(), 3 * h * w);
}

/// For Gaussian data N(mu, s0^2) the ideal denoiser is known in closed form; the sampler must
/// turn pure noise into samples with the data's mean and variance. The ODE's discretisation
/// error shrinks with the steps: 18 Heun steps overshoot the standard deviation by about 6 %
/// for this narrow distribution (a NumPy run of the same algorithm gives 0.424), 100 by 0.2 %;
/// Euler is first order.
struct GaussianData {
    mu: f64,
    s0: f64,
}

impl Denoiser for GaussianData {
    fn denoise(&self, x: &Tensor, sigma: f64) -> denoise_model::Result<Tensor> {
        let k = self.s0 * self.s0 / (self.s0 * self.s0 + sigma * sigma);
        Ok(x.affine(k, self.mu * (1.0 - k))?)
    }
}

#[test]
fn sampler_reproduces_gaussian_data() {
    let data = GaussianData { mu: 0.3, s0: 0.4 };
    for (method, steps, tol) in [
        (Method::Heun, 18, 0.08),
        (Method::Heun, 100, 0.015),
        (Method::Euler, 300, 0.02),
    ] {
        let cfg = SamplerConfig {
            method,
            steps,
            ..Default::default()
        };
        let mut calls = 0;
        let x = sample(
            &data,
            &[4000, 1, 2, 2],
            &cfg,
            7,
            &Device::Cpu,
            &mut |_, _| calls += 1,
        )
        .unwrap();
        assert_eq!(calls, steps);
        let v = vec64(&x);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((mean - 0.3).abs() < 0.02, "{method:?}: mean {mean}");
        assert!(
            (std - 0.4).abs() / 0.4 < tol,
            "{method:?} {steps}: std {std}"
        );
        // Same seed, same samples.
        let y = sample(
            &data,
            &[4000, 1, 2, 2],
            &cfg,
            7,
            &Device::Cpu,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(v, vec64(&y));
    }
}

/// Sampling many images runs the network on a few at a time, with the same result.
#[test]
fn sampling_in_chunks_matches_one_batch() {
    use denoise_model::sampler::ModelDenoiser;
    let model = Model::new(&ModelConfig::CondUnet(tiny(false)), &Device::Cpu, 5).unwrap();
    let cfg = SamplerConfig {
        steps: 3,
        ..Default::default()
    };
    let run = |max_pixels: usize| {
        let d = ModelDenoiser {
            model: &model,
            max_pixels,
        };
        let x = sample(&d, &[7, 3, 8, 8], &cfg, 3, &Device::Cpu, &mut |_, _| {}).unwrap();
        vec64(&x)
    };
    let whole = run(ModelDenoiser::MAX_PIXELS);
    // 3 images per evaluation (the last chunk has one), then one at a time.
    for max_pixels in [3 * 64 + 10, 1] {
        let chunked = run(max_pixels);
        let err = whole
            .iter()
            .zip(&chunked)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-5, "max_pixels {max_pixels}: {err}");
    }
}

/// Inside `layers::inference` a forward pass records no graph (so its activations are freed
/// as it goes) and gives the same numbers; outside it, the graph is recorded again.
#[test]
fn inference_records_no_graph_and_gives_the_same_output() {
    use denoise_model::layers::inference;
    for config in [
        ModelConfig::CondUnet(tiny(true)),
        ModelConfig::SeedUnet(denoise_model::SeedUnetConfig {
            base: 4,
            ..Default::default()
        }),
    ] {
        let model = Model::new(&config, &Device::Cpu, 3).unwrap();
        randomize_output_layer(model.vars(), 7, 0.3);
        let x = rand(&[2, 3, 16, 16], 8)
            .affine(0.2, 0.5)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let sigma = Tensor::new(&[0.1f32, 0.2], &Device::Cpu).unwrap();
        let run = || model.forward(&x, Some(&sigma), None).unwrap();
        let tracked = run();
        assert!(
            tracked.track_op(),
            "{config:?}: a training forward records its graph"
        );
        let free = inference(run);
        assert!(!free.track_op(), "{config:?}: inference recorded a graph");
        assert_eq!(
            free.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tracked.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(run().track_op(), "{config:?}: the flag was left on");
    }
}
