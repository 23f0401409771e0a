//! `denoise info`: what a checkpoint holds, read from its metadata and tensor names, without
//! building the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use denoise_model::Checkpoint;
use denoise_trainer::run_dir::{BEST, LAST};
use denoise_trainer::{EvalResult, TrainState};
use serde_json::{json, Value};

/// The tensors of one prefix (`model`, `ema`, `adam.m`, `adam.v`).
#[derive(Debug, Default)]
struct Group {
    tensors: usize,
    elements: usize,
    dtypes: Vec<String>,
}

/// Tensors grouped by prefix: the name up to its first dot, or its second for `adam.*`.
fn groups(ckpt: &Checkpoint) -> BTreeMap<String, Group> {
    let mut out: BTreeMap<String, Group> = BTreeMap::new();
    for (name, t) in &ckpt.tensors {
        let mut parts = name.splitn(3, '.');
        let first = parts.next().unwrap_or_default();
        let prefix = match (first, parts.next()) {
            ("adam", Some(second)) => format!("adam.{second}"),
            _ => first.to_string(),
        };
        let g = out.entry(prefix).or_default();
        g.tensors += 1;
        g.elements += t.elem_count();
        let dtype = format!("{:?}", t.dtype()).to_lowercase();
        if !g.dtypes.contains(&dtype) {
            g.dtypes.push(dtype);
        }
    }
    out
}

/// A JSON object's entries as `key value`, nulls left out.
fn entries(v: &Value, skip: &[&str]) -> String {
    let Some(map) = v.as_object() else {
        return v.to_string();
    };
    map.iter()
        .filter(|(k, v)| !v.is_null() && !skip.contains(&k.as_str()))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k} {s}"),
            v => format!("{k} {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything `info` reports, as JSON.
fn describe(path: &Path, ckpt: &Checkpoint) -> Result<Value> {
    let config = ckpt
        .model_config()
        .with_context(|| format!("reading {}", path.display()))?;
    let groups = groups(ckpt);
    let parse = |key: &str| -> Result<Option<Value>> {
        ckpt.metadata
            .get(key)
            .map(|s| {
                serde_json::from_str(s)
                    .with_context(|| format!("{}: metadata `{key}` is not JSON", path.display()))
            })
            .transpose()
    };
    let train = parse("denoise.train")?;
    let averaged = groups.contains_key("ema");
    let resumable =
        groups.contains_key("adam.m") && groups.contains_key("adam.v") && train.is_some();
    Ok(json!({
        "path": path.display().to_string(),
        "bytes": std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        "format": ckpt.metadata.get("denoise.format"),
        "network": serde_json::to_value(&config)?,
        "parameters": groups.get("model").map_or(0, |g| g.elements),
        "tensors": groups
            .iter()
            .map(|(k, g)| (k.clone(), json!({"tensors": g.tensors, "elements": g.elements, "dtypes": g.dtypes})))
            .collect::<serde_json::Map<_, _>>(),
        "weights_used": ckpt.metadata.get("denoise.weights").cloned().unwrap_or_else(|| {
            if averaged {
                "moving average of the trained weights (ema.*)".into()
            } else {
                "trained weights (model.*)".into()
            }
        }),
        "resumable": resumable,
        "adam_step": ckpt.metadata.get("denoise.adam_step").and_then(|s| s.parse::<u64>().ok()),
        "train": train,
        "eval": parse("denoise.eval")?,
        "lineage": parse("denoise.lineage")?,
    }))
}

/// The training state's lines: progress, validations, recipe.
fn training_lines(train: &Value) -> Vec<String> {
    let state: TrainState = match serde_json::from_value(train.clone()) {
        Ok(s) => s,
        Err(e) => return vec![format!("training    (a state this build cannot read: {e})")],
    };
    let mut lines = vec![format!(
        "training    {} steps, {} images, in epoch {}, {:.0} s ({:.2} h){}",
        state.global_step,
        state.images_seen,
        state.epoch + 1,
        state.elapsed_secs,
        state.elapsed_secs / 3600.0,
        if state.finished { ", finished" } else { "" }
    )];
    let best = state
        .history
        .iter()
        .filter(|r| r.val_loss.is_finite())
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss));
    if let (Some(best), Some(last)) = (best, state.history.last()) {
        lines.push(format!(
            "validation  {} validations; best loss {:.6} (PSNR {:.2} dB) at step {}; last loss {:.6} (PSNR {:.2} dB) at step {}, lr {}",
            state.history.len(),
            best.val_loss,
            best.val_psnr,
            best.step,
            last.val_loss,
            last.val_psnr,
            last.step,
            last.lr
        ));
    }
    lines.push(format!(
        "recipe      (latest run) {}",
        entries(
            &serde_json::to_value(&state.config).unwrap_or_default(),
            &[]
        )
    ));
    lines
}

/// The report as text.
fn text(v: &Value) -> String {
    let mut lines = vec![format!(
        "checkpoint  {} ({:.1} MB, {})",
        v["path"].as_str().unwrap_or_default(),
        v["bytes"].as_f64().unwrap_or(0.0) / 1e6,
        v["format"].as_str().unwrap_or("no format")
    )];
    lines.push(format!(
        "network     {}, {} parameters: {}",
        v["network"]["arch"].as_str().unwrap_or("?"),
        v["parameters"],
        entries(&v["network"], &["arch"])
    ));
    let tensors = v["tensors"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, g)| {
                    let dtypes: Vec<&str> = g["dtypes"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    format!("{k}.* {} ({})", g["tensors"], dtypes.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    lines.push(format!("tensors     {tensors}"));
    lines.push(format!(
        "weights     eval and generate use the {}",
        v["weights_used"].as_str().unwrap_or_default()
    ));
    lines.push(if v["resumable"] == true {
        format!(
            "resume      yes: Adam's state after step {} (`train --resume` with --out its folder)",
            v["adam_step"]
        )
    } else {
        "resume      no: a model-only file".to_string()
    });
    if !v["train"].is_null() {
        lines.extend(training_lines(&v["train"]));
    }
    for (i, stage) in v["lineage"].as_array().into_iter().flatten().enumerate() {
        lines.push(format!(
            "started     {} from {}: {} steps, {} images, {:.0} s; recipe {}",
            if i == 0 { "this run" } else { "which" },
            stage["checkpoint"].as_str().unwrap_or("?"),
            stage["global_step"],
            stage["images_seen"],
            stage["elapsed_secs"].as_f64().unwrap_or(0.0),
            entries(&stage["config"], &[])
        ));
    }
    if let Some(results) = v["eval"].get("results") {
        match serde_json::from_value::<Vec<EvalResult>>(results.clone()) {
            Ok(results) => {
                lines.push(format!(
                    "eval        stored by `export --eval-json` ({} test images):",
                    results.first().map_or(0, |r| r.images)
                ));
                lines.push(
                    denoise_trainer::eval::table(&results)
                        .trim_end()
                        .to_string(),
                );
            }
            Err(e) => lines.push(format!("eval        (a table this build cannot read: {e})")),
        }
    }
    lines.join("\n")
}

/// The checkpoint `path` names: itself, or for a training folder the first of `names` in it.
pub fn checkpoint_in(path: &Path, names: [&str; 2]) -> Result<std::path::PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    names
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "{}: a folder without {} or {}, expected a checkpoint or a training folder",
                path.display(),
                names[0],
                names[1]
            )
        })
}

/// Prints what the checkpoint at `path` holds, as text or JSON. A training folder stands for
/// its `last.safetensors` (or `best.safetensors` when there is no last).
pub fn info(path: &Path, as_json: bool) -> Result<()> {
    let path = &checkpoint_in(path, [LAST, BEST])?;
    let ckpt = Checkpoint::load(path)?;
    let v = describe(path, &ckpt)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", text(&v));
    }
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    /// A checkpoint written by `train` (best.safetensors, last.safetensors) or `export`, or a
    /// training folder (its last.safetensors).
    pub checkpoint: PathBuf,
    /// Print everything as JSON instead (the training state and eval table in full).
    #[arg(long)]
    pub json: bool,
}

/// `denoise info`.
pub fn run(a: InfoArgs) -> Result<()> {
    info(&a.checkpoint, a.json)
}
