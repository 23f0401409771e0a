//! Seeded noise: Gaussian, or signal-dependent Poisson-Gaussian, optionally followed by JPEG
//! compression ([`Corruption`]).

use rand::{Rng, SeedableRng};

/// The generator behind every random choice of the data pipeline.
pub type DataRng = rand_chacha::ChaCha8Rng;

/// Mixes numbers into one seed (splitmix64 steps), so that each (seed, epoch, batch) has its
/// own independent stream and any batch can be rebuilt on its own after a resume.
pub fn mix(parts: &[u64]) -> u64 {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        z ^= p;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// A generator seeded from several numbers (see [`mix`]).
pub fn rng_for(parts: &[u64]) -> DataRng {
    DataRng::seed_from_u64(mix(parts))
}

/// A standard normal sample (Box-Muller).
pub fn normal(rng: &mut DataRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// `clean + sigma * N(0, 1)`, not clipped (as the evaluation protocol asks).
pub fn add_gaussian(clean: &[f32], sigma: f32, rng: &mut DataRng) -> Vec<f32> {
    clean.iter().map(|&v| v + sigma * normal(rng)).collect()
}

/// The kind of noise added to clean images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseKind {
    /// The same standard deviation `sigma` at every pixel.
    #[default]
    Gaussian,
    /// Signal-dependent noise, as a camera's after demosaicing is roughly: at a pixel of value
    /// `x` in `[0, 1]` the variance is `sigma^2 ((1 - r) + 2 r x)`, shot noise (Poisson,
    /// growing with the signal) for the share `r` and read noise (Gaussian) for the rest, so
    /// that `sigma` is the level at mid grey whatever `r`; `r` is drawn uniformly from `[0, 1]`
    /// for each image.
    PoissonGaussian,
}

impl NoiseKind {
    /// The kind a name (`gaussian`, `poisson-gaussian`) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gaussian" => Some(Self::Gaussian),
            "poisson-gaussian" => Some(Self::PoissonGaussian),
            _ => None,
        }
    }

    /// The kind's name, as [`NoiseKind::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gaussian => "gaussian",
            Self::PoissonGaussian => "poisson-gaussian",
        }
    }
}

/// How a clean image becomes a noisy one: noise of a [`NoiseKind`], then, when `jpeg` is set,
/// clipping to 8 bits and JPEG compression at a quality drawn uniformly from the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Corruption {
    /// The noise.
    pub kind: NoiseKind,
    /// Lowest and highest JPEG quality (1-100), inclusive; none: no compression.
    pub jpeg: Option<(u8, u8)>,
}

impl Corruption {
    /// Checks the JPEG range.
    pub fn check(&self) -> std::result::Result<(), String> {
        match self.jpeg {
            Some((lo, hi)) if lo == 0 || hi > 100 || lo > hi => Err(format!(
                "JPEG quality range {lo},{hi}: expected LOW,HIGH with 1 <= LOW <= HIGH <= 100"
            )),
            _ => Ok(()),
        }
    }

    /// `clean` (`c` planes of `h x w`, values in `[0, 1]`) with noise of level `sigma` (`[0,
    /// 1]` scale) added; not clipped unless JPEG compression follows, which clips to 8 bits
    /// first. Every random choice comes from `rng`.
    pub fn apply(
        &self,
        clean: &[f32],
        (c, h, w): (usize, usize, usize),
        sigma: f32,
        rng: &mut DataRng,
    ) -> Vec<f32> {
        let mut noisy = match self.kind {
            NoiseKind::Gaussian => add_gaussian(clean, sigma, rng),
            NoiseKind::PoissonGaussian => {
                let r: f32 = rng.random();
                clean
                    .iter()
                    .map(|&v| {
                        let var = (1.0 - r) + 2.0 * r * v.clamp(0.0, 1.0);
                        v + sigma * var.sqrt() * normal(rng)
                    })
                    .collect()
            }
        };
        if let Some((lo, hi)) = self.jpeg {
            let q = rng.random_range(lo..=hi);
            noisy = jpeg_round_trip(&noisy, (c, h, w), q);
        }
        noisy
    }
}

/// `img` (CHW, `c` 1 or 3) clipped and rounded to 8 bits, compressed as a JPEG of quality `q`
/// and decoded again.
pub fn jpeg_round_trip(img: &[f32], (c, h, w): (usize, usize, usize), q: u8) -> Vec<f32> {
    use image::ImageEncoder;
    let plane = h * w;
    let mut interleaved = vec![0u8; c * plane];
    for ch in 0..c {
        for p in 0..plane {
            interleaved[p * c + ch] = (img[ch * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, q.clamp(1, 100))
        .write_image(&interleaved, w as u32, h as u32, color)
        .expect("encoding an in-memory image as JPEG does not fail");
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .expect("a JPEG this function encoded decodes");
    let raw = if c == 1 {
        decoded.to_luma8().into_raw()
    } else {
        decoded.to_rgb8().into_raw()
    };
    let mut out = vec![0f32; c * plane];
    for ch in 0..c {
        for p in 0..plane {
            out[ch * plane + p] = raw[p * c + ch] as f32 / 255.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = rng_for(&[1, 2]);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| normal(&mut rng) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn streams_differ_and_repeat() {
        assert_ne!(mix(&[0, 1]), mix(&[1, 0]));
        assert_eq!(mix(&[3, 4]), mix(&[3, 4]));
    }

    fn variance(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn poisson_gaussian_noise_grows_with_the_signal_and_is_sigma_at_mid_grey() {
        let sigma = 0.1;
        let pg = Corruption {
            kind: NoiseKind::PoissonGaussian,
            jpeg: None,
        };
        let n = 50_000;
        let (mut dark, mut bright, mut grey) = (0.0, 0.0, 0.0);
        for k in 0..20 {
            let mut rng = rng_for(&[k]);
            let d = vec![0.0; n];
            let b = vec![1.0; n];
            let g = vec![0.5; n];
            // One image holds all three levels, so that they share its shot-noise share.
            let img: Vec<f32> = [d.clone(), b.clone(), g.clone()].concat();
            let out = pg.apply(&img, (3, 1, n), sigma, &mut rng);
            dark += variance(&out[..n], &d);
            bright += variance(&out[n..2 * n], &b);
            grey += variance(&out[2 * n..], &g);
        }
        let s2 = (sigma as f64).powi(2) * 20.0;
        // Over shares r uniform in [0, 1]: E(1 - r) = 1/2 at 0, E(1 + r) = 3/2 at 1, 1 at 1/2.
        assert!((dark / s2 - 0.5).abs() < 0.15, "{}", dark / s2);
        assert!((bright / s2 - 1.5).abs() < 0.15, "{}", bright / s2);
        assert!((grey / s2 - 1.0).abs() < 0.02, "{}", grey / s2);
    }

    #[test]
    fn jpeg_compression_follows_the_noise_and_costs_more_at_low_quality() {
        let (h, w) = (32, 48);
        let clean: Vec<f32> = (0..3 * h * w)
            .map(|i| ((i % w) as f32 / w as f32 + (i / (h * w)) as f32 * 0.2).min(1.0))
            .collect();
        let err = |q| {
            let cor = Corruption {
                kind: NoiseKind::Gaussian,
                jpeg: Some((q, q)),
            };
            let out = cor.apply(&clean, (3, h, w), 0.0, &mut rng_for(&[1]));
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            variance(&out, &clean)
        };
        let (low, high) = (err(10), err(95));
        assert!(high > 0.0 && high < 1e-4, "{high}");
        assert!(low > 4.0 * high, "quality 10: {low}, quality 95: {high}");
        let gray = vec![0.5f32; h * w];
        let out = jpeg_round_trip(&gray, (1, h, w), 50);
        assert!(out.iter().all(|&v| (v - 0.5).abs() < 0.01));
        assert!(Corruption {
            jpeg: Some((0, 5)),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(Corruption {
            jpeg: Some((60, 40)),
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(Corruption {
            jpeg: Some((30, 90)),
            ..Default::default()
        }
        .check()
        .is_ok());
    }
}
