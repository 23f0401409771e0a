//! Every layer's forward and backward against candle's own ops where those are right, and
//! against central finite differences in f64 where they are not (max pooling), and the whole
//! `seed-unet` against finite differences.

use candle_core::{DType, Device, Tensor, Var};
use denoise_model::layers::{Conv2d, ConvTranspose2x2};
use denoise_model::params::ParamStore;
use denoise_model::{SeedUnet, SeedUnetConfig};
use denoise_ops::conv::reference_conv;
use denoise_ops::pool::max_pool2x2;

mod common;
use common::{backward_from, check_gradients, max_rel, rand};

/// Fused conv (forward, input, weight and bias gradients) against candle's conv2d + bias + ReLU.
#[test]
fn fused_conv_matches_candle_conv() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        // Shapes that take every path: one group, several groups run in parallel, 1x1 kernels.
        for (n, kernel, relu, c_in, c_out, hw) in [
            (2, 3, true, 5, 7, 8),
            (2, 3, false, 4, 3, 16),
            (2, 1, false, 6, 3, 8),
            (5, 3, true, 3, 4, 32),
            (3, 3, true, 2, 3, 24),
            // Fewer outputs than inputs (the gradient's columns): a last layer, a 5x5 kernel.
            (3, 3, true, 16, 3, 12),
            (2, 5, false, 6, 2, 9),
            // Winograd (3x3, at least 8 channels, planes from 8x8): even and odd planes.
            (2, 3, true, 8, 12, 8),
            (3, 3, false, 16, 8, 9),
            (2, 3, true, 9, 8, 11),
        ] {
            let mut store = ParamStore::with_dtype(&Device::Cpu, dtype, 1);
            let conv = Conv2d::new(&mut store, "c", c_in, c_out, kernel, relu).unwrap();
            let x =
                Var::from_tensor(&rand(&[n, c_in, hw, hw], 2).to_dtype(dtype).unwrap()).unwrap();
            let upstream = rand(&[n, c_out, hw, hw], 3).to_dtype(dtype).unwrap();
            let ours = conv.forward(x.as_tensor()).unwrap();
            let theirs = reference_conv(
                x.as_tensor(),
                conv.weight.as_tensor(),
                conv.bias.as_tensor(),
                kernel / 2,
                relu,
            )
            .unwrap();
            let inputs = [
                x.as_tensor(),
                conv.weight.as_tensor(),
                conv.bias.as_tensor(),
            ];
            let what = format!("k={kernel}, relu={relu}, {dtype:?}");
            assert_same_conv(&ours, &theirs, &upstream, inputs, tol, &what);
        }
    }
}

/// Asserts that two convolutions of the same inputs agree to `tol` (relative), in their outputs
/// and in the gradients of `sum(output * upstream)` with respect to each input.
type ConvFn = fn(&Tensor, &Tensor, &Tensor, usize, bool) -> candle_core::Result<Tensor>;

fn assert_same_conv(
    ours: &Tensor,
    theirs: &Tensor,
    upstream: &Tensor,
    inputs: [&Tensor; 3],
    tol: f64,
    what: &str,
) {
    assert!(max_rel(ours, theirs) < tol, "forward ({what})");
    let (g1, g2) = (
        backward_from(ours, upstream),
        backward_from(theirs, upstream),
    );
    for (name, t) in ["x", "w", "b"].into_iter().zip(inputs) {
        let e = max_rel(g1.get(t).unwrap(), g2.get(t).unwrap());
        assert!(e < tol, "gradient of {name}: error {e} ({what})");
    }
}

/// The two convolutions used off the CPU, run here on the CPU, against candle's own conv and
/// backward: `device_conv` (candle's forward conv for the output, forward convs for both
/// gradients) and `cudnn_conv` (three ops, one per pass, which on CUDA call cuDNN; checks that
/// each gradient is wired to the right input with the right shape).
#[test]
fn device_convs_match_candle_conv() {
    use denoise_ops::conv::{cudnn_conv, device_conv};
    let convs: [(&str, ConvFn); 2] = [("device_conv", device_conv), ("cudnn_conv", cudnn_conv)];
    for ((n, k, relu, c_in, c_out, hw), (name, conv)) in [
        (2, 3, true, 3, 5, 8),
        (1, 1, false, 4, 2, 5),
        (3, 3, false, 6, 4, 7),
        (2, 5, true, 2, 3, 6),
    ]
    .into_iter()
    .flat_map(|case| convs.map(|c| (case, c)))
    {
        let x = Var::from_tensor(&rand(&[n, c_in, hw, hw], 5)).unwrap();
        let w = Var::from_tensor(&rand(&[c_out, c_in, k, k], 6)).unwrap();
        let b = Var::from_tensor(&rand(&[c_out], 7)).unwrap();
        let upstream = rand(&[n, c_out, hw, hw], 8);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let ours = conv(xt, wt, bt, k / 2, relu).unwrap();
        let theirs = reference_conv(xt, wt, bt, k / 2, relu).unwrap();
        let what = format!("{name}, k={k}, relu={relu}");
        assert_same_conv(&ours, &theirs, &upstream, [xt, wt, bt], 1e-12, &what);
    }
}

/// The Winograd kernels against the im2col ones on raw slices: non-square and odd planes, one
/// group (gemms in parallel) and many groups (groups in parallel).
#[test]
fn winograd_matches_im2col() {
    use denoise_ops::cpu_conv::{backward_im2col, forward_im2col, ConvShape};
    use denoise_ops::winograd;
    fn check<T>(tol: f64)
    where
        T: denoise_ops::cpu_conv::Float + Into<f64> + From<f32>,
    {
        for (n, c_in, c_out, h, w) in [
            (1, 8, 8, 4, 4),
            (2, 12, 10, 7, 5),
            (3, 16, 24, 6, 9),
            (40, 8, 8, 3, 3),
            (6, 32, 16, 20, 18),
            (2, 8, 8, 9, 8),
            // Large planes, whose forward runs in bands of tile rows: a last band cut short
            // at an odd edge, two images, and a plane wider than a band's tiles.
            (1, 8, 8, 67, 70),
            (2, 8, 12, 64, 64),
            (1, 8, 8, 20, 2100),
        ] {
            let s = ConvShape {
                n,
                c_in,
                c_out,
                h,
                w,
                k: 3,
            };
            let vals = |len: usize, seed: u64| -> Vec<T> {
                common::vec64(&rand(&[len], seed))
                    .into_iter()
                    .map(|v| T::from(v as f32))
                    .collect()
            };
            let x = vals(n * c_in * h * w, 1);
            let k = vals(c_out * c_in * 9, 2);
            let b = vals(c_out, 3);
            let dy = vals(n * c_out * h * w, 4);
            let rel = |a: &[T], b: &[T]| {
                let scale = b.iter().fold(0f64, |m, v| m.max((*v).into().abs()));
                a.iter()
                    .zip(b)
                    .fold(0f64, |m, (x, y)| m.max(((*x).into() - (*y).into()).abs()))
                    / scale
            };
            for relu in [false, true] {
                let e = rel(
                    &winograd::forward(&s, &x, &k, &b, relu),
                    &forward_im2col(&s, &x, &k, &b, relu),
                );
                assert!(e < tol, "forward {s:?}: {e}");
            }
            let ours = winograd::backward(&s, &x, &k, &dy);
            let theirs = backward_im2col(&s, &x, &k, &dy, None);
            for (name, a, b) in [
                ("dx", &ours.0, &theirs.0),
                ("dw", &ours.1, &theirs.1),
                ("db", &ours.2, &theirs.2),
            ] {
                let e = rel(a, b);
                assert!(e < tol, "{name} {s:?}: {e}");
            }
        }
    }
    check::<f64>(1e-12);
    check::<f32>(1e-5);
}

/// In f32 the Winograd kernels are about as accurate as im2col: against the f64 result of the
/// same (f32-rounded) inputs, their RMS error is within 3x of im2col's, forward and backward.
#[test]
fn winograd_f32_error_is_close_to_im2col() {
    use denoise_ops::cpu_conv::{backward_im2col, forward_im2col, ConvShape};
    use denoise_ops::winograd;
    let s = ConvShape {
        n: 2,
        c_in: 32,
        c_out: 32,
        h: 16,
        w: 16,
        k: 3,
    };
    let vals = |len: usize, seed: u64, scale: f64| -> Vec<f32> {
        common::vec64(&rand(&[len], seed))
            .into_iter()
            .map(|v| (v * scale) as f32)
            .collect()
    };
    let x = vals(s.n * s.c_in * s.h * s.w, 31, 1.0);
    let w = vals(s.c_out * s.c_in * 9, 32, (1.0 / 288f64).sqrt());
    let b = vals(s.c_out, 33, 0.1);
    let dy = vals(s.n * s.c_out * s.h * s.w, 34, 1.0);
    let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let rms_err = |a: &[f32], truth: &[f64]| {
        let e: f64 = a
            .iter()
            .zip(truth)
            .map(|(x, t)| (*x as f64 - t).powi(2))
            .sum();
        let n: f64 = truth.iter().map(|t| t * t).sum();
        (e / n).sqrt()
    };
    let truth = forward_im2col(&s, &up(&x), &up(&w), &up(&b), false);
    let ours = rms_err(&winograd::forward(&s, &x, &w, &b, false), &truth);
    let base = rms_err(&forward_im2col(&s, &x, &w, &b, false), &truth);
    assert!(
        ours < 3.0 * base && ours < 1e-6,
        "forward: {ours:e} against im2col's {base:e}"
    );
    let truth = backward_im2col(&s, &up(&x), &up(&w), &up(&dy), None);
    let ours = winograd::backward(&s, &x, &w, &dy);
    let base = backward_im2col(&s, &x, &w, &dy, None);
    for (name, o, b, t) in [
        ("dx", &ours.0, &base.0, &truth.0),
        ("dw", &ours.1, &base.1, &truth.1),
    ] {
        let (o, b) = (rms_err(o, t), rms_err(b, t));
        assert!(
            o < 3.0 * b && o < 1e-6,
            "{name}: {o:e} against im2col's {b:e}"
        );
    }
}

/// Small, and large enough (over 65,536 outputs) for the bias op to run over the planes in
/// parallel.
#[test]
fn conv_transpose_matches_candle() {
    for (n, h, w) in [(3, 4, 5), (2, 64, 72)] {
        let mut store = ParamStore::with_dtype(&Device::Cpu, DType::F64, 4);
        let up = ConvTranspose2x2::new(&mut store, "up", 6, 4).unwrap();
        let x = Var::from_tensor(&rand(&[n, 6, h, w], 5)).unwrap();
        let upstream = rand(&[n, 4, 2 * h, 2 * w], 6);
        let ours = up.forward(x.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .conv_transpose2d(up.weight.as_tensor(), 0, 0, 2, 1)
            .unwrap()
            .broadcast_add(&up.bias.as_tensor().reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_rel(&ours, &theirs) < 1e-12);
        let (g1, g2) = (
            backward_from(&ours, &upstream),
            backward_from(&theirs, &upstream),
        );
        for t in [x.as_tensor(), up.weight.as_tensor(), up.bias.as_tensor()] {
            assert!(max_rel(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-12);
        }
    }
}

/// Each window's maximum gets the whole gradient (candle 0.11's `max_pool2d` passes a quarter).
#[test]
fn max_pool_gradient_goes_whole_to_the_maximum() {
    let x = Var::from_tensor(&rand(&[2, 3, 6, 8], 7)).unwrap();
    let y = max_pool2x2(x.as_tensor()).unwrap();
    let reference = x.as_tensor().max_pool2d(2).unwrap();
    assert!(max_rel(&y, &reference) < 1e-15);
    let upstream = rand(&[2, 3, 3, 4], 8);
    let g = backward_from(&y, &upstream);
    let g = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let xs = x
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let up = upstream.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    // Expected: for each window, the upstream value at the argmax, zero elsewhere.
    let mut want = vec![0f64; xs.len()];
    for nc in 0..6 {
        for oy in 0..3 {
            for ox in 0..4 {
                let idx = |dy: usize, dx: usize| nc * 48 + (2 * oy + dy) * 8 + 2 * ox + dx;
                let best = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .into_iter()
                    .map(|(dy, dx)| idx(dy, dx))
                    .max_by(|a, b| xs[*a].partial_cmp(&xs[*b]).unwrap())
                    .unwrap();
                want[best] = up[nc * 12 + oy * 4 + ox];
            }
        }
    }
    for (a, b) in g.iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
}

/// The whole network's gradient for a few parameters of every layer, against central finite
/// differences of the (f64) network.
#[test]
fn seed_unet_gradients_match_finite_differences() {
    // Width 4: every conv on im2col. (At width 8, where the Winograd kernels run, seed 11 puts
    // a ReLU or pooling kink within the finite-difference step of one bias, with either kernel;
    // the Winograd network is checked against candle's ops in
    // `network_step_matches_the_reference_step`.)
    let cfg = SeedUnetConfig {
        base: 4,
        ..Default::default()
    };
    let net = SeedUnet::with_dtype(cfg, &Device::Cpu, DType::F64, 11).unwrap();
    let x = (rand(&[2, 3, 16, 16], 12) * 0.5)
        .unwrap()
        .affine(1.0, 0.5)
        .unwrap();
    let target = (rand(&[2, 3, 16, 16], 13) * 0.5).unwrap();
    let loss = || {
        (net.forward(&x, None).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    check_gradients(net.vars(), &loss, 1e-3);
}

/// A whole seed-unet and cond-unet step (forward, loss, every gradient) with our conv kernels
/// (Winograd and im2col) against the same step with candle's conv and backward, in f32.
#[test]
fn network_step_matches_the_reference_step() {
    use denoise_model::{Model, ModelConfig};
    use denoise_ops::conv::with_reference_convs;
    for arch in ["seed-unet", "cond-unet"] {
        let mut config = ModelConfig::from_arch(arch).unwrap();
        match &mut config {
            ModelConfig::SeedUnet(c) => c.base = 8,
            ModelConfig::CondUnet(c) => c.base = 16,
        }
        let model = Model::new(&config, &Device::Cpu, 21).unwrap();
        let x = rand(&[2, 3, 16, 16], 22)
            .affine(0.5, 0.5)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let target = rand(&[2, 3, 16, 16], 23).to_dtype(DType::F32).unwrap();
        let sigma = Tensor::new(&[0.1f32, 0.3], &Device::Cpu).unwrap();
        let step = || {
            let out = model.forward(&x, Some(&sigma), None).unwrap();
            let loss = (out - &target).unwrap().sqr().unwrap().mean_all().unwrap();
            let grads = loss.backward().unwrap();
            (loss, grads)
        };
        let (l1, g1) = step();
        let (l2, g2) = with_reference_convs(step);
        assert!(max_rel(&l1, &l2) < 1e-5, "{arch}: loss");
        for (name, var) in model.vars() {
            let t = var.as_tensor();
            let e = max_rel(g1.get(t).unwrap(), g2.get(t).unwrap());
            assert!(e < 1e-4, "{arch}: gradient of {name}: error {e}");
        }
    }
}

/// On ties the first maximum in scan order gets the gradient (PyTorch's rule), once.
#[test]
fn max_pool_ties_route_to_the_first_maximum() {
    let x = Var::from_tensor(&Tensor::new(&[[[[1f64, 1.0], [0.5, 1.0]]]], &Device::Cpu).unwrap())
        .unwrap();
    let y = max_pool2x2(x.as_tensor()).unwrap();
    let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
    let g = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(g, vec![3.0, 0.0, 0.0, 0.0]);
}

#[test]
fn seed_unet_has_the_original_parameter_count() {
    let net = SeedUnet::new(SeedUnetConfig::default(), &Device::Cpu, 0).unwrap();
    let n: usize = net.vars().iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(n, 7_697_475);
    assert_eq!(net.vars().len(), 36);
    assert_eq!(net.vars()[0].0, "enc1.conv1.weight");
}

/// cond-unet's upsampling and average pooling (one parallel op each on the CPU) against the
/// candle expressions they replace, forward and backward, in f64 and f32: planes smaller and
/// larger than a task's share, a single plane, non-square planes.
#[test]
fn resample_ops_match_candle_ops() {
    use denoise_ops::resample::{avg_pool2x2, up2x};
    for (dtype, tol) in [(DType::F64, 1e-15), (DType::F32, 1e-6)] {
        for dims in [[2, 3, 4, 6], [1, 1, 2, 2], [3, 5, 64, 48], [1, 2, 130, 258]] {
            let [n, c, h, w] = dims;
            let x = Var::from_tensor(&rand(&dims, 11).to_dtype(dtype).unwrap()).unwrap();
            let xt = x.as_tensor();
            let candle_up = xt
                .reshape((n, c, h, 1, w, 1))
                .unwrap()
                .broadcast_as((n, c, h, 2, w, 2))
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((n, c, 2 * h, 2 * w))
                .unwrap();
            let candle_pool = xt
                .reshape((n, c, h / 2, 2, w / 2, 2))
                .unwrap()
                .mean(5)
                .unwrap()
                .mean(3)
                .unwrap();
            for (ours, theirs, out_dims) in [
                (up2x(xt).unwrap(), candle_up, [n, c, 2 * h, 2 * w]),
                (avg_pool2x2(xt).unwrap(), candle_pool, [n, c, h / 2, w / 2]),
            ] {
                assert_eq!(ours.dims(), &out_dims);
                assert!(max_rel(&ours, &theirs) < tol, "{dims:?} {dtype:?}");
                let upstream = rand(&out_dims, 12).to_dtype(dtype).unwrap();
                let grad = |y: &Tensor| backward_from(y, &upstream).get(xt).unwrap().clone();
                let (g1, g2) = (grad(&ours), grad(&theirs));
                assert!(max_rel(&g1, &g2) < tol, "gradient {dims:?} {dtype:?}");
            }
        }
    }
}
