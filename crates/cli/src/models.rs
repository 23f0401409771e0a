//! Which model a command runs: the one `--model` or `$DENOISE_MODEL` names, or one of the two
//! shipped in `models/`, picked by the size of the images: the CIFAR-10 model for thumbnails
//! (at most [`THUMBNAIL_SIDE`] on both sides) and for `generate --random`, the photo model
//! for anything larger.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use denoise_model::Model;

use crate::info;

/// The model trained on CIFAR-10 (32x32 thumbnails), shipped in `models/`.
pub const CIFAR_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/cond-unet-cifar10.safetensors"
);

/// The model trained on photographs, shipped in `models/`.
pub const PHOTO_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/cond-unet-photos.safetensors"
);

/// Images at most this many pixels on both sides get the CIFAR-10 model by default.
pub const THUMBNAIL_SIDE: usize = 64;

/// The shipped model for images of `h x w` pixels.
pub fn shipped_for(h: usize, w: usize) -> &'static str {
    if h <= THUMBNAIL_SIDE && w <= THUMBNAIL_SIDE {
        CIFAR_MODEL
    } else {
        PHOTO_MODEL
    }
}

/// `--model` (a training folder standing for its best.safetensors, or last.safetensors where
/// there is no best), or where it is left out, $DENOISE_MODEL or `shipped`.
pub fn model_path(path: Option<&Path>, shipped: &str) -> Result<PathBuf> {
    if let Some(p) = path {
        return info::checkpoint_in(
            p,
            [
                denoise_trainer::run_dir::BEST,
                denoise_trainer::run_dir::LAST,
            ],
        );
    }
    let p = std::env::var_os("DENOISE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(shipped));
    if !p.exists() {
        bail!(
            "no --model given and the default model {} is missing (set DENOISE_MODEL or pass --model)",
            p.display()
        );
    }
    // Without the `crates/cli/../..` of the built-in path.
    Ok(p.canonicalize().unwrap_or(p))
}

/// Loads the checkpoint at `path` with its network in `dtype`.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let model = Model::load(path, device)
        .with_context(|| format!("loading the model {}", path.display()))?;
    Ok(model.to_dtype(dtype)?)
}

/// The models of a run over images of many sizes, each loaded when first needed: the one the
/// user named for all of them, or else the shipped one for each image's size.
pub struct Models<'a> {
    named: Option<&'a Path>,
    device: Device,
    dtype: DType,
    thumbnails: OnceCell<(PathBuf, Model)>,
    photos: OnceCell<(PathBuf, Model)>,
}

impl<'a> Models<'a> {
    /// The models for `--model` (`None`: the default ones).
    pub fn new(named: Option<&'a Path>, device: &Device, dtype: DType) -> Self {
        Self {
            named,
            device: device.clone(),
            dtype,
            thumbnails: OnceCell::new(),
            photos: OnceCell::new(),
        }
    }

    /// The model for an image of `h x w` pixels, and its file.
    pub fn for_size(&self, h: usize, w: usize) -> Result<(&Path, &Model)> {
        let shipped = shipped_for(h, w);
        // A model the user named serves every size (from the first cell).
        let named = self.named.is_some() || std::env::var_os("DENOISE_MODEL").is_some();
        let cell = if named || shipped == CIFAR_MODEL {
            &self.thumbnails
        } else {
            &self.photos
        };
        if cell.get().is_none() {
            let path = model_path(self.named, shipped)?;
            let model = load(&path, &self.device, self.dtype)?;
            let _ = cell.set((path, model));
        }
        let (path, model) = cell.get().expect("set above");
        Ok((path.as_path(), model))
    }
}

/// The file name of `path`, for what a command prints.
pub fn name_of(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}
