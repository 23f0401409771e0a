//! Named parameters and their seeded, PyTorch-style initialisation.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::Result;

/// The random generator used for initialisation and dropout masks: seeded, portable,
/// and the same on every platform.
pub type Rng64 = rand_chacha::ChaCha8Rng;

/// Creates the generator for a seed.
pub fn rng(seed: u64) -> Rng64 {
    Rng64::seed_from_u64(seed)
}

/// The parameters of a network, in creation order, each with its PyTorch-style name
/// (`enc1.conv1.weight`).
pub struct ParamStore {
    vars: Vec<(String, Var)>,
    device: Device,
    dtype: DType,
    rng: Rng64,
}

impl ParamStore {
    /// A store whose initial values come from `seed`.
    pub fn new(device: &Device, seed: u64) -> Self {
        Self::with_dtype(device, DType::F32, seed)
    }

    /// A store whose parameters have `dtype` (f64 serves the finite-difference tests).
    pub fn with_dtype(device: &Device, dtype: DType, seed: u64) -> Self {
        Self {
            vars: Vec::new(),
            device: device.clone(),
            dtype,
            rng: rng(seed),
        }
    }

    /// A new parameter drawn uniformly from `+-1/sqrt(fan_in)`: PyTorch's default for both the
    /// weights (kaiming-uniform with `a = sqrt(5)`) and the biases of conv layers.
    pub fn uniform(&mut self, name: &str, shape: &[usize], fan_in: usize) -> Result<Var> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| ((self.rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let t = Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(&self.device)?;
        self.push(name, t)
    }

    /// A new parameter with a given value.
    pub fn push(&mut self, name: &str, value: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&value.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        self.vars.push((name.to_string(), var.clone()));
        Ok(var)
    }

    /// The registered parameters, by name, in the order they were made.
    pub fn into_vars(self) -> Vec<(String, Var)> {
        self.vars
    }
}

/// Number of scalars in a list of parameters.
pub fn count(vars: &[(String, Var)]) -> usize {
    vars.iter().map(|(_, v)| v.elem_count()).sum()
}
