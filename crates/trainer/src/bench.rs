//! Throughput of a network: training steps (forward, loss, backward, Adam) and inference, on
//! synthetic batches, timed after warm-up steps.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use denoise_loss::MixLoss;
use denoise_model::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::adam::{Adam, AdamConfig};
use crate::Result;

/// Min, median and max of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The smallest.
    pub min: f64,
    /// The middle one (the upper middle of an even count).
    pub median: f64,
    /// The largest.
    pub max: f64,
}

impl Phases {
    /// The mean of `steps` steps from their summed milliseconds (forward, loss, backward,
    /// optimizer).
    fn mean(ms: [f64; 4], steps: usize) -> Self {
        let per = |v: f64| v / steps as f64;
        Self {
            forward_ms: per(ms[0]),
            loss_ms: per(ms[1]),
            backward_ms: per(ms[2]),
            optimizer_ms: per(ms[3]),
        }
    }
}

/// `forward 3.0 ms, loss 0.3 ms, backward 8.9 ms, optimizer 0.6 ms`.
impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "forward {:.1} ms, loss {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
            self.forward_ms, self.loss_ms, self.backward_ms, self.optimizer_ms
        )
    }
}

impl Stats {
    /// The statistics of a non-empty list of finite values.
    pub fn of(v: &[f64]) -> Self {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        Self {
            min: s[0],
            median: s[s.len() / 2],
            max: s[s.len() - 1],
        }
    }
}

/// Milliseconds per training step in each of its phases, averaged over one extra round of steps
/// with the device synchronised after each phase (so that a GPU's queued work is counted in the
/// phase that queued it). The synchronisations keep the device from running one phase while
/// the host queues the next, so the sum can exceed the step time of the timed rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// The network's forward pass (with dropout, building the graph).
    pub forward_ms: f64,
    /// The loss (L1 + SSIM for seed-unet; EDM's weighted loss for cond-unet).
    pub loss_ms: f64,
    /// Backpropagation: every gradient.
    pub backward_ms: f64,
    /// The optimizer's step over all parameters.
    pub optimizer_ms: f64,
}

/// The throughput of one network on one device, as `denoise bench` prints and saves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// The network (`seed-unet`, `cond-unet`).
    pub arch: String,
    /// Its number of parameters.
    pub params: usize,
    /// Images per training step (forward, loss, backward, Adam).
    pub train_batch: usize,
    /// Images per inference call.
    pub infer_batch: usize,
    /// Side of the square images.
    pub size: usize,
    /// Training images per second over the rounds.
    pub train_img_per_s: Stats,
    /// Inference images per second over the rounds.
    pub infer_img_per_s: Stats,
    /// The network's arithmetic (`f32`, `bf16`, `f16`): for training, mixed precision (f32
    /// weights and optimizer, see `Model::with_compute_dtype`); for inference, the weights
    /// rounded to it (`Model::to_dtype`).
    #[serde(default = "f32_name", alias = "infer_dtype")]
    pub dtype: String,
    /// The device, as candle names it.
    pub device: String,
    /// Compute threads candle uses.
    pub threads: usize,
    /// Forward FLOPs per image, from the layer shapes (a training step costs about 3x).
    pub forward_flops_per_image: f64,
    /// Achieved GFLOP/s at the median (training counted as 3x forward).
    pub train_gflops: f64,
    /// Achieved GFLOP/s of inference at the median.
    pub infer_gflops: f64,
    /// Peak resident memory of the process so far, in MB (Linux only; 0 elsewhere).
    pub peak_rss_mb: f64,
    /// Where a training step's time goes (absent from results saved before it was measured).
    #[serde(default)]
    pub train_phases_ms: Option<Phases>,
    /// Milliseconds the host takes to queue one training step, each step timed without waiting
    /// for the device, over one more round: when the median is near the step time, the host
    /// (not the device) sets the pace; a large maximum is a stall (a wait hidden in some call).
    #[serde(default)]
    pub train_host_ms: Option<Stats>,
    /// The same round's host time by phase, averaged (no waits: what the host spends queuing
    /// each phase, to show where a host-bound step's time goes).
    #[serde(default)]
    pub train_host_phases_ms: Option<Phases>,
}

fn f32_name() -> String {
    "f32".into()
}

/// Keeps freed activation buffers in the heap instead of returning them to the kernel.
///
/// Every forward and backward pass frees and reallocates buffers of tens to hundreds of MB;
/// glibc serves those with `mmap` and gives them back with `munmap`, and the page faults and TLB
/// shootdowns that follow cost about 15 % of a cond-unet training step on 2 cores (measured with
/// `perf`), and a quarter of inference. Raising the mmap threshold to 1 GB (above the largest
/// buffer of a 512x512 image: about 270 MB) and the trim threshold to its maximum keeps them in
/// the heap, to be reused by the next pass; the peak memory stays the same (each pass needs the
/// same buffers). Measured on 2 cores: cond-unet inference 75 -> 101 img/s, a 512x512 denoise
/// 12.5 -> 8.1 s. Meant to be called once at the start of a program (`denoise` does); a no-op
/// off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The process's peak resident set size in MB, from `/proc/self/status` (0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Times `repeats` rounds of `steps` training steps and of `steps` inference batches, the
/// network computing in `dtype` (see [`BenchResult::dtype`]).
#[allow(clippy::too_many_arguments)]
pub fn bench(
    config: &ModelConfig,
    device: &Device,
    train_batch: usize,
    infer_batch: usize,
    size: usize,
    steps: usize,
    repeats: usize,
    dtype: DType,
) -> Result<BenchResult> {
    let (steps, repeats) = (steps.max(1), repeats.max(1));
    crate::network::check_training_memory(config, device, false)?;
    let model = Model::new(config, device, 0)?;
    let train_model = model.with_compute_dtype(dtype);
    let infer_model = model.to_dtype(dtype)?;
    let mut adam = Adam::new(model.vars(), AdamConfig::default())?;
    let loss_fn = MixLoss::default();
    let clean = Tensor::rand(
        0f32,
        1f32,
        (train_batch, model.channels(), size, size),
        device,
    )?;
    let noisy = (&clean + Tensor::randn(0f32, 0.1f32, clean.shape(), device)?)?;
    let infer = Tensor::rand(
        0f32,
        1f32,
        (infer_batch, model.channels(), size, size),
        device,
    )?;
    let sigma = Tensor::full(0.1f32, train_batch, device)?;
    let infer_sigma = Tensor::full(0.1f32, infer_batch, device)?;
    let mut rng = denoise_model::rng(0);
    // One step; `lap(i)` after phase `i` (forward, loss, backward, optimizer).
    let mut train_step = |lap: &mut dyn FnMut(usize) -> Result<()>| -> Result<()> {
        let out = train_model.forward(&noisy, Some(&sigma), Some(&mut rng))?;
        lap(0)?;
        let loss = loss_fn.forward(&out, &clean)?;
        lap(1)?;
        let grads = loss.backward()?;
        lap(2)?;
        adam.step(&grads)?;
        lap(3)
    };
    let mut no_laps = |_: usize| Ok(());
    let infer_step = || -> Result<()> {
        // Without a graph, as PyTorch's `no_grad` in unet_bench.py.
        denoise_model::layers::inference(|| infer_model.forward(&infer, Some(&infer_sigma), None))?;
        Ok(())
    };
    // Warm-up: allocations, kernel loading, autotuning.
    train_step(&mut no_laps)?;
    infer_step()?;
    device.synchronize()?;
    // A round's steps are queued on the device one after the other and waited for once, at
    // the end of the round, as unet_bench.py does (a wait after each step would leave the
    // device idle while the next one is queued).
    let (mut tr, mut inf) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t = Instant::now();
        for _ in 0..steps {
            train_step(&mut no_laps)?;
        }
        device.synchronize()?;
        tr.push((steps * train_batch) as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..steps {
            infer_step()?;
        }
        device.synchronize()?;
        inf.push((steps * infer_batch) as f64 / t.elapsed().as_secs_f64());
    }
    // A round of `steps` steps timed phase by phase: with `wait`, the device synchronised after
    // each phase (see `Phases`); without, the host's time to queue each (see
    // `BenchResult::train_host_ms`). The mean per phase, and each step's total.
    let mut phase_round = |wait: bool| -> Result<(Phases, Vec<f64>)> {
        let (mut ms, mut totals) = ([0f64; 4], Vec::with_capacity(steps));
        for _ in 0..steps {
            let start = Instant::now();
            let mut t = start;
            train_step(&mut |i: usize| -> Result<()> {
                if wait {
                    device.synchronize()?;
                }
                ms[i] += t.elapsed().as_secs_f64() * 1e3;
                t = Instant::now();
                Ok(())
            })?;
            totals.push(start.elapsed().as_secs_f64() * 1e3);
        }
        device.synchronize()?;
        Ok((Phases::mean(ms, steps), totals))
    };
    let (phases, _) = phase_round(true)?;
    let (host_phases, host) = phase_round(false)?;
    let flops = model.forward_flops(size, size);
    let train = Stats::of(&tr);
    let infer = Stats::of(&inf);
    Ok(BenchResult {
        threads: candle_core::utils::get_num_threads(),
        forward_flops_per_image: flops,
        train_gflops: train.median * 3.0 * flops / 1e9,
        infer_gflops: infer.median * flops / 1e9,
        peak_rss_mb: peak_rss_mb(),
        arch: config.arch().to_string(),
        params: model.num_params(),
        train_batch,
        infer_batch,
        size,
        train_img_per_s: train,
        infer_img_per_s: infer,
        dtype: dtype.as_str().to_string(),
        device: format!("{device:?}"),
        train_phases_ms: Some(phases),
        train_host_ms: Some(Stats::of(&host)),
        train_host_phases_ms: Some(host_phases),
    })
}
