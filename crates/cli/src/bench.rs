//! `denoise bench`: training and inference throughput on synthetic batches.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use denoise_trainer::TrainConfig;

use crate::output::{prepare_output, write_json};
use crate::runtime::{pick_device, DeviceArg, DtypeArg};

#[derive(Args)]
pub struct BenchArgs {
    /// The network: seed-unet or cond-unet.
    #[arg(long, default_value = "seed-unet")]
    pub arch: String,
    /// Network width (default: the architecture's).
    #[arg(long)]
    pub width: Option<usize>,
    /// Images per training step (forward, loss, backward, Adam).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Images per inference batch.
    #[arg(long, default_value_t = 256)]
    pub infer_batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Steps per timed round.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Timed rounds (min / median / max are reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// The network's arithmetic: training in mixed precision (f32 weights), inference with the
    /// weights rounded to it.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    let tc = TrainConfig {
        arch: a.arch.clone(),
        width: a.width,
        ..Default::default()
    };
    tc.validate()?;
    if a.batch == 0 || a.infer_batch == 0 || a.size == 0 || !a.size.is_multiple_of(8) {
        bail!("--batch and --infer-batch must be at least 1 and --size a positive multiple of 8");
    }
    if let Some(path) = &a.json {
        prepare_output("--json", path)?;
    }
    let config = tc.model_config().expect("validated");
    let r = denoise_trainer::bench::bench(
        &config,
        &device,
        a.batch,
        a.infer_batch,
        a.size,
        a.steps,
        a.repeats,
        a.dtype.dtype(),
    )?;
    println!(
        "{} ({} parameters, {}) on {}: train {:.1} img/s (batch {}, min {:.1}, max {:.1}; {:.1} GFLOP/s), \
         inference {:.1} img/s (batch {}, min {:.1}, max {:.1}; {:.1} GFLOP/s), {} threads, peak RSS {:.0} MB",
        r.arch, r.params, r.dtype, r.device, r.train_img_per_s.median, r.train_batch, r.train_img_per_s.min, r.train_img_per_s.max,
        r.train_gflops, r.infer_img_per_s.median, r.infer_batch, r.infer_img_per_s.min, r.infer_img_per_s.max,
        r.infer_gflops, r.threads, r.peak_rss_mb
    );
    if let Some(p) = r.train_phases_ms {
        println!("a training step, phase by phase (device synchronised after each): {p}");
    }
    if let Some(h) = r.train_host_ms {
        print!(
            "the host queues a training step in {:.1} ms (median; min {:.1}, max {:.1})",
            h.median, h.min, h.max
        );
        match r.train_host_phases_ms {
            Some(p) => println!(": {p}"),
            None => println!(),
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &serde_json::to_value(&r)?)?;
    }
    Ok(())
}
