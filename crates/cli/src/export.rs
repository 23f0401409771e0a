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
        if let Some(lineage) = lineage(train)? {
            out.metadata
                .insert("denoise.lineage".into(), lineage.to_string());
        }
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

/// The earlier stages of a fine-tuned model (`init_from`): for the checkpoint its training
/// started from, that checkpoint's recipe, training time and steps, then its own earlier
/// stages, oldest last; read at export time, since the file may be replaced later (a shipped
/// model fine-tuned into its own successor). `None` for a model trained from scratch.
fn lineage(train: &str) -> Result<Option<serde_json::Value>> {
    lineage_at(train, 0)
}

/// [`lineage`], `depth` stages back.
fn lineage_at(train: &str, depth: usize) -> Result<Option<serde_json::Value>> {
    let state: serde_json::Value =
        serde_json::from_str(train).context("the checkpoint's training state is not JSON")?;
    let Some(from) = state["config"]["init_from"].as_str() else {
        return Ok(None);
    };
    let ckpt = denoise_model::Checkpoint::load(std::path::Path::new(from)).with_context(|| {
        format!("the run started from {from} (init_from), which must be there to record its stage")
    })?;
    let mut stages = vec![serde_json::json!({ "checkpoint": from })];
    if let Some(t) = ckpt.metadata.get("denoise.train") {
        let s: serde_json::Value = serde_json::from_str(t).unwrap_or_default();
        stages[0]["config"] = s["config"].clone();
        stages[0]["elapsed_secs"] = s["elapsed_secs"].clone();
        stages[0]["global_step"] = s["global_step"].clone();
        stages[0]["images_seen"] = s["images_seen"].clone();
    }
    let earlier = match (
        ckpt.metadata.get("denoise.lineage"),
        ckpt.metadata.get("denoise.train"),
    ) {
        (Some(stored), _) => serde_json::from_str(stored).ok(),
        // A checkpoint exported before lineages were recorded: follow its own init_from.
        (None, Some(t)) if depth < 16 => lineage_at(t, depth + 1)?,
        _ => None,
    };
    if let Some(serde_json::Value::Array(more)) = earlier {
        stages.extend(more);
    }
    Ok(Some(serde_json::Value::Array(stages)))
}
