//! `denoise selftest`: a device's forward, loss and gradients against the CPU's.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::output::{prepare_output, write_json};
use crate::runtime::{pick_device, DeviceArg};

#[derive(Args)]
pub struct SelftestArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Largest relative error accepted.
    #[arg(long, default_value_t = 1e-3)]
    pub tol: f64,
    /// Write the checks as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: SelftestArgs) -> Result<()> {
    let device = pick_device(a.device)?;
    if let Some(path) = &a.json {
        prepare_output("--json", path)?;
    }
    let checks = denoise_trainer::selftest::selftest(&device, 8, 4, 32, a.tol)?;
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    let worst = |half: bool| {
        checks
            .iter()
            .filter(|c| c.name.contains("bf16") == half)
            .map(|c| c.rel_err)
            .fold(0.0, f64::max)
    };
    println!(
        "selftest on {device:?}: {} checks, {} failed, worst relative error {:.2e} (bf16 checks: {:.2e})",
        checks.len(),
        failed.len(),
        worst(false),
        worst(true)
    );
    for c in &failed {
        println!("  FAILED {}: relative error {:.2e}", c.name, c.rel_err);
    }
    if let Some(path) = &a.json {
        let json =
            serde_json::json!({ "device": format!("{device:?}"), "tol": a.tol, "checks": checks });
        write_json(path, &json)?;
    }
    if !failed.is_empty() {
        bail!("{} of {} checks failed", failed.len(), checks.len());
    }
    Ok(())
}
