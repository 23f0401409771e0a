//! The files of a training folder: their names, the state a resume needs, checkpoints with
//! that state, the append-only logs, and the lock that keeps two runs out of one folder.
//! Shared by the training loop and the plots, which read what it writes.

use std::io::Write;
use std::path::Path;

use denoise_model::{Checkpoint, Model};
use serde::{Deserialize, Serialize};

use crate::adam::Adam;
use crate::ema::Ema;
use crate::schedule::EarlyStopping;
use crate::{io_err, Result, TrainConfig, TrainError};

/// The checkpoint of the best validation loss, in the output folder.
pub const BEST: &str = "best.safetensors";
/// The checkpoint of the latest step, with the optimizer and training state a resume needs.
pub const LAST: &str = "last.safetensors";
/// One JSON [`Record`] per validation.
pub const METRICS: &str = "metrics.jsonl";
/// The training loss of every logged step.
pub const STEPS: &str = "steps.csv";
/// The loss plot.
pub const PLOT: &str = "loss.png";

/// One validation, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The epoch (from 0).
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: u64,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    /// Mean validation loss (of the averaged weights where there are some).
    pub val_loss: f64,
    /// Mean validation PSNR, in dB.
    pub val_psnr: f64,
    /// The learning rate in use.
    pub lr: f64,
    /// Training time so far, over all runs, in seconds.
    pub elapsed_secs: f64,
    /// Training images per second since the previous validation.
    pub images_per_s: f64,
    /// Whether this validation saved `best.safetensors`.
    pub best: bool,
}

/// Everything a resume needs besides the tensors. Randomness has no hidden state: batches
/// draw from `(seed, epoch, batch index)` and dropout from `(seed, step)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// The recipe of the latest run.
    pub config: TrainConfig,
    /// The epoch in progress (from 0) and the index of its next batch.
    pub epoch: usize,
    /// See `epoch`.
    pub index: usize,
    /// Optimizer steps over all runs.
    pub global_step: u64,
    /// Training images seen over all runs.
    pub images_seen: u64,
    /// Early stopping's state.
    pub early: EarlyStopping,
    /// The step of `best.safetensors`.
    pub best_step: Option<u64>,
    /// Training time over all runs, in seconds.
    pub elapsed_secs: f64,
    /// True once the epochs are done or early stopping fired.
    pub finished: bool,
    /// Every validation so far.
    pub history: Vec<Record>,
}

/// Reads the training state of `out_dir/last.safetensors`, if there is one.
pub fn read_state(out_dir: &Path) -> Result<Option<TrainState>> {
    let path = out_dir.join(LAST);
    if !path.exists() {
        return Ok(None);
    }
    let ckpt = Checkpoint::load(&path)?;
    Ok(Some(state_of(&ckpt)?))
}

/// The training state in a checkpoint's metadata.
pub(crate) fn state_of(ckpt: &Checkpoint) -> Result<TrainState> {
    let json = ckpt
        .metadata
        .get("denoise.train")
        .ok_or_else(|| TrainError::Resume {
            path: ckpt.path.clone(),
            reason: "no training state (`denoise.train` metadata): not a last.safetensors".into(),
        })?;
    serde_json::from_str(json).map_err(|e| TrainError::Resume {
        path: ckpt.path.clone(),
        reason: format!("bad training state: {e}"),
    })
}

/// Writes `path` (atomically): the network, its moving average, and with `adam` everything a
/// resume needs.
pub(crate) fn save_checkpoint(
    path: &Path,
    model: &Model,
    ema: Option<&Ema>,
    adam: Option<&Adam>,
    state: &TrainState,
) -> Result<()> {
    let mut ckpt = Checkpoint::new(path);
    ckpt.set_model(model)?;
    if let Some(ema) = ema {
        for (name, t) in ema.model.tensors() {
            ckpt.insert(&format!("ema.{name}"), &t)?;
        }
    }
    ckpt.metadata.insert(
        "denoise.train".into(),
        serde_json::to_string(state).expect("state serialises"),
    );
    if let Some(adam) = adam {
        ckpt.metadata
            .insert("denoise.adam_step".into(), adam.step.to_string());
        for (name, _, m, v) in &adam.state {
            ckpt.insert(&format!("adam.m.{name}"), m)?;
            ckpt.insert(&format!("adam.v.{name}"), v)?;
        }
    }
    ckpt.save()?;
    Ok(())
}

/// Appends one line to a log file.
pub(crate) fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(f, "{line}").map_err(io_err(path))
}

/// The lock file that keeps two runs out of one folder.
pub(crate) const LOCK: &str = ".train.lock";

/// Takes the folder's lock for this process's lifetime (released when the file closes, also
/// when the process is killed), and writes this process's id into it. A lock file left by a run
/// that no longer exists is taken over with a message; temporary files that a killed run left
/// half-written are removed (they are never loaded). Where the file system cannot lock files,
/// the run goes on without it, with a warning.
pub(crate) fn lock_out_dir(out_dir: &Path) -> Result<std::fs::File> {
    let path = out_dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {
            take_over(&mut file, &path)?;
            remove_stale_temporaries(out_dir);
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(TrainError::Busy {
                path: out_dir.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => tracing::warn!(
            "{}: cannot lock ({e}); nothing keeps a second run out of this folder",
            path.display()
        ),
    }
    Ok(file)
}

/// With the lock held: says so when the file names a process that ended without releasing it
/// cleanly (killed), and writes this process's id in its place.
fn take_over(file: &mut std::fs::File, path: &Path) -> Result<()> {
    use std::io::{Read, Seek};
    let mut old = String::new();
    let _ = file.read_to_string(&mut old);
    if let Ok(pid) = old.trim().parse::<u32>() {
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(
                "{}: the lock of process {pid}, which no longer runs, is taken over",
                path.display()
            );
        }
    }
    file.set_len(0).map_err(io_err(path))?;
    file.rewind().map_err(io_err(path))?;
    write!(file, "{}", std::process::id()).map_err(io_err(path))
}

/// Removes the temporary files of checkpoint and plot writes (`.best.safetensors.PID.tmp`) that
/// a killed run left behind; only called with the folder's lock held, so no write is in
/// progress.
fn remove_stale_temporaries(out_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = [BEST, LAST, PLOT]
            .iter()
            .any(|f| name.starts_with(&format!(".{f}.")));
        if ours && name.ends_with(".tmp") && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(
                "{}: removed a half-written temporary file of an interrupted run",
                e.path().display()
            );
        }
    }
}
