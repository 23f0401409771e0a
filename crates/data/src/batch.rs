//! Noisy training batches, made on a background thread.
//!
//! Each epoch visits the training images in an order drawn from `(seed, epoch)`; each batch
//! draws its flips, noise levels and noise from `(seed, epoch, batch index)`. So a run resumed
//! at any step sees exactly the batches it would have seen, with no generator state to save.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::Rng;

use crate::crops::CropPool;
use crate::noise::{normal, rng_for, Corruption, DataRng};
use crate::ImageSet;

/// Where the training images of each epoch come from.
#[derive(Debug, Clone)]
pub enum TrainImages {
    /// The same images every epoch (in a new order).
    Fixed(Arc<ImageSet>),
    /// New random crops of whole photos every epoch ([`CropPool::epoch_set`]).
    Crops(Arc<CropPool>),
}

impl TrainImages {
    /// Images per epoch.
    pub fn len(&self) -> usize {
        match self {
            Self::Fixed(set) => set.n,
            Self::Crops(pool) => pool.crops_per_epoch(),
        }
    }

    /// True when an epoch has no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images of `epoch`.
    pub fn epoch(&self, seed: u64, epoch: usize) -> Arc<ImageSet> {
        match self {
            Self::Fixed(set) => set.clone(),
            Self::Crops(pool) => Arc::new(pool.epoch_set(seed, epoch)),
        }
    }
}

impl From<Arc<ImageSet>> for TrainImages {
    fn from(set: Arc<ImageSet>) -> Self {
        Self::Fixed(set)
    }
}

/// How batches are made.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Noise standard deviation range, on the `[0, 1]` scale (`55/255` for the default maximum).
    pub sigma_min: f32,
    /// See `sigma_min`.
    pub sigma_max: f32,
    /// The share of images whose noise level is drawn instead from EDM's log-normal,
    /// `ln(2 sigma) ~ N(p_mean, p_std^2)` (`2 sigma`: the level on the `[-1, 1]` data scale).
    pub lognormal_fraction: f32,
    /// Mean of `ln(2 sigma)` in the log-normal. Default -1.2.
    pub p_mean: f32,
    /// Standard deviation of `ln(2 sigma)` in the log-normal. Default 1.2.
    pub p_std: f32,
    /// Random horizontal flips.
    pub flip: bool,
    /// How the noisy copies are made (Gaussian noise, no compression by default).
    pub corruption: Corruption,
    /// The run's seed: with the epoch and batch index it fixes every random choice.
    pub seed: u64,
}

impl BatchConfig {
    /// One noise level (on the `[0, 1]` scale) drawn from this configuration's distribution.
    pub fn draw_sigma(&self, rng: &mut DataRng) -> f32 {
        if self.lognormal_fraction > 0.0 && rng.random::<f32>() < self.lognormal_fraction {
            (self.p_mean + self.p_std * normal(rng)).exp() / 2.0
        } else {
            self.sigma_min + (self.sigma_max - self.sigma_min) * rng.random::<f32>()
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            sigma_min: 0.0,
            sigma_max: 55.0 / 255.0,
            lognormal_fraction: 0.0,
            p_mean: -1.2,
            p_std: 1.2,
            flip: true,
            corruption: Corruption::default(),
            seed: 0,
        }
    }
}

/// A batch of clean images and their noisy copies, `(n, c, h, w)` in `[0, 1]` (noisy not clipped).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The clean images.
    pub clean: Vec<f32>,
    /// The same images with Gaussian noise of each image's level added.
    pub noisy: Vec<f32>,
    /// The noise level of each image.
    pub sigmas: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// The epoch the batch belongs to.
    pub epoch: usize,
    /// Index of the batch within its epoch.
    pub index: usize,
}

impl Batch {
    /// `(n, c, h, w)`.
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.h, self.w)
    }
}

/// Builds the batch of images `idx` of `set`, its randomness drawn from `rng`.
pub fn make_batch(
    set: &ImageSet,
    idx: &[usize],
    cfg: &BatchConfig,
    flip: bool,
    rng: &mut DataRng,
) -> Batch {
    let (c, h, w) = (set.c, set.h, set.w);
    let len = c * h * w;
    let mut clean = Vec::with_capacity(idx.len() * len);
    let mut noisy = Vec::with_capacity(idx.len() * len);
    let mut sigmas = Vec::with_capacity(idx.len());
    for &i in idx {
        let img = set.image(i);
        let mirror = flip && rng.random::<bool>();
        let sigma = cfg.draw_sigma(rng);
        sigmas.push(sigma);
        let start = clean.len();
        for ch in 0..c {
            for y in 0..h {
                let row = &img[ch * h * w + y * w..ch * h * w + (y + 1) * w];
                clean
                    .extend((0..w).map(|x| row[if mirror { w - 1 - x } else { x }] as f32 / 255.0));
            }
        }
        noisy.extend(cfg.corruption.apply(&clean[start..], (c, h, w), sigma, rng));
    }
    Batch {
        clean,
        noisy,
        sigmas,
        n: idx.len(),
        c,
        h,
        w,
        epoch: 0,
        index: 0,
    }
}

/// The order in which epoch `epoch` visits `n` images.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rng_for(&[seed, 0x5348_5546, epoch as u64]);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Batches per epoch (the last one may be smaller, as PyTorch's DataLoader does by default).
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n.div_ceil(batch_size)
}

/// The fixed validation batches: no flips, noise from `(seed, "val", batch index)`, identical
/// in every epoch and every run with the same seed.
pub fn validation_batches<'a>(
    set: &'a ImageSet,
    cfg: &BatchConfig,
) -> impl Iterator<Item = Batch> + 'a {
    let cfg = cfg.clone();
    (0..steps_per_epoch(set.n, cfg.batch_size)).map(move |b| {
        let idx: Vec<usize> = (b * cfg.batch_size..((b + 1) * cfg.batch_size).min(set.n)).collect();
        let mut rng = rng_for(&[cfg.seed, 0x56414c, b as u64]);
        let mut batch = make_batch(set, &idx, &cfg, false, &mut rng);
        batch.index = b;
        batch
    })
}

/// An endless stream of training batches from a background thread, starting at
/// `(epoch, index)`; two batches are kept ready ahead of the consumer.
pub struct Batcher {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
    /// Batches per epoch (the last one may be smaller).
    pub steps_per_epoch: usize,
}

impl Batcher {
    /// Starts the thread, at batch `index` of `epoch`.
    pub fn start(
        images: impl Into<TrainImages>,
        cfg: BatchConfig,
        epoch: usize,
        index: usize,
    ) -> Self {
        let images = images.into();
        let n = images.len();
        let steps = steps_per_epoch(n, cfg.batch_size);
        let (tx, rx) = sync_channel(2);
        let handle = std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || {
                let (mut epoch, mut index) = (epoch, index);
                loop {
                    let set = images.epoch(cfg.seed, epoch);
                    let order = epoch_order(n, cfg.seed, epoch);
                    while index < steps {
                        let idx =
                            &order[index * cfg.batch_size..((index + 1) * cfg.batch_size).min(n)];
                        let mut rng = rng_for(&[cfg.seed, epoch as u64, index as u64]);
                        let mut b = make_batch(&set, idx, &cfg, cfg.flip, &mut rng);
                        b.epoch = epoch;
                        b.index = index;
                        if tx.send(b).is_err() {
                            return;
                        }
                        index += 1;
                    }
                    epoch += 1;
                    index = 0;
                }
            })
            .expect("spawn batcher thread");
        Self {
            rx,
            handle: Some(handle),
            steps_per_epoch: steps,
        }
    }

    /// The next batch (blocks until it is ready).
    pub fn next_batch(&mut self) -> Batch {
        self.rx.recv().expect("batcher thread ended")
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail; wait for it to stop.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        let pixels: Vec<u8> = (0..n * 3 * 4 * 4).map(|i| (i * 7 % 256) as u8).collect();
        ImageSet {
            pixels,
            labels: vec![0; n],
            n,
            c: 3,
            h: 4,
            w: 4,
            classes: vec!["x".into()],
        }
    }

    #[test]
    fn resumed_batcher_repeats_the_same_batches() {
        let s = Arc::new(set(10));
        let cfg = BatchConfig {
            batch_size: 4,
            seed: 9,
            ..Default::default()
        };
        let mut a = Batcher::start(s.clone(), cfg.clone(), 0, 0);
        let all: Vec<Batch> = (0..7).map(|_| a.next_batch()).collect();
        assert_eq!(a.steps_per_epoch, 3);
        assert_eq!(all[2].n, 2); // the last batch of an epoch is smaller
        let mut b = Batcher::start(s, cfg, 1, 1); // batch 4 of the stream
        let again = b.next_batch();
        assert_eq!((again.epoch, again.index), (1, 1));
        assert_eq!(again.noisy, all[4].noisy);
        assert_eq!(again.clean, all[4].clean);
    }

    #[test]
    fn epochs_visit_every_image_once_in_new_orders() {
        let a = epoch_order(100, 1, 0);
        let b = epoch_order(100, 1, 1);
        assert_ne!(a, b);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn noise_levels_stay_in_range_and_flips_mirror() {
        let s = set(64);
        let cfg = BatchConfig {
            batch_size: 64,
            sigma_min: 0.1,
            sigma_max: 0.2,
            ..Default::default()
        };
        let mut rng = rng_for(&[1]);
        let b = make_batch(&s, &(0..64).collect::<Vec<_>>(), &cfg, true, &mut rng);
        assert!(b.sigmas.iter().all(|&x| (0.1..=0.2).contains(&x)));
        let mut flipped = 0;
        for i in 0..64 {
            let img = s.image(i);
            let row0: Vec<f32> = (0..4).map(|x| img[x] as f32 / 255.0).collect();
            let got = &b.clean[i * 48..i * 48 + 4];
            if got != row0.as_slice() {
                let rev: Vec<f32> = row0.iter().rev().copied().collect();
                assert_eq!(got, rev.as_slice());
                flipped += 1;
            }
        }
        assert!(flipped > 10 && flipped < 54, "{flipped} of 64 flipped");
    }
}
