//! Helpers shared by the model crate's tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};

/// Uniform values in [-1, 1) of a shape, f64, from a seed.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = denoise_model::rng(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rand::Rng::random::<f64>(&mut rng) * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// An f32 batch of image-like values, uniform in [0.25, 0.75), from a seed.
pub fn images(shape: &[usize], seed: u64) -> Tensor {
    (rand(shape, seed) * 0.25)
        .and_then(|t| t.affine(1.0, 0.5))
        .and_then(|t| t.to_dtype(DType::F32))
        .unwrap()
}

pub fn vec64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The gradients of `sum(y * upstream)`: the backward pass of everything `y` was computed from,
/// with `upstream` as `y`'s gradient.
pub fn backward_from(y: &Tensor, upstream: &Tensor) -> candle_core::backprop::GradStore {
    (y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// `max |a - b| / max |b|`.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (vec64(a), vec64(b));
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Checks the backprop gradient of `loss` (a scalar of the f64 network) at the first, middle
/// and last entry of every parameter against central finite differences.
pub fn check_gradients(vars: &[(String, Var)], loss: &dyn Fn() -> Tensor, floor: f64) {
    let grads = loss().backward().unwrap();
    let eps = 1e-5;
    for (name, var) in vars {
        let g = vec64(grads.get(var.as_tensor()).unwrap());
        let base = vec64(var.as_tensor());
        for idx in [0, base.len() / 2, base.len() - 1] {
            let set = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let fd = (set(eps) - set(-eps)) / (2.0 * eps);
            set(0.0);
            let err = (fd - g[idx]).abs() / (floor + fd.abs().max(g[idx].abs()));
            assert!(
                err < 1e-3,
                "{name}[{idx}]: backprop {} vs finite differences {fd}",
                g[idx]
            );
        }
    }
}
