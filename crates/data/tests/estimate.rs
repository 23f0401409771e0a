//! The noise-level estimator on formula-defined images with synthetic Gaussian noise of
//! sigma 5 to 50 (0..255 units): within 15 %.

use denoise_data::estimate::{
    estimate_luma_sigma, estimate_sigma, estimate_sigma_from, estimate_sigma_mad, Basis,
    LUMA_MIN_SIDE, LUMA_MIN_SIDE_FULL,
};
use denoise_data::noise::{add_gaussian, rng_for};

/// Smooth gradients and blobs, `(3, h, w)` in `[0, 1]`.
fn smooth(h: usize, w: usize, k: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                let blob =
                    (-((fx - 0.3 - 0.1 * k as f32).powi(2) + (fy - 0.6).powi(2)) * 8.0).exp();
                v.push(0.2 + 0.3 * fx * (c as f32 + 1.0) / 3.0 + 0.2 * fy + 0.3 * blob);
            }
        }
    }
    v
}

/// Textured: sums of sinusoids at several frequencies and a hard edge, like natural detail.
fn textured(h: usize, w: usize, k: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y as f32, x as f32);
                let t = 0.15 * (fx * 0.21 + fy * 0.05 * k as f32).sin()
                    + 0.1 * (fy * 0.37 + c as f32).cos()
                    + 0.05 * (fx * 0.9 + fy * 0.7).sin()
                    + if x > w / 2 + y / 4 { 0.2 } else { 0.0 };
                v.push(0.4 + t);
            }
        }
    }
    v
}

#[test]
fn estimates_are_within_15_percent_from_5_to_50() {
    for (name, make, size) in [
        ("smooth", smooth as fn(usize, usize, usize) -> Vec<f32>, 32),
        ("smooth", smooth, 128),
        ("textured", textured, 32),
        ("textured", textured, 128),
    ] {
        for sigma in [5.0f64, 10.0, 15.0, 25.0, 50.0] {
            let mut worst = 0f64;
            for k in 0..4 {
                let clean = make(size, size, k);
                let mut rng = rng_for(&[7, k as u64, sigma as u64]);
                let noisy = add_gaussian(&clean, (sigma / 255.0) as f32, &mut rng);
                let est = estimate_sigma(&noisy, (3, size, size)) * 255.0;
                worst = worst.max((est - sigma).abs() / sigma);
            }
            assert!(
                worst < 0.15,
                "{name} {size}x{size} sigma {sigma}: worst error {:.1} %",
                worst * 100.0
            );
        }
    }
}

#[test]
fn clean_flat_images_have_no_noise_and_mad_agrees_on_flat_noise() {
    let flat = vec![0.5f32; 3 * 40 * 40];
    assert!(estimate_sigma(&flat, (3, 40, 40)) < 1e-6);
    let mut rng = rng_for(&[1]);
    let noisy = add_gaussian(&flat, 0.1, &mut rng);
    let mad = estimate_sigma_mad(&noisy, (3, 40, 40));
    assert!((mad - 0.1).abs() < 0.01, "{mad}");
    assert_eq!(estimate_sigma(&[0.5; 3], (3, 1, 1)), 0.0);
}

/// A gray picture stored as three equal channels (as `denoise generate` reads one) gets the
/// estimate of its single channel; it used to get 0, and so no denoising at all. Constant
/// channels are left out too.
#[test]
fn repeated_channels_count_once() {
    for sigma in [10.0f64, 25.0] {
        let clean = textured(48, 40, 1);
        let mut rng = rng_for(&[3, sigma as u64]);
        let gray = add_gaussian(&clean[..48 * 40], (sigma / 255.0) as f32, &mut rng);
        let one = estimate_sigma(&gray, (1, 48, 40)) * 255.0;
        let rgb: Vec<f32> = gray.iter().chain(&gray).chain(&gray).copied().collect();
        let three = estimate_sigma(&rgb, (3, 48, 40)) * 255.0;
        assert!((one - sigma).abs() / sigma < 0.15, "sigma {sigma}: {one}");
        assert_eq!(one, three);
        // Two distinct channels of three: the repeated one is dropped, not the others.
        let other = add_gaussian(
            &clean[48 * 40..2 * 48 * 40],
            (sigma / 255.0) as f32,
            &mut rng,
        );
        let two: Vec<f32> = gray.iter().chain(&other).chain(&gray).copied().collect();
        let distinct: Vec<f32> = gray.iter().chain(&other).copied().collect();
        assert_eq!(
            estimate_sigma(&two, (3, 48, 40)),
            estimate_sigma(&distinct, (2, 48, 40))
        );
        // A constant channel (a picture without blue) does not count either: over all three
        // channels, sigma 10 came out as 7.1.
        let no_blue: Vec<f32> = distinct.iter().copied().chain([0.0; 48 * 40]).collect();
        assert_eq!(
            estimate_sigma(&no_blue, (3, 48, 40)),
            estimate_sigma(&distinct, (2, 48, 40))
        );
    }
}

/// Flat regions (a transparent half with its colour zeroed, a band clipped to white) hold no
/// noise and are left out: the estimate is that of the noisy part. Counted, they diluted it
/// (sigma 10 came out as 5.8 here).
#[test]
fn flat_regions_do_not_dilute_the_estimate() {
    let (h, w) = (64, 64);
    for sigma in [10.0f64, 25.0] {
        let clean = textured(h, w, 2);
        let mut rng = rng_for(&[5, sigma as u64]);
        let mut img = add_gaussian(&clean, (sigma / 255.0) as f32, &mut rng);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = &mut img[(c * h + y) * w + x];
                    if x < w / 2 {
                        *v = 0.0;
                    } else if y < h / 4 {
                        *v = 1.0;
                    }
                }
            }
        }
        let est = estimate_sigma(&img, (3, h, w)) * 255.0;
        eprintln!("flat regions, sigma {sigma}: estimated {est:.2}");
        assert!((est - sigma).abs() / sigma < 0.15, "sigma {sigma}: {est}");
    }
}

/// Colour subsampled as most JPEGs store it (4:2:0, as cameras, phones and libjpeg's default
/// write them): the image in YCbCr (JPEG's BT.601 weights), Cb and Cr averaged over 2x2
/// pixels, back to RGB.
fn subsample_chroma(img: &mut [f32], (h, w): (usize, usize)) {
    let n = h * w;
    let ycc = |i: usize, img: &[f32]| {
        let (r, g, b) = (img[i], img[n + i], img[2 * n + i]);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        (
            y,
            -0.168_736 * r - 0.331_264 * g + 0.5 * b,
            0.5 * r - 0.418_688 * g - 0.081_312 * b,
        )
    };
    for by in (0..h).step_by(2) {
        for bx in (0..w).step_by(2) {
            let quad = [
                by * w + bx,
                by * w + bx + 1,
                (by + 1) * w + bx,
                (by + 1) * w + bx + 1,
            ];
            let (mut cb, mut cr) = (0.0, 0.0);
            for &i in &quad {
                let (_, b, r) = ycc(i, img);
                cb += b / 4.0;
                cr += r / 4.0;
            }
            for &i in &quad {
                let (y, _, _) = ycc(i, img);
                img[i] = y + 1.402 * cr;
                img[n + i] = y - 0.344_136 * cb - 0.714_136 * cr;
                img[2 * n + i] = y + 1.772 * cb;
            }
        }
    }
}

/// With colour subsampled, half the patch directions hold no noise, and the estimate over all
/// channels came out near 0 (0.5 to 4 on noisy JPEGs of photos at sigma 5 to 50: no denoising
/// at all); the luma's estimate takes over (at full and half size from 256 pixels a side, at
/// full size from 64). Noise of sigma 10 and 25, and none.
#[test]
fn subsampled_colour_is_estimated_from_the_luma() {
    for (k, (h, w)) in [
        (0, (256, 256)),
        (1, (256, 256)),
        (0, (128, 96)),
        (1, (64, 64)),
    ] {
        let clean = textured(h, w, k);
        for sigma in [10.0f64, 25.0] {
            let mut rng = rng_for(&[11, k as u64, sigma as u64]);
            let mut img = add_gaussian(&clean, (sigma / 255.0) as f32, &mut rng);
            let white = estimate_sigma(&img, (3, h, w)) * 255.0;
            subsample_chroma(&mut img, (h, w));
            let est = estimate_sigma(&img, (3, h, w)) * 255.0;
            let luma = estimate_luma_sigma(&img, (h, w)) * 255.0;
            eprintln!("{h}x{w} subsampled, sigma {sigma}: {est:.2} (white noise: {white:.2})");
            if h.min(w) >= LUMA_MIN_SIDE {
                assert_eq!(est, luma);
            }
            assert_eq!(estimate_sigma_from(&img, (3, h, w)).1, Basis::Luma);
            assert!((est - sigma).abs() / sigma < 0.15, "sigma {sigma}: {est}");
            assert!(
                (white - sigma).abs() / sigma < 0.15,
                "sigma {sigma}: {white}"
            );
        }
        let mut img = clean.clone();
        subsample_chroma(&mut img, (h, w));
        let est = estimate_sigma(&img, (3, h, w)) * 255.0;
        assert!(est < 3.0, "{h}x{w} clean: {est}");
    }
    // Below LUMA_MIN_SIDE_FULL a side, the luma is not consulted.
    let (h, w) = (LUMA_MIN_SIDE_FULL - 4, LUMA_MIN_SIDE);
    let mut rng = rng_for(&[12]);
    let mut img = add_gaussian(&textured(h, w, 0), 25.0 / 255.0, &mut rng);
    subsample_chroma(&mut img, (h, w));
    assert!(estimate_sigma(&img, (3, h, w)) * 255.0 < 10.0);
}

/// One channel has far fewer detail-free patch directions than three: over all patches, a
/// clean picture's detail read as noise, and a gray picture was told it had noise and came out
/// blurred. Its patches of weak texture are used instead (Liu et al.). The pictures: smooth
/// gradients, and over a third of them fine detail of every frequency (as photos have: a
/// blurred random field; sinusoids leave most patch directions without detail).
#[test]
fn a_clean_gray_picture_has_no_noise() {
    for (h, w) in [(32, 32), (128, 96)] {
        for k in 0..3 {
            let smooth = smooth(h, w, k);
            let mut rng = rng_for(&[14, k as u64]);
            let field = add_gaussian(&vec![0.0; (h + 2) * (w + 2)], 0.2, &mut rng);
            let detail = |y: usize, x: usize| {
                let mut v = 0.0;
                for dy in 0..3 {
                    for dx in 0..3 {
                        v += field[(y + dy) * (w + 2) + x + dx] / 9.0;
                    }
                }
                v
            };
            let gray: Vec<f32> = (0..h * w)
                .map(|i| {
                    smooth[i]
                        + if i % w < w / 3 {
                            detail(i / w, i % w)
                        } else {
                            0.0
                        }
                })
                .collect();
            let clean = estimate_sigma(&gray, (1, h, w)) * 255.0;
            let noisy = add_gaussian(&gray, 10.0 / 255.0, &mut rng);
            let est = estimate_sigma(&noisy, (1, h, w)) * 255.0;
            eprintln!("{h}x{w} {k}: clean {clean:.2}, sigma 10 {est:.2}");
            // Over all patches: clean 1.7 to 4.6.
            assert!(clean < 1.0, "{h}x{w} {k}: clean {clean}");
            assert!((est - 10.0).abs() < 1.5, "{h}x{w} {k}: sigma 10 {est}");
        }
    }
}
