//! Which network a run trains: the checkpoint's when it resumes or starts from one (with only
//! the settings that keep its shape), and whether the machine holds it before training starts.

use std::path::Path;

use candle_core::Device;
use denoise_model::{Checkpoint, ModelConfig};

use crate::{Result, TrainConfig, TrainError};

/// An error unless the network is small enough to build ([`ModelConfig::check_size`]) and, on
/// the CPU, the memory available holds its weights, their gradients, Adam's two moments and the
/// moving average if there is one: a network too wide for the machine would otherwise abort
/// the process when an allocation fails.
pub(crate) fn check_training_memory(
    config: &ModelConfig,
    device: &Device,
    ema: bool,
) -> Result<()> {
    let params = config.check_size()?;
    if !device.is_cpu() {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let copies = if ema { 5 } else { 4 };
    let needed = params * 4 * copies;
    if needed > available {
        let gib = |b: u128| b as f64 / f64::from(1u32 << 30);
        return Err(TrainError::Config(format!(
            "training this {} ({params} parameters) needs at least {:.1} GiB for its weights, \
             their gradients and Adam's moments{}; this machine has {:.1} GiB available: a \
             smaller width, or a GPU",
            config.arch(),
            gib(needed),
            if ema { " and the moving average" } else { "" },
            gib(available)
        )));
    }
    Ok(())
}

/// The memory available to a new allocation, in bytes (`MemAvailable` of `/proc/meminfo`;
/// `None` where there is no such file).
fn available_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The checkpoint `--init-from` names and the network a run started from it trains: the
/// checkpoint's, with the configuration's dropout.
pub(crate) fn init_checkpoint(
    config: &TrainConfig,
    path: &Path,
) -> Result<(Checkpoint, ModelConfig)> {
    let ckpt = Checkpoint::load(path)?;
    let wanted = network_of(
        &ckpt,
        config,
        "--init-from: ",
        "a run started from it keeps its network (leave these settings out)",
    )?;
    Ok((ckpt, wanted))
}

/// The network of `ckpt` with the fields of `config` that do not change its shape (dropout);
/// another architecture, or settings that would change the shape, are an error whose reason
/// starts with `what` and ends with `keep`.
pub(crate) fn network_of(
    ckpt: &Checkpoint,
    config: &TrainConfig,
    what: &str,
    keep: &str,
) -> Result<ModelConfig> {
    let saved = ckpt.model_config()?;
    let bad = |reason: String| TrainError::Resume {
        path: ckpt.path.clone(),
        reason: format!("{what}{reason}"),
    };
    if saved.arch() != config.arch {
        return Err(bad(format!(
            "it holds a {} model, the configuration asks for {}",
            saved.arch(),
            config.arch
        )));
    }
    let mut wanted = saved.clone();
    config.apply_model_fields(&mut wanted);
    let changed = shape_changes(&saved, &wanted);
    if !changed.is_empty() {
        return Err(bad(format!(
            "its network has {}: {keep}",
            changed.join(", ")
        )));
    }
    Ok(wanted)
}

/// The shape fields in which `wanted` differs from `saved`, as "width 8, not 16".
fn shape_changes(saved: &ModelConfig, wanted: &ModelConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a}, not {b}"));
        }
    };
    match (saved, wanted) {
        (ModelConfig::SeedUnet(a), ModelConfig::SeedUnet(b)) => {
            check("width", a.base.to_string(), b.base.to_string());
        }
        (ModelConfig::CondUnet(a), ModelConfig::CondUnet(b)) => {
            check("width", a.base.to_string(), b.base.to_string());
            check("mults", format!("{:?}", a.mults), format!("{:?}", b.mults));
            check("blocks", a.blocks.to_string(), b.blocks.to_string());
            check(
                "attention",
                a.attention.to_string(),
                b.attention.to_string(),
            );
        }
        _ => check("network", saved.arch().into(), wanted.arch().into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_sized_against_the_machine_before_training() {
        let mut config = ModelConfig::from_arch("seed-unet").unwrap();
        config.set_width(8);
        check_training_memory(&config, &Device::Cpu, true).unwrap();
        // Over the parameter limit: refused whatever the machine.
        config.set_width(1100);
        let e = check_training_memory(&config, &Device::Cpu, false).unwrap_err();
        assert!(e.to_string().contains("parameters"), "{e}");
        // Within it, but more than this machine holds (where the memory is known).
        if let Some(bytes) = available_memory() {
            assert!(bytes > 0);
            let per_width2 = 1879u128 * 4 * 4; // seed-unet: about 1879 w^2 parameters
            let width = ((bytes / per_width2) as f64).sqrt() as usize + 64;
            config.set_width(width);
            if config.param_count().unwrap() <= denoise_model::MAX_PARAMS {
                let e = check_training_memory(&config, &Device::Cpu, false).unwrap_err();
                assert!(e.to_string().contains("GiB available"), "{e}");
            }
        }
    }
}
