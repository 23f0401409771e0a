//! Datasets for `denoise`: where clean images come from and how they become training batches.
//!
//! `denoise-data` reads the official CIFAR-10 binary release (and downloads it, checked, when it
//! is absent), reads folders of images (PNG, JPEG, TIFF, WebP, BMP) (such as the JPEG copy of CIFAR-10), splits
//! off a fixed validation set, and turns clean images into seeded, noisy training batches on a
//! background thread (each image with its own noise level, uniform or EDM's log-normal). It
//! also estimates the noise level of a single noisy image ([`estimate`]). Images are kept in
//! memory as `u8` CHW arrays; batches are `f32` in `[0, 1]`. It knows nothing of models, losses
//! or devices: it hands out plain `Vec<f32>` batches.
//!
//! ```
//! use std::sync::Arc;
//! use denoise_data::{BatchConfig, Batcher, ImageSet};
//!
//! // Ten 32x32 RGB images in memory. From disk: `denoise_data::load(path, &Default::default())?`
//! // gives the train / validation / test splits of a CIFAR-10 or image folder.
//! let (n, c, h, w) = (10, 3, 32, 32);
//! let pixels = (0..n * c * h * w).map(|i| (i % 251) as u8).collect();
//! let set = ImageSet { pixels, n, c, h, w, ..Default::default() };
//!
//! // Batches of 4, each image with its own noise level (uniform in [0, 55/255] by default).
//! let cfg = BatchConfig { batch_size: 4, seed: 7, ..Default::default() };
//! let mut batches = Batcher::start(Arc::new(set), cfg.clone(), 0, 0);
//! assert_eq!(batches.steps_per_epoch, 3); // 4 + 4 + 2 images, as PyTorch's DataLoader
//! let b = batches.next_batch();
//! assert_eq!(b.shape(), (4, 3, 32, 32));
//! assert!(b.sigmas.iter().all(|&s| (0.0..=cfg.sigma_max).contains(&s)));
//! assert_eq!(b.noisy.len(), b.clean.len());
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod cifar;
pub mod crops;
pub mod download;
pub mod estimate;
pub mod folder;
pub mod noise;

use std::path::{Path, PathBuf};

pub use batch::{Batch, BatchConfig, Batcher};

/// What can go wrong while finding, downloading or reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file has the wrong length (a truncated or foreign CIFAR-10 batch file).
    #[error("{path}: expected {expected} bytes ({what}), found {found}")]
    BadSize {
        /// The file.
        path: PathBuf,
        /// The length it should have.
        expected: u64,
        /// The length it has.
        found: u64,
        /// What the file should hold.
        what: String,
    },
    /// A file or folder that should be there is not.
    #[error("{path}: missing (expected {what})")]
    Missing {
        /// The path that is missing.
        path: PathBuf,
        /// What was expected there.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An image file cannot be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// An image of a folder dataset has another size than the dataset's.
    #[error("{path}: image is {found_w}x{found_h}, the dataset's images are {want_w}x{want_h} (the crop option center-crops every image to the smallest height and width among them)")]
    WrongImageSize {
        /// The file.
        path: PathBuf,
        /// Its width.
        found_w: u32,
        /// Its height.
        found_h: u32,
        /// The dataset's width.
        want_w: u32,
        /// The dataset's height.
        want_h: u32,
    },
    /// An image is smaller than the patches it should be cut into.
    #[error(
        "{path}: image is {found_w}x{found_h}, smaller than the {patch}x{patch} patches asked for"
    )]
    SmallerThanPatch {
        /// The file.
        path: PathBuf,
        /// Its width.
        found_w: u32,
        /// Its height.
        found_h: u32,
        /// The patch side.
        patch: usize,
    },
    /// A CIFAR-10 record's label is not one of the ten classes.
    #[error("{path}: record {record} has label {label}; CIFAR-10 labels are 0 to 9 (not a CIFAR-10 batch file?)")]
    BadLabel {
        /// The batch file.
        path: PathBuf,
        /// The record's index in the file (from 0).
        record: usize,
        /// The label byte found.
        label: u8,
    },
    /// A folder holds neither the CIFAR-10 binary files nor images.
    #[error("{path}: no CIFAR-10 binary files (cifar-10-batches-bin/data_batch_1.bin ...) and no images (PNG, JPEG, TIFF, WebP, BMP) found")]
    Empty {
        /// The folder.
        path: PathBuf,
    },
    /// The CIFAR-10 archive could not be downloaded.
    #[error("downloading {url} failed: {reason}\n{help}")]
    Download {
        /// Where it was downloaded from.
        url: String,
        /// What went wrong.
        reason: String,
        /// What the user can do instead (where to put the files by hand).
        help: String,
    },
    /// A downloaded archive is not the expected file.
    #[error("{path}: checksum mismatch: md5 {found}, expected {expected}")]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// The MD5 it should have.
        expected: String,
        /// The MD5 it has.
        found: String,
    },
    /// Any other wrong input or setting, described in full.
    #[error("{0}")]
    Invalid(String),
}

/// A result whose error is a [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Clean images in memory: `n` images of `c x h x w` bytes each (CHW), with optional labels.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    /// All images, one after the other, each `c * h * w` bytes in CHW order.
    pub pixels: Vec<u8>,
    /// The class of each image (empty when unlabeled).
    pub labels: Vec<u16>,
    /// Number of images.
    pub n: usize,
    /// Channels (3 for RGB).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Class names, indexed by label (empty when unlabeled).
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Bytes per image: `c * h * w`.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The bytes of image `i` (CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels[i * l..(i + 1) * l]
    }

    /// A new set holding the images at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * self.image_len());
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
            if !self.labels.is_empty() {
                labels.push(self.labels[i]);
            }
        }
        ImageSet {
            pixels,
            labels,
            n: idx.len(),
            classes: self.classes.clone(),
            ..*self
        }
    }

    /// About `n` images, spread evenly over the classes: the first `ceil(n / classes)` of each
    /// (the first `n / 10` of each of CIFAR-10's ten), or the first `n` of an unlabeled set.
    pub fn first_balanced(&self, n: usize) -> ImageSet {
        match self.label_count() {
            0 => self.first(n),
            classes => self.first_per_class(n.div_ceil(classes)),
        }
    }

    /// Labels in use: one more than the largest (0 for an unlabeled set).
    fn label_count(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// The first `n` images (all of them if there are fewer).
    fn first(&self, n: usize) -> ImageSet {
        let idx: Vec<usize> = (0..self.n.min(n)).collect();
        self.select(&idx)
    }

    /// The first `per_class` images of each class, in file order, classes in label order.
    /// Unlabeled sets give their first `per_class * 10` images.
    pub fn first_per_class(&self, per_class: usize) -> ImageSet {
        let n_classes = self.label_count();
        if n_classes == 0 {
            return self.first(per_class * 10);
        }
        let mut idx = Vec::new();
        for class in 0..n_classes {
            idx.extend(
                (0..self.n)
                    .filter(|&i| self.labels[i] as usize == class)
                    .take(per_class),
            );
        }
        self.select(&idx)
    }

    /// Image `i` as `f32` in `[0, 1]` (CHW).
    pub fn image_f32(&self, i: usize) -> Vec<f32> {
        self.image(i).iter().map(|&p| p as f32 / 255.0).collect()
    }

    /// Every image cut into `p x p` patches ([`grid_patches`]), each with its image's label.
    pub fn patches(&self, p: usize) -> Result<ImageSet> {
        if p == 0 || p > self.h || p > self.w {
            return Err(DataError::Invalid(format!(
                "patches of {p}x{p}: expected a side from 1 to the images' {}x{}",
                self.w, self.h
            )));
        }
        let per = (self.h / p) * (self.w / p);
        let mut pixels = Vec::with_capacity(self.n * per * self.c * p * p);
        for i in 0..self.n {
            pixels.extend(grid_patches(self.image(i), (self.c, self.h, self.w), p));
        }
        let labels = self
            .labels
            .iter()
            .flat_map(|&l| std::iter::repeat_n(l, per))
            .collect();
        Ok(ImageSet {
            pixels,
            labels,
            n: self.n * per,
            h: p,
            w: p,
            classes: self.classes.clone(),
            ..*self
        })
    }
}

/// Train, validation and test images of a dataset.
#[derive(Debug, Clone)]
pub struct Splits {
    /// The training images (without the validation images).
    pub train: ImageSet,
    /// The held-out validation images, taken from the training set.
    pub val: ImageSet,
    /// The test images.
    pub test: ImageSet,
    /// What was read, for logs.
    pub description: String,
    /// With [`LoadOptions::random_crops`]: the whole training photos, from which each epoch
    /// cuts new crops; `train` then holds the grid's patches of the same photos (as many as
    /// an epoch's crops).
    pub train_crops: Option<std::sync::Arc<crops::CropPool>>,
}

impl Splits {
    /// What the batcher trains on: the random crops where there are any, else `train`.
    pub fn train_images(&self) -> batch::TrainImages {
        match &self.train_crops {
            Some(pool) => batch::TrainImages::Crops(pool.clone()),
            None => batch::TrainImages::Fixed(std::sync::Arc::new(self.train.clone())),
        }
    }
}

/// How a folder given as `--data` is read.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Center-crop every image to the training size instead of refusing those of another size.
    pub crop: bool,
    /// The training size `(h, w)`; by default the size of the first image, or with `crop` the
    /// smallest height and width among the images, each rounded down to a multiple of
    /// `multiple`.
    pub size: Option<(usize, usize)>,
    /// With `crop`: the sides of the size found are rounded down to a multiple of this (the
    /// network's; 0 or 1: not rounded).
    pub multiple: usize,
    /// Cut every image, of any size at least this, into `patch x patch` squares on a centred
    /// grid ([`grid_patches`]), instead of using whole images of one size. For training on
    /// photos: each becomes many training images. `crop` and `size` are then ignored.
    pub patch: Option<usize>,
    /// With `patch`, on an image folder: train on crops at random positions and in random
    /// orientations, new every epoch ([`crops::CropPool`]), instead of the fixed grid. The
    /// validation and test images stay on the grid.
    pub random_crops: bool,
}

/// The `p x p` patches of a CHW image of `c x h x w` bytes, on a grid centred in the image
/// (`(h / p) * (w / p)` of them, row by row; the margins left over are dropped), one after the
/// other, each CHW.
pub fn grid_patches(img: &[u8], (c, h, w): (usize, usize, usize), p: usize) -> Vec<u8> {
    let (rows, cols) = (h / p.max(1), w / p.max(1));
    let (y0, x0) = ((h - rows * p) / 2, (w - cols * p) / 2);
    let mut out = Vec::with_capacity(rows * cols * c * p * p);
    for r in 0..rows {
        for q in 0..cols {
            for ch in 0..c {
                for y in 0..p {
                    let src = ch * h * w + (y0 + r * p + y) * w + x0 + q * p;
                    out.extend_from_slice(&img[src..src + p]);
                }
            }
        }
    }
    out
}

/// The CIFAR-10 binary splits, cut into patches when asked.
fn cifar_patches(splits: Splits, opts: &LoadOptions) -> Result<Splits> {
    let Some(p) = opts.patch else {
        return Ok(splits);
    };
    Ok(Splits {
        description: format!("{}, cut into {p}x{p} patches", splits.description),
        train: splits.train.patches(p)?,
        val: splits.val.patches(p)?,
        test: splits.test.patches(p)?,
        train_crops: None,
    })
}

/// What kind of dataset a folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The CIFAR-10 binary release; the path is the folder holding `data_batch_1.bin`.
    CifarBinary(PathBuf),
    /// A tree of image files.
    Folder(PathBuf),
}

/// Tells apart a CIFAR-10 binary folder (the files, or a `cifar-10-batches-bin` folder with
/// them) and an image folder, by what is inside. `None` when the folder has neither.
pub fn detect(path: &Path) -> Option<Source> {
    for dir in [path.to_path_buf(), path.join(cifar::BIN_DIR)] {
        if dir.join("data_batch_1.bin").exists() || dir.join("test_batch.bin").exists() {
            return Some(Source::CifarBinary(dir));
        }
    }
    if folder::has_images(path) {
        return Some(Source::Folder(path.to_path_buf()));
    }
    None
}

/// Loads the splits of whatever dataset `path` holds.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Splits> {
    if !path.exists() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "a folder with the CIFAR-10 binary files or with images".into(),
        });
    }
    match detect(path) {
        Some(Source::CifarBinary(dir)) => cifar_patches(cifar::load_splits(&dir)?, opts),
        Some(Source::Folder(dir)) => folder::load_splits(&dir, opts),
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
        }),
    }
}

/// Loads only the test images of the dataset in `path` (for evaluation: the training images
/// are not read).
pub fn load_test(path: &Path, opts: &LoadOptions) -> Result<ImageSet> {
    if !path.exists() {
        return Err(DataError::Missing {
            path: path.to_path_buf(),
            what: "a folder with the CIFAR-10 binary files or with images".into(),
        });
    }
    match detect(path) {
        Some(Source::CifarBinary(dir)) => {
            let test = cifar::read_batch(&dir.join(cifar::TEST_FILE))?;
            match opts.patch {
                Some(p) => test.patches(p),
                None => Ok(test),
            }
        }
        Some(Source::Folder(dir)) => folder::load_test(&dir, opts),
        None => Err(DataError::Empty {
            path: path.to_path_buf(),
        }),
    }
}

/// The test images of the dataset in `path`, each image at its own size: groups of images of
/// one size, in order (see [`folder::load_test_any_size`]). The CIFAR-10 binary release, or a
/// folder read with `opts.crop` or `opts.patch`, gives one group, as [`load_test`] does.
pub fn load_test_groups(path: &Path, opts: &LoadOptions) -> Result<Vec<ImageSet>> {
    match detect(path) {
        Some(Source::Folder(dir)) if !opts.crop && opts.patch.is_none() && opts.size.is_none() => {
            folder::load_test_any_size(&dir)
        }
        _ => Ok(vec![load_test(path, opts)?]),
    }
}

/// The default data folder: `<cache dir>/denoise/cifar10` (`~/.cache/denoise/cifar10` on Linux).
pub fn default_data_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("denoise")
        .join("cifar10")
}

#[cfg(feature = "candle-datasets")]
/// Converts the splits into candle-datasets' vision dataset (`u8` tensors, NCHW).
pub fn to_candle_dataset(s: &Splits) -> candle_core::Result<candle_datasets::vision::Dataset> {
    use candle_core::{Device, Tensor};
    let t = |set: &ImageSet| -> candle_core::Result<(Tensor, Tensor)> {
        let x = Tensor::from_vec(
            set.pixels.clone(),
            (set.n, set.c, set.h, set.w),
            &Device::Cpu,
        )?;
        let y: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
        Ok((x, Tensor::from_vec(y, set.labels.len(), &Device::Cpu)?))
    };
    let (train_images, train_labels) = t(&s.train)?;
    let (test_images, test_labels) = t(&s.test)?;
    Ok(candle_datasets::vision::Dataset {
        train_images,
        train_labels,
        test_images,
        test_labels,
        labels: s.train.classes.len(),
    })
}
