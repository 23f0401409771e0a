//! Folders of images (PNG, JPEG, TIFF, WebP, BMP): `train/` and `test/` with class folders inside (as the JPEG copy
//! of CIFAR-10 is laid out), class folders alone, or a flat folder of images.
//!
//! Files are taken in sorted file-name order, classes in sorted folder-name order. The
//! validation set is a `val/` folder beside `train/` where there is one, else the last 10 % of
//! each class of the training images.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::crops::{CropPool, Photo};
use crate::{grid_patches, io_err, DataError, ImageSet, LoadOptions, Result, Splits};

/// The file name extensions of the image formats read (the `image` crate's features).
pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp"];

/// Whether a path names an image file of a format read (by its extension, in any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// How deep image folders are searched. Deeper folders, and folders reached again through a
/// link (a loop), are not entered: without the bounds a link to a parent folder would recurse
/// until the stack overflows.
pub const MAX_DEPTH: usize = 32;

/// The folders entered so far (canonical paths), to enter each once.
type Seen = std::collections::HashSet<PathBuf>;

/// Whether `dir` is new to `seen` (and now in it) and no deeper than [`MAX_DEPTH`].
fn enter(dir: &Path, depth: usize, seen: &mut Seen) -> bool {
    if depth > MAX_DEPTH {
        tracing::warn!(
            "{}: more than {MAX_DEPTH} folders deep, not searched for images",
            dir.display()
        );
        return false;
    }
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    seen.insert(real)
}

/// True when `dir` holds at least one image file, at any depth.
pub fn has_images(dir: &Path) -> bool {
    has_images_in(dir, 0, &mut Seen::new())
}

fn has_images_in(dir: &Path, depth: usize, seen: &mut Seen) -> bool {
    if !enter(dir, depth, seen) {
        return false;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_images_in(&p, depth + 1, seen)
        } else {
            is_image(&p)
        }
    })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// All image files under `dir`, recursively (each folder once, at most [`MAX_DEPTH`] deep),
/// sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    list_images_in(dir, 0, &mut Seen::new(), &mut out)?;
    Ok(out)
}

fn list_images_in(dir: &Path, depth: usize, seen: &mut Seen, out: &mut Vec<PathBuf>) -> Result<()> {
    if !enter(dir, depth, seen) {
        return Ok(());
    }
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            list_images_in(&p, depth + 1, seen, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// `(class name, files)` for a folder: one class per subfolder, or one class for a flat folder.
fn classes(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let entries = sorted_entries(dir)?;
    let mut out = Vec::new();
    let flat: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .cloned()
        .collect();
    if !flat.is_empty() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, flat));
    }
    for p in entries.iter().filter(|p| p.is_dir()) {
        let files = list_images(p)?;
        if !files.is_empty() {
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), files));
        }
    }
    Ok(out)
}

/// Decodes an image file to RGB bytes in CHW order, checking (or center-cropping to) a size.
pub fn read_rgb(
    path: &Path,
    size: Option<(usize, usize)>,
    crop: bool,
) -> Result<(Vec<u8>, usize, usize)> {
    let img = image::open(path).map_err(|e| DataError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if let Some((want_h, want_w)) = size {
        if (h, w) != (want_h, want_w) {
            if crop && h >= want_h && w >= want_w {
                let (x0, y0) = ((w - want_w) / 2, (h - want_h) / 2);
                rgb = image::imageops::crop_imm(
                    &rgb,
                    x0 as u32,
                    y0 as u32,
                    want_w as u32,
                    want_h as u32,
                )
                .to_image();
            } else {
                return Err(DataError::WrongImageSize {
                    path: path.to_path_buf(),
                    found_w: w as u32,
                    found_h: h as u32,
                    want_w: want_w as u32,
                    want_h: want_h as u32,
                });
            }
        }
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut chw = vec![0u8; 3 * h * w];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = p.0[c];
        }
    }
    Ok((chw, h, w))
}

/// Decodes `files` on all cores. `decode` turns one file into what it holds (a photo, or the
/// bytes of its images) and the number of images in it; the results come in file order, with
/// each file's label repeated once per image.
fn read_parallel<T: Send>(
    files: &[(PathBuf, u16)],
    decode: impl Fn(&Path) -> Result<(T, usize)> + Sync,
) -> Result<(Vec<T>, Vec<u16>)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = files.len().div_ceil(threads).max(1);
    let decode = &decode;
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|files| {
                s.spawn(move || -> Result<(Vec<T>, Vec<u16>)> {
                    let (mut items, mut labels) = (Vec::new(), Vec::new());
                    for (path, label) in files {
                        let (item, images) = decode(path)?;
                        items.push(item);
                        labels.extend(std::iter::repeat_n(*label, images));
                    }
                    Ok((items, labels))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("image reader thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let (mut items, mut labels) = (Vec::new(), Vec::new());
    for (it, l) in parts {
        items.extend(it);
        labels.extend(l);
    }
    Ok((items, labels))
}

/// Reads `files` (with their labels) into an image set, on all cores.
pub fn read_set(
    files: &[(PathBuf, u16)],
    size: (usize, usize),
    crop: bool,
    classes: Vec<String>,
) -> Result<ImageSet> {
    let (pixels, labels) =
        read_parallel(files, |path| Ok((read_rgb(path, Some(size), crop)?.0, 1)))?;
    Ok(ImageSet {
        n: labels.len(),
        pixels: pixels.concat(),
        labels,
        c: 3,
        h: size.0,
        w: size.1,
        classes,
    })
}

/// An image of any size of at least `p x p`, as [`read_rgb`] reads it.
fn read_at_least(path: &Path, p: usize) -> Result<(Vec<u8>, usize, usize)> {
    let (img, h, w) = read_rgb(path, None, false)?;
    if h < p || w < p {
        return Err(DataError::SmallerThanPatch {
            path: path.to_path_buf(),
            found_w: w as u32,
            found_h: h as u32,
            patch: p,
        });
    }
    Ok((img, h, w))
}

/// Reads `files` (with their labels), each cut into `p x p` patches ([`grid_patches`]), on
/// all cores. The images may have any sizes of at least `p x p`.
pub fn read_patches(files: &[(PathBuf, u16)], p: usize, classes: Vec<String>) -> Result<ImageSet> {
    if p == 0 {
        return Err(DataError::Invalid(
            "patch size 0: expected at least 1".into(),
        ));
    }
    let (pixels, labels) = read_parallel(files, |path| {
        let (img, h, w) = read_at_least(path, p)?;
        Ok((grid_patches(&img, (3, h, w), p), (h / p) * (w / p)))
    })?;
    Ok(ImageSet {
        n: labels.len(),
        pixels: pixels.concat(),
        labels,
        c: 3,
        h: p,
        w: p,
        classes,
    })
}

/// Reads `files` as [`LoadOptions`] asks: whole images of one size, or patches.
fn read_as(
    files: &[(PathBuf, u16)],
    size: (usize, usize),
    opts: &LoadOptions,
    classes: Vec<String>,
) -> Result<ImageSet> {
    match opts.patch {
        Some(p) => read_patches(files, p, classes),
        None => read_set(files, size, opts.crop, classes),
    }
}

fn labeled(classes: &[(String, Vec<PathBuf>)]) -> Vec<(PathBuf, u16)> {
    classes
        .iter()
        .enumerate()
        .flat_map(|(i, (_, files))| files.iter().map(move |f| (f.clone(), i as u16)))
        .collect()
}

/// The folders of a dataset's splits.
struct SplitDirs {
    train: PathBuf,
    /// A `val/` folder beside `train/`; without one the validation images are cut from `train`.
    val: Option<PathBuf>,
    /// The test images: the same folder as `train` when there is no `test/` subfolder.
    test: PathBuf,
}

fn split_dirs(dir: &Path) -> SplitDirs {
    let (train, test) = if dir.join("train").is_dir() && dir.join("test").is_dir() {
        (dir.join("train"), dir.join("test"))
    } else if dir.join("train").is_dir() {
        (dir.join("train"), dir.join("train"))
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    let val = (train != dir && dir.join("val").is_dir()).then(|| dir.join("val"));
    SplitDirs { train, val, test }
}

/// Reads whole photos of any size of at least `p x p` into a [`CropPool`], on all cores.
fn read_pool(files: &[(PathBuf, u16)], p: usize, classes: Vec<String>) -> Result<CropPool> {
    let (photos, labels) = read_parallel(files, |path| {
        let (pixels, h, w) = read_at_least(path, p)?;
        Ok((Photo { pixels, h, w }, 1))
    })?;
    CropPool::new(photos, labels, classes, 3, p)
}

/// The image size `(h, w)`: the one asked for; with `crop`, the smallest height and width
/// among `files` (read from their headers), rounded down to multiples of `opts.multiple`; else
/// that of the first file.
fn size_of<'a>(
    opts: &LoadOptions,
    mut files: impl Iterator<Item = &'a PathBuf>,
    dir: &Path,
) -> Result<(usize, usize)> {
    if let Some(s) = opts.size {
        return Ok(s);
    }
    let dims = |path: &PathBuf| {
        image::image_dimensions(path)
            .map(|(w, h)| (h as usize, w as usize))
            .map_err(|e| DataError::Image {
                path: path.clone(),
                reason: e.to_string(),
            })
    };
    let first = files.next().ok_or_else(|| DataError::Empty {
        path: dir.to_path_buf(),
    })?;
    let mut size = dims(first)?;
    if opts.crop {
        for f in files {
            let (h, w) = dims(f)?;
            size = (size.0.min(h), size.1.min(w));
        }
        let m = opts.multiple.max(1);
        if size.0 >= m && size.1 >= m {
            size = (size.0 / m * m, size.1 / m * m);
        }
    }
    Ok(size)
}

/// Loads only the test images of a folder (what [`load_splits`] would give as `test`).
pub fn load_test(dir: &Path, opts: &LoadOptions) -> Result<ImageSet> {
    let test_dir = split_dirs(dir).test;
    let test_classes = classes(&test_dir)?;
    let size = size_of(opts, test_classes.iter().flat_map(|c| &c.1), &test_dir)?;
    let names = test_classes.iter().map(|c| c.0.clone()).collect();
    read_as(&labeled(&test_classes), size, opts, names)
}

/// Loads the test images of a folder each at its own size: one [`ImageSet`] for every run of
/// consecutive images (in file order) that share a size. For photos of many sizes, evaluated
/// whole.
pub fn load_test_any_size(dir: &Path) -> Result<Vec<ImageSet>> {
    let test_dir = split_dirs(dir).test;
    let test_classes = classes(&test_dir)?;
    let names: Vec<String> = test_classes.iter().map(|c| c.0.clone()).collect();
    let (images, labels) = read_parallel(&labeled(&test_classes), |path| {
        Ok((read_rgb(path, None, false)?, 1))
    })?;
    let mut groups: Vec<ImageSet> = Vec::new();
    for ((pixels, h, w), label) in images.into_iter().zip(labels) {
        match groups.last_mut() {
            Some(g) if (g.h, g.w) == (h, w) => {
                g.pixels.extend_from_slice(&pixels);
                g.labels.push(label);
                g.n += 1;
            }
            _ => groups.push(ImageSet {
                pixels,
                labels: vec![label],
                n: 1,
                c: 3,
                h,
                w,
                classes: names.clone(),
            }),
        }
    }
    if groups.is_empty() {
        return Err(DataError::Empty { path: test_dir });
    }
    Ok(groups)
}

/// Loads an image folder. With `train/` and `test/` subfolders those are the splits (and
/// `val/`, where there is one, the validation images); otherwise the whole folder is both the
/// pool for training and the test set.
pub fn load_splits(dir: &Path, opts: &LoadOptions) -> Result<Splits> {
    let dirs = split_dirs(dir);
    let (train_dir, test_dir) = (&dirs.train, &dirs.test);
    let train_classes = classes(train_dir)?;
    let test_classes = if test_dir == train_dir {
        Vec::new()
    } else {
        classes(test_dir)?
    };
    let val_classes = match &dirs.val {
        Some(v) => classes(v)?,
        None => Vec::new(),
    };
    let size = size_of(
        opts,
        train_classes
            .iter()
            .chain(&test_classes)
            .chain(&val_classes)
            .flat_map(|c| &c.1),
        train_dir,
    )?;
    let names: Vec<String> = train_classes.iter().map(|c| c.0.clone()).collect();
    let mut train_files = Vec::new();
    let mut val_files = Vec::new();
    if dirs.val.is_some() {
        train_files = labeled(&train_classes);
        // Validation labels follow the training class names where they match.
        for (name, files) in &val_classes {
            let label = names.iter().position(|n| n == name).unwrap_or(0) as u16;
            val_files.extend(files.iter().map(|f| (f.clone(), label)));
        }
    } else {
        // Last 10 % of each class (at least one image when a class has two or more).
        for (i, (_, files)) in train_classes.iter().enumerate() {
            let n_val = if files.len() >= 2 {
                (files.len() / 10).max(1)
            } else {
                0
            };
            let split = files.len() - n_val;
            train_files.extend(files[..split].iter().map(|f| (f.clone(), i as u16)));
            val_files.extend(files[split..].iter().map(|f| (f.clone(), i as u16)));
        }
    }
    // With random crops the photos are read once, whole, and their grid cut from memory.
    let (train, train_crops) = match opts.patch {
        Some(p) if opts.random_crops => {
            let pool = read_pool(&train_files, p, names.clone())?;
            (pool.grid_set(), Some(Arc::new(pool)))
        }
        _ => (read_as(&train_files, size, opts, names.clone())?, None),
    };
    let val = read_as(&val_files, size, opts, names.clone())?;
    let test = if test_dir == train_dir {
        read_as(&labeled(&train_classes), size, opts, names)?
    } else {
        // Test labels follow the training class names where they match.
        let tnames: Vec<String> = test_classes.iter().map(|c| c.0.clone()).collect();
        read_as(&labeled(&test_classes), size, opts, tnames)?
    };
    Ok(Splits {
        description: format!(
            "image folder {}: {} train{}, {} validation, {} test {} of {}x{} in {} classes",
            dir.display(),
            train.n,
            if train_crops.is_some() {
                " (random crops, new each epoch)"
            } else {
                ""
            },
            val.n,
            test.n,
            match opts.patch {
                Some(_) => format!(
                    "patches (from {} + {} images)",
                    train_files.len(),
                    val_files.len()
                ),
                None => "images".into(),
            },
            train.w,
            train.h,
            train.classes.len()
        ),
        train,
        val,
        test,
        train_crops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link back to a parent folder (a loop) and a tree deeper than [`MAX_DEPTH`]: each folder
    /// is searched once, the deep end is left out, and nothing recurses without end.
    #[cfg(unix)]
    #[test]
    fn link_loops_and_deep_trees_are_searched_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("a")).unwrap();
        image::RgbImage::new(8, 8)
            .save(root.join("a/x.png"))
            .unwrap();
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
        let found = list_images(&root).unwrap();
        assert_eq!(found, vec![root.join("a/x.png")]);
        assert!(has_images(&root));
        let mut deep = dir.path().join("deep");
        for _ in 0..MAX_DEPTH + 3 {
            deep = deep.join("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        image::RgbImage::new(8, 8).save(deep.join("y.png")).unwrap();
        assert!(list_images(&dir.path().join("deep")).unwrap().is_empty());
        assert!(!has_images(&dir.path().join("deep")));
    }
}
