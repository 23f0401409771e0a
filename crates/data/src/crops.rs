//! Random square crops of photos of any size, drawn anew every epoch, each turned by one of the
//! eight flips and rotations of the square.
//!
//! A [`CropPool`] keeps whole photos; [`CropPool::epoch_set`] cuts from each photo as many
//! crops as a grid would ([`crate::grid_patches`]: `(h / p) * (w / p)`), at positions and in
//! orientations drawn from `(seed, epoch, photo)`. So every epoch sees new crops, an epoch has a
//! fixed number of them, and a resumed run rebuilds exactly the epoch it stopped in.

use rand::Rng;

use crate::noise::rng_for;
use crate::{DataError, ImageSet, Result};

/// One photo: `c x h x w` bytes, CHW.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The bytes, CHW.
    pub pixels: Vec<u8>,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// Whole photos from which every epoch cuts new `patch x patch` crops.
#[derive(Debug, Clone)]
pub struct CropPool {
    /// The photos.
    pub photos: Vec<Photo>,
    /// The class of each photo (empty when unlabeled).
    pub labels: Vec<u16>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Channels of every photo.
    pub c: usize,
    /// The side of the crops.
    pub patch: usize,
}

/// Salt of the crop generators' seeds, so that they never meet the batches' streams.
const CROP_STREAM: u64 = 0x4352_4f50;

impl CropPool {
    /// A pool of `photos` with `c` channels each, cut into `patch x patch` crops; every photo
    /// must be at least that large.
    pub fn new(
        photos: Vec<Photo>,
        labels: Vec<u16>,
        classes: Vec<String>,
        c: usize,
        patch: usize,
    ) -> Result<Self> {
        if patch == 0 {
            return Err(DataError::Invalid(
                "patch size 0: expected at least 1".into(),
            ));
        }
        if let Some((i, p)) = photos
            .iter()
            .enumerate()
            .find(|(_, p)| p.h < patch || p.w < patch || p.pixels.len() != c * p.h * p.w)
        {
            return Err(DataError::Invalid(format!(
                "photo {i} is {}x{} ({} bytes): expected at least {patch}x{patch} with {c} \
                 channels",
                p.w,
                p.h,
                p.pixels.len()
            )));
        }
        Ok(Self {
            photos,
            labels,
            classes,
            c,
            patch,
        })
    }

    /// Crops per epoch: as many as a grid of the photos would give.
    pub fn crops_per_epoch(&self) -> usize {
        self.photos
            .iter()
            .map(|p| (p.h / self.patch) * (p.w / self.patch))
            .sum()
    }

    /// The patches of a fixed grid over every photo ([`crate::grid_patches`]), in photo order:
    /// what a read of the same files with `--patch` and no random crops gives.
    pub fn grid_set(&self) -> ImageSet {
        let (c, p) = (self.c, self.patch);
        let mut pixels = Vec::with_capacity(self.crops_per_epoch() * c * p * p);
        let mut labels = Vec::new();
        for (i, photo) in self.photos.iter().enumerate() {
            pixels.extend(crate::grid_patches(&photo.pixels, (c, photo.h, photo.w), p));
            if !self.labels.is_empty() {
                let count = (photo.h / p) * (photo.w / p);
                labels.extend(std::iter::repeat_n(self.labels[i], count));
            }
        }
        ImageSet {
            pixels,
            labels,
            n: self.crops_per_epoch(),
            c,
            h: p,
            w: p,
            classes: self.classes.clone(),
        }
    }

    /// The crops of `epoch`: from each photo in turn its share of crops, each at a position
    /// and in an orientation (one of the eight of [`dihedral`]) drawn from
    /// `(seed, epoch, photo)`. The same arguments give the same set.
    pub fn epoch_set(&self, seed: u64, epoch: usize) -> ImageSet {
        let (c, p) = (self.c, self.patch);
        let n = self.crops_per_epoch();
        let mut pixels = Vec::with_capacity(n * c * p * p);
        let mut labels = Vec::with_capacity(if self.labels.is_empty() { 0 } else { n });
        let mut crop = vec![0u8; c * p * p];
        for (i, photo) in self.photos.iter().enumerate() {
            let mut rng = rng_for(&[seed, CROP_STREAM, epoch as u64, i as u64]);
            let count = (photo.h / p) * (photo.w / p);
            for _ in 0..count {
                let y0 = rng.random_range(0..=photo.h - p);
                let x0 = rng.random_range(0..=photo.w - p);
                let turn = rng.random_range(0..8u8);
                for ch in 0..c {
                    for y in 0..p {
                        let src = ch * photo.h * photo.w + (y0 + y) * photo.w + x0;
                        crop[(ch * p + y) * p..(ch * p + y + 1) * p]
                            .copy_from_slice(&photo.pixels[src..src + p]);
                    }
                }
                dihedral(&crop, c, p, turn, &mut pixels);
                if !self.labels.is_empty() {
                    labels.push(self.labels[i]);
                }
            }
        }
        ImageSet {
            pixels,
            labels,
            n,
            c,
            h: p,
            w: p,
            classes: self.classes.clone(),
        }
    }
}

/// Appends to `out` the square CHW image `src` (`c` channels of `p x p`) turned by one of the
/// eight symmetries of the square: bit 2 of `turn` transposes, bit 1 flips vertically, bit 0
/// flips horizontally (0: unchanged; 6: a quarter turn clockwise).
pub fn dihedral(src: &[u8], c: usize, p: usize, turn: u8, out: &mut Vec<u8>) {
    for ch in 0..c {
        let plane = &src[ch * p * p..(ch + 1) * p * p];
        for y in 0..p {
            for x in 0..p {
                let (a, b) = if turn & 4 != 0 { (x, y) } else { (y, x) };
                let sy = if turn & 2 != 0 { p - 1 - a } else { a };
                let sx = if turn & 1 != 0 { p - 1 - b } else { b };
                out.push(plane[sy * p + sx]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(patch: usize) -> CropPool {
        let photos = [(5, 9), (12, 7)]
            .iter()
            .enumerate()
            .map(|(k, &(h, w))| Photo {
                pixels: (0..3 * h * w)
                    .map(|i| ((i * 31 + k * 7) % 251) as u8)
                    .collect(),
                h,
                w,
            })
            .collect();
        CropPool::new(photos, vec![0, 1], vec!["a".into(), "b".into()], 3, patch).unwrap()
    }

    #[test]
    fn the_eight_turns_are_distinct_and_keep_the_pixels() {
        let src: Vec<u8> = (0..2 * 9).map(|i| i as u8).collect(); // 2 channels of 3x3
        let mut seen = Vec::new();
        for t in 0..8 {
            let mut out = Vec::new();
            dihedral(&src, 2, 3, t, &mut out);
            let mut a = out[..9].to_vec();
            a.sort();
            assert_eq!(
                a,
                (0..9).collect::<Vec<u8>>(),
                "turn {t} is not a permutation"
            );
            assert_eq!(out[4], 4, "the centre stays");
            assert!(!seen.contains(&out), "turn {t} repeats another");
            seen.push(out);
        }
        // A quarter turn clockwise: the first row becomes the last column.
        let mut q = Vec::new();
        dihedral(&src, 2, 3, 6, &mut q);
        assert_eq!(&q[..9], &[6, 3, 0, 7, 4, 1, 8, 5, 2]);
    }

    #[test]
    fn epochs_cut_new_crops_and_repeat_per_seed() {
        let p = pool(3);
        assert_eq!(p.crops_per_epoch(), 3 + 8);
        let a = p.epoch_set(1, 0);
        assert_eq!((a.n, a.c, a.h, a.w), (11, 3, 3, 3));
        assert_eq!(a.labels, [vec![0; 3], vec![1; 8]].concat());
        assert_eq!(a.pixels, p.epoch_set(1, 0).pixels);
        assert_ne!(a.pixels, p.epoch_set(1, 1).pixels);
        assert_ne!(a.pixels, p.epoch_set(2, 0).pixels);
        // Every crop is some turn of a window of its photo.
        for k in 0..a.n {
            let photo = &p.photos[a.labels[k] as usize];
            let crop = a.image(k);
            let found = (0..=photo.h - 3).any(|y0| {
                (0..=photo.w - 3).any(|x0| {
                    let mut win = Vec::new();
                    for ch in 0..3 {
                        for y in 0..3 {
                            let s = ch * photo.h * photo.w + (y0 + y) * photo.w + x0;
                            win.extend_from_slice(&photo.pixels[s..s + 3]);
                        }
                    }
                    (0..8).any(|t| {
                        let mut out = Vec::new();
                        dihedral(&win, 3, 3, t, &mut out);
                        out == crop
                    })
                })
            });
            assert!(found, "crop {k} is no window of its photo");
        }
    }

    #[test]
    fn the_grid_set_is_each_photos_grid_in_turn() {
        let p = pool(3);
        let g = p.grid_set();
        assert_eq!((g.n, g.h, g.w), (11, 3, 3));
        assert_eq!(g.labels, [vec![0; 3], vec![1; 8]].concat());
        let want: Vec<u8> = p
            .photos
            .iter()
            .flat_map(|ph| crate::grid_patches(&ph.pixels, (3, ph.h, ph.w), 3))
            .collect();
        assert_eq!(g.pixels, want);
    }

    #[test]
    fn photos_smaller_than_the_patch_are_refused() {
        let small = Photo {
            pixels: vec![0; 3 * 4 * 4],
            h: 4,
            w: 4,
        };
        let e = CropPool::new(vec![small], vec![], vec![], 3, 5).unwrap_err();
        assert!(e.to_string().contains("at least 5x5"), "{e}");
    }
}
