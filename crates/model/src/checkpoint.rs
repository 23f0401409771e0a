//! Checkpoints: safetensors files with named tensors and string metadata.
//!
//! Metadata keys: `denoise.format` (always [`FORMAT`]), `denoise.model` (the [`ModelConfig`] as
//! JSON); other components add keys of their own (the trainer adds `denoise.train`). Model
//! weights are stored as `model.<name>`, their running average (where training kept one) as
//! `ema.<name>`; loading prefers the average. Writes are atomic: the file is written under a
//! temporary name in the same folder, flushed to disk, then renamed over the target, so a
//! crash never leaves a half-written checkpoint and never loses the previous one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{Model, ModelConfig, ModelError, Result};

/// The value of the `denoise.format` metadata key.
pub const FORMAT: &str = "denoise-checkpoint/1";

/// An in-memory checkpoint: tensors (on the CPU) and metadata.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file it was loaded from or will be saved to.
    pub path: String,
    /// The safetensors metadata: `denoise.format`, `denoise.model` (the architecture as JSON)
    /// and whatever else the trainer and `export` store (`denoise.train`, `denoise.eval`, ...).
    pub metadata: BTreeMap<String, String>,
    /// Tensors by name: `model.*`, `ema.*`, `adam.m.*`, `adam.v.*`.
    pub tensors: BTreeMap<String, Tensor>,
}

fn bad(path: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadCheckpoint {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// An empty checkpoint that will be saved to `path`.
    pub fn new(path: &Path) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert("denoise.format".to_string(), FORMAT.to_string());
        Self {
            path: path.display().to_string(),
            metadata,
            tensors: BTreeMap::new(),
        }
    }

    /// Stores a model's configuration and weights (as f32).
    pub fn set_model(&mut self, model: &Model) -> Result<()> {
        let config = serde_json::to_string(&model.config()).expect("configs serialise");
        self.metadata.insert("denoise.model".to_string(), config);
        for (name, t) in model.tensors() {
            self.insert(&format!("model.{name}"), &t)?;
        }
        Ok(())
    }

    /// Adds a tensor, copied to the CPU as f32.
    pub fn insert(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let t = t
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    /// A tensor by name, or an error naming the file and the missing tensor.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| bad(&self.path, format!("no tensor named {name}")))
    }

    /// Whether there is a tensor of this name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Stores every tensor as f16 (half the size; the weights load back as f32).
    pub fn to_f16(&mut self) -> Result<()> {
        for t in self.tensors.values_mut() {
            *t = t.to_dtype(DType::F16)?;
        }
        Ok(())
    }

    /// The model configuration from the metadata.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let json = self.metadata.get("denoise.model").ok_or_else(|| {
            bad(
                &self.path,
                "no `denoise.model` metadata: not a denoise model checkpoint",
            )
        })?;
        serde_json::from_str(json)
            .map_err(|e| bad(&self.path, format!("bad model configuration: {e}")))
    }

    /// Writes the checkpoint atomically (temporary file in the same folder, fsync, rename).
    pub fn save(&self) -> Result<()> {
        let path = PathBuf::from(&self.path);
        let meta: std::collections::HashMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let bytes = safetensors::serialize(
            self.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(meta),
        )
        .map_err(|e| bad(&self.path, format!("cannot serialise: {e}")))?;
        write_atomic(&path, &bytes)
    }

    /// Reads and validates a checkpoint file.
    pub fn load(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            action: "reading",
            path: p.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &p)
    }

    /// A checkpoint from the bytes of a file named `path` (for the errors): what [`load`]
    /// checks, without the file. Nothing in the bytes is executed or followed.
    ///
    /// [`load`]: Checkpoint::load
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        let p = path.to_string();
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            let what = match other_format(bytes) {
                Some(kind) => format!(
                    "{kind}, not a safetensors file: denoise reads only its own safetensors \
                     checkpoints (nothing in a file is ever executed or unpickled)"
                ),
                None => format!("not a safetensors file ({e})"),
            };
            bad(&p, what)
        })?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        match metadata.get("denoise.format") {
            Some(f) if f == FORMAT => {}
            Some(f) => return Err(bad(&p, format!("format {f}, this build reads {FORMAT}"))),
            None => return Err(bad(
                &p,
                "a safetensors file, but not a denoise checkpoint (no `denoise.format` metadata)",
            )),
        }
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| bad(&p, format!("cannot read tensors: {e}")))?
            .into_iter()
            .collect();
        Ok(Self {
            path: p,
            metadata,
            tensors,
        })
    }
}

/// What a file that is not safetensors is, from its first bytes, where it is a common format
/// of another tool.
fn other_format(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    Some(if starts(b"PK\x03\x04") {
        "a zip archive (PyTorch's torch.save format, .pt / .pth)"
    } else if bytes.len() > 1 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        "a Python pickle (an older PyTorch .pth / .pkl)"
    } else if starts(b"\x93NUMPY") {
        "a NumPy array (.npy)"
    } else if starts(b"\x89HDF\r\n\x1a\n") {
        "an HDF5 file (Keras .h5)"
    } else if starts(b"GGUF") {
        "a GGUF file (llama.cpp)"
    } else if starts(b"\x89PNG") || starts(b"\xff\xd8\xff") {
        "an image"
    } else {
        return None;
    })
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same folder,
/// written and synced to the disk, renamed over `path`, and the folder synced, so that after a
/// crash or power loss `path` is the old file or the new one, whole. If anything fails (a full
/// disk: [`ModelError::Write`]), the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Write {
        path: path.display().to_string(),
        bytes: bytes.len(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the folder's entry.
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}
