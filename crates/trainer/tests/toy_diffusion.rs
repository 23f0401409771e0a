//! End to end on a toy dataset: a small cond-unet trained briefly on four fixed 8x8 patterns
//! must, through the Heun sampler, turn pure noise into images that are each close to one of
//! the patterns (and not all the same one).

use candle_core::Device;
use denoise_data::{ImageSet, Splits};
use denoise_model::sampler::{sample, to_pixels, ModelDenoiser, SamplerConfig};
use denoise_model::Model;
use denoise_trainer::{train, TrainConfig, TrainOptions};

/// Four 8x8 RGB patterns: stripes, a checkerboard, a bright square, a colour gradient.
fn pattern(k: usize, c: usize, y: usize, x: usize) -> u8 {
    let v = match k {
        0 => (y / 2).is_multiple_of(2),
        1 => (x / 2 + y / 2).is_multiple_of(2),
        2 => (2..6).contains(&x) && (2..6).contains(&y),
        _ => return (x * 30 + c * 40) as u8,
    };
    if v {
        220
    } else {
        30
    }
}

fn patterns() -> Vec<Vec<f32>> {
    (0..4)
        .map(|k| {
            let mut v = Vec::new();
            for c in 0..3 {
                for y in 0..8 {
                    for x in 0..8 {
                        v.push(pattern(k, c, y, x) as f32 / 255.0);
                    }
                }
            }
            v
        })
        .collect()
}

fn set(copies: usize) -> ImageSet {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..copies {
        for k in 0..4 {
            for c in 0..3 {
                for y in 0..8 {
                    for x in 0..8 {
                        pixels.push(pattern(k, c, y, x));
                    }
                }
            }
            labels.push(k as u16);
        }
    }
    ImageSet {
        pixels,
        labels,
        n: 4 * copies,
        c: 3,
        h: 8,
        w: 8,
        classes: (0..4).map(|k| format!("p{k}")).collect(),
    }
}

#[test]
fn samples_land_on_the_training_patterns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Splits {
        train: set(32),
        val: set(2),
        test: set(1),
        description: "four 8x8 patterns".into(),
        train_crops: None,
    };
    let config = TrainConfig {
        arch: "cond-unet".into(),
        width: Some(16),
        mults: Some(vec![1, 2]),
        dropout: Some(0.0),
        batch: 32,
        lr: 2e-3,
        weight_decay: 0.0,
        epochs: 1000,
        patience: 0,
        flip: false,
        max_steps: Some(400),
        ema_halflife: Some(2000.0),
        log_every: 100,
        ..Default::default()
    };
    let s = train(
        &config,
        &data,
        tmp.path(),
        &Device::Cpu,
        &TrainOptions::default(),
    )
    .unwrap();
    assert_eq!(s.state.global_step, 400);
    let model = Model::load(&tmp.path().join("last.safetensors"), &Device::Cpu).unwrap();

    let x = sample(
        &ModelDenoiser::new(&model),
        &[16, 3, 8, 8],
        &SamplerConfig::default(),
        5,
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    let x = to_pixels(&x).unwrap();
    let pats = patterns();
    let mut hit = [0usize; 4];
    let mut dists = Vec::new();
    for i in 0..16 {
        let img = x
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (best, d) = pats
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let mse = img.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / 192.0;
                (k, mse.sqrt())
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        hit[best] += 1;
        dists.push(d);
    }
    eprintln!("RMS distance to the nearest pattern: {dists:?}; patterns hit: {hit:?}");
    // The patterns are 0.48 to 0.53 apart (RMS); a sample within 0.15 is that pattern (the
    // average of two patterns is 0.24 or more from every pattern).
    let near = dists.iter().filter(|&&d| d < 0.15).count();
    assert!(
        near >= 14,
        "only {near} of 16 samples near a pattern: {dists:?}"
    );
    assert!(
        hit.iter().filter(|&&h| h > 0).count() >= 2,
        "all samples are one pattern: {hit:?}"
    );
}
