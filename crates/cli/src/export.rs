//! `denoise export`: a model-only checkpoint for shipping, with its recipe and eval table.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use denoise_model::Model;

use crate::models;
use crate::output::is_same_file;

#[derive(Args)]
pub struct ExportArgs {
    /// A training checkpoint (best.safetensors or last.safetensors, or a training folder for
    /// its best).
    #[arg(long)]
    pub model: PathBuf,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Store the weights as f16 (half the size).
    #[arg(long)]
    pub f16: bool,
    /// An `eval --json` file to store in the metadata (`denoise.eval`).
    #[arg(long)]
    pub eval_json: Option<PathBuf>,
}

pub fn run(mut a: ExportArgs) -> Result<()> {
    a.model = models::model_path(Some(&a.model), models::CIFAR_MODEL)?;
    if is_same_file(&a.model, &a.out) {
        bail!(
            "--out {} is the --model itself: the model-only file would replace the training \
             checkpoint; choose another file name",
            a.out.display()
        );
    }
    let ckpt = denoise_model::Checkpoint::load(&a.model)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let model = Model::from_checkpoint(&ckpt, &Device::Cpu)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let mut out = denoise_model::Checkpoint::new(&a.out);
    out.set_model(&model)?;
    if let Some(train) = ckpt.metadata.get("denoise.train") {
        out.metadata.insert("denoise.train".into(), train.clone());
    }
    if let Some(path) = &a.eval_json {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--eval-json {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--eval-json {}: not JSON", path.display()))?;
        out.metadata.insert("denoise.eval".into(), v.to_string());
    }
    if a.f16 {
        out.to_f16()?;
    }
    out.metadata.insert(
        "denoise.weights".into(),
        format!(
            "{} ({}), {}",
            if ckpt.has_tensor(&format!("ema.{}", model.vars()[0].0)) {
                "moving average of the trained weights"
            } else {
                "trained weights"
            },
            if a.f16 { "f16" } else { "f32" },
            a.model.display()
        ),
    );
    out.save()?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({} parameters) -> {} ({:.1} MB)",
        model.config().arch(),
        model.num_params(),
        a.out.display(),
        size as f64 / 1e6
    );
    Ok(())
}
