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
    /// Counting only ([`ParamStore::counting`]): how many values the parameters would hold.
    counted: Option<u128>,
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
            counted: None,
        }
    }

    /// A store that only counts: each parameter is a scalar stand-in, nothing of its size is
    /// allocated, and [`ParamStore::count`] says how many values the network would have. It
    /// sizes a network from its configuration before building it (a width of 100000 would ask
    /// for hundreds of gigabytes).
    pub fn counting() -> Self {
        Self {
            counted: Some(0),
            ..Self::new(&Device::Cpu, 0)
        }
    }

    /// How many parameters `build` creates, counted by a [`ParamStore::counting`] store.
    pub fn count_of<T>(build: impl FnOnce(&mut ParamStore) -> Result<T>) -> Result<u128> {
        let mut s = Self::counting();
        build(&mut s)?;
        Ok(s.count().unwrap_or(0))
    }

    /// How many values the parameters created so far hold (counting stores only).
    pub fn count(&self) -> Option<u128> {
        self.counted
    }

    /// In a counting store, counts `shape`'s values and returns a stand-in.
    fn counted(&mut self, shape: &[usize]) -> Result<Option<Var>> {
        let Some(total) = self.counted else {
            return Ok(None);
        };
        let n = shape
            .iter()
            .fold(1u128, |n, &d| n.saturating_mul(d as u128));
        self.counted = Some(total.saturating_add(n));
        Ok(Some(Var::zeros((), self.dtype, &Device::Cpu)?))
    }

    /// A new parameter drawn uniformly from `+-1/sqrt(fan_in)`: PyTorch's default for both the
    /// weights (kaiming-uniform with `a = sqrt(5)`) and the biases of conv layers.
    pub fn uniform(&mut self, name: &str, shape: &[usize], fan_in: usize) -> Result<Var> {
        if let Some(stand_in) = self.counted(shape)? {
            return Ok(self.keep(name, stand_in));
        }
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
        if let Some(stand_in) = self.counted(value.dims())? {
            return Ok(self.keep(name, stand_in));
        }
        let var = Var::from_tensor(&value.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        Ok(self.keep(name, var))
    }

    /// A new parameter of `len` values, all `value` (normalisation scales and shifts).
    pub fn filled(&mut self, name: &str, len: usize, value: f64) -> Result<Var> {
        if let Some(stand_in) = self.counted(&[len])? {
            return Ok(self.keep(name, stand_in));
        }
        self.push(name, Tensor::full(value as f32, len, &Device::Cpu)?)
    }

    fn keep(&mut self, name: &str, var: Var) -> Var {
        self.vars.push((name.to_string(), var.clone()));
        var
    }

    /// The registered parameters, by name, in the order they were made.
    pub fn into_vars(self) -> Vec<(String, Var)> {
        self.vars
    }

    /// The parameters so far, leaving the store empty (and still counting, if it was).
    pub fn take_vars(&mut self) -> Vec<(String, Var)> {
        std::mem::take(&mut self.vars)
    }
}

/// Number of scalars in a list of parameters.
pub fn count(vars: &[(String, Var)]) -> usize {
    vars.iter().map(|(_, v)| v.elem_count()).sum()
}
