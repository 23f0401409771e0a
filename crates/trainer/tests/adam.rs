//! The optimizer against `torch.optim.Adam(lr=0.1, weight_decay=0.1)` on a small worked
//! example. The expected values follow PyTorch's single-tensor Adam step exactly
//! (`grad += wd * p; exp_avg.lerp_(grad, 1 - b1); exp_avg_sq = b2 * exp_avg_sq + (1 - b2) grad^2;
//! p -= lr / bc1 * exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps)`), in float64.

use candle_core::{DType, Device, Tensor, Var};
use denoise_trainer::{Adam, AdamConfig};

/// Parameters after each of five steps on `0.5 * sum(a p^2) + b.p`, from p = (1, -2, 0.5).
const EXPECTED: [[f64; 3]; 5] = [
    [0.9000000008333333, -1.90000000015625, 0.40000000166666666],
    [0.8003653057760263, -1.8001601390878839, 0.3004122310730651],
    [0.7013989139686005, -1.7005991618735914, 0.20158627658226116],
    [0.6034563477782939, -1.6014452526987606, 0.1039390654932568],
    [
        0.5069518318020372,
        -1.5028363361975803,
        0.007963665477725784,
    ],
];
const M: [f64; 3] = [0.3924242395499727, -2.341000405459626, 0.19175403736808846];
const V: [f64; 3] = [
    0.004920268023662827,
    0.16770383545582424,
    0.0011877951470499906,
];

fn run(dtype: DType, tol: f64, fused: bool) {
    let dev = Device::Cpu;
    let p = Var::from_tensor(
        &Tensor::new(&[1.0f64, -2.0, 0.5], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let a = Tensor::new(&[1.0f64, 3.0, 0.5], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let b = Tensor::new(&[0.1f64, -0.2, 0.3], &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let config = AdamConfig {
        lr: 0.1,
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut adam = Adam::new(&[("p".to_string(), p.clone())], config).unwrap();
    for want in EXPECTED {
        let x = p.as_tensor();
        let loss = ((x.sqr().unwrap() * &a).unwrap().sum_all().unwrap() * 0.5).unwrap()
            + (x * &b).unwrap().sum_all().unwrap();
        let grads = loss.unwrap().backward().unwrap();
        if fused {
            adam.step(&grads).unwrap();
        } else {
            adam.step_with_candle_ops(&grads).unwrap();
        }
        let got = p
            .as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "{got:?} vs {want:?}");
        }
    }
    assert_eq!(adam.step, 5);
    let (_, _, m, v) = &adam.state[0];
    let m = m.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let v = v.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    for i in 0..3 {
        assert!(
            (m[i] - M[i]).abs() < tol * 10.0 && (v[i] - V[i]).abs() < tol,
            "moments {m:?} {v:?}"
        );
    }
}

#[test]
fn adam_matches_pytorch_f64() {
    run(DType::F64, 1e-12, true);
    run(DType::F64, 1e-12, false);
}

#[test]
fn adam_matches_pytorch_f32() {
    run(DType::F32, 2e-6, true);
    run(DType::F32, 2e-6, false);
}

/// The fused step (in-place custom ops) against the same step from candle's element-wise ops:
/// three parameters of different shapes, one of which gets no gradient (and must not move),
/// over six steps with a learning-rate change.
#[test]
fn fused_step_matches_candle_ops_step() {
    fn params(dtype: DType) -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        [vec![64, 3, 3, 3], vec![64], vec![10, 7]]
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let n: usize = shape.iter().product();
                let vals: Vec<f64> = (0..n)
                    .map(|j| ((j * 7 + i * 3) % 11) as f64 / 5.0 - 1.0)
                    .collect();
                let t = Tensor::from_vec(vals, shape.as_slice(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                (format!("p{i}"), Var::from_tensor(&t).unwrap())
            })
            .collect()
    }
    for (dtype, tol) in [(DType::F64, 1e-13), (DType::F32, 1e-5)] {
        let (a, b) = (params(dtype), params(dtype));
        let config = AdamConfig {
            lr: 0.05,
            weight_decay: 0.01,
            ..Default::default()
        };
        let (mut fused, mut reference) = (
            Adam::new(&a, config).unwrap(),
            Adam::new(&b, config).unwrap(),
        );
        for step in 0..6 {
            if step == 3 {
                fused.set_lr(0.02);
                reference.set_lr(0.02);
            }
            // Loss: sum(sin(p0) * p0) + sum(p1^2); p2 gets no gradient.
            let loss = |ps: &[(String, Var)]| {
                let p0 = ps[0].1.as_tensor();
                let l = (p0.sin().unwrap() * p0).unwrap().sum_all().unwrap();
                (l + ps[1].1.as_tensor().sqr().unwrap().sum_all().unwrap()).unwrap()
            };
            fused.step(&loss(&a).backward().unwrap()).unwrap();
            reference
                .step_with_candle_ops(&loss(&b).backward().unwrap())
                .unwrap();
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                let d = (x.as_tensor() - y.as_tensor()).unwrap().abs().unwrap();
                let d = d
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let d = d.to_scalar::<f64>().unwrap();
                assert!(d < tol, "{dtype:?} step {step}: {name} differs by {d}");
            }
        }
        for ((_, _, m1, v1), (_, _, m2, v2)) in fused.state.iter().zip(&reference.state) {
            for (x, y) in [(m1, m2), (v1, v2)] {
                let d = (x - y)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap();
                let d = d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                assert!(d < tol, "{dtype:?}: moments differ by {d}");
            }
        }
        let untouched = params(dtype);
        let d = (a[2].1.as_tensor() - untouched[2].1.as_tensor())
            .unwrap()
            .abs()
            .unwrap();
        let d = d
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        assert_eq!(
            d.to_scalar::<f64>().unwrap(),
            0.0,
            "a parameter without gradient moved"
        );
    }
}
