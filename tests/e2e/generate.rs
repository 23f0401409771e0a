//! `generate` and `estimate` on images of every kind, and sampling new images.

use crate::common::*;

/// `generate`: images of every layout and size keep their size, channels, bit depth and
/// alpha; a folder in gives a folder out; big images go through tiles; `--random` samples a
/// grid and single images, the same for the same seed.
#[test]
fn generate_denoises_any_image_and_samples_new_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p).to_str().unwrap().to_string();
    let data = image_folder(tmp.path(), 4);
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        &t("run"),
        "--width",
        "8",
        "--batch",
        "4",
        "--max-steps",
        "2",
        "--device",
        "cpu",
    ]);
    let model = t("run/last.safetensors");
    let (w, h) = (41u32, 29u32);
    let px = |x: u32, y: u32, c: usize| smooth(2, c, y as usize, x as usize);
    // 16-bit RGBA with a varying alpha, 8-bit gray + alpha, 8-bit gray JPEG, 8-bit RGB.
    image::ImageBuffer::from_fn(w, h, |x, y| {
        image::Rgba(
            [0, 1, 2]
                .map(|c| px(x, y, c) as u16 * 257 + 3)
                .into_iter()
                .chain([(x * 1000 + y) as u16])
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        )
    })
    .save(t("rgba16.png"))
    .unwrap();
    image::ImageBuffer::from_fn(w, h, |x, y| image::LumaA([px(x, y, 0), (x * 6) as u8]))
        .save(t("graya.png"))
        .unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([px(x, y, 1)]))
        .save(t("gray.jpg"))
        .unwrap();
    let gen = |input: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "generate", "--model", &model, "--image", input, "--out", out, "--device", "cpu",
        ];
        args.extend(extra);
        ok(&args)
    };
    let text = gen(&t("rgba16.png"), &t("out16.png"), &["--sigma", "10"]);
    assert!(
        text.contains("16-bit RGBA") && text.contains("10.00 given"),
        "{text}"
    );
    let o = image::open(t("out16.png")).unwrap();
    assert_eq!(o.color(), image::ColorType::Rgba16);
    assert_eq!((o.width(), o.height()), (w, h));
    let alpha: Vec<u16> = o.to_rgba16().pixels().map(|p| p.0[3]).collect();
    let want: Vec<u16> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x * 1000 + y) as u16))
        .collect();
    assert_eq!(alpha, want, "alpha must be kept exactly");

    let text = gen(&t("graya.png"), &t("outga.png"), &[]);
    assert!(
        text.contains("gray+alpha") && text.contains("estimated"),
        "{text}"
    );
    let o = image::open(t("outga.png")).unwrap();
    assert_eq!(o.color(), image::ColorType::La8);
    assert_eq!(o.to_luma_alpha8().get_pixel(10, 3).0[1], 60);

    gen(&t("gray.jpg"), &t("outg.jpg"), &[]);
    let o = image::open(t("outg.jpg")).unwrap();
    assert_eq!(
        (o.color(), o.width(), o.height()),
        (image::ColorType::L8, w, h)
    );
    // JPEG outputs at quality 95 unless told: not the encoder's default 75.
    gen(&t("gray.jpg"), &t("outg75.jpg"), &["--jpeg-quality", "75"]);
    let size = |f: &str| std::fs::metadata(t(f)).unwrap().len();
    assert!(
        size("outg.jpg") > size("outg75.jpg"),
        "{} {}",
        size("outg.jpg"),
        size("outg75.jpg")
    );
    let (input, out) = (t("gray.jpg"), t("outg0.jpg"));
    let args = [
        "generate", "--model", &model, "--image", &input, "--out", &out,
    ];
    let err = fails(&[&args[..], &["--jpeg-quality", "0"]].concat());
    assert!(err.contains("--jpeg-quality"), "{err}");

    // Tiles: the same image forced through 256x256 tiles on a larger canvas.
    image::RgbImage::from_fn(300, 270, |x, y| {
        image::Rgb([0, 1, 2].map(|c| smooth(1, c, y as usize, x as usize)))
    })
    .save(t("big.png"))
    .unwrap();
    gen(
        &t("big.png"),
        &t("bigout.png"),
        &["--sigma", "20", "--whole-limit", "1000"],
    );
    let o = image::open(t("bigout.png")).unwrap();
    assert_eq!((o.width(), o.height()), (300, 270));

    // 16-bit or alpha into JPEG: refused before any work, nothing written.
    let err = fails(&[
        "generate",
        "--model",
        &model,
        "--image",
        &t("rgba16.png"),
        "--out",
        &t("no.jpg"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("JPEG") && err.contains("no.jpg"), "{err}");
    assert!(!tmp.path().join("no.jpg").exists());

    // A folder in, a folder out.
    let dir = tmp.path().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..3 {
        write_png(&dir.join(format!("{k}.png")), k, 20 + k, 16);
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let text = gen(dir.to_str().unwrap(), &t("many-out"), &[]);
    assert!(text.contains("3 images denoised"), "{text}");
    for k in 0..3 {
        let o = image::open(tmp.path().join(format!("many-out/{k}.png"))).unwrap();
        assert_eq!((o.width(), o.height()), (20 + k as u32, 16));
    }
    // TIFF, WebP and BMP in and out: a 16-bit gray TIFF stays one; WebP holds no 16 bits.
    let tif = tmp.path().join("deep.tif");
    image::DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(24, 20, |x, y| {
        image::Luma([(x * 2000 + y * 700 + (x * y % 7) * 900) as u16])
    }))
    .save(&tif)
    .unwrap();
    gen(tif.to_str().unwrap(), &t("deep-out.tif"), &[]);
    let o = image::open(t("deep-out.tif")).unwrap();
    assert_eq!(o.color(), image::ColorType::L16);
    assert_eq!((o.width(), o.height()), (24, 20));
    let err = fails(&[
        "generate",
        "--image",
        tif.to_str().unwrap(),
        "--out",
        &t("deep.webp"),
        "--model",
        &model,
        "--device",
        "cpu",
    ]);
    assert!(err.contains("WebP holds only 8-bit images"), "{err}");
    let png = dir.join("0.png");
    for ext in ["webp", "bmp"] {
        let out = t(&format!("from-png.{ext}"));
        gen(png.to_str().unwrap(), &out, &[]);
        let o = image::open(&out).unwrap();
        assert_eq!((o.width(), o.height()), (20, 16), "{ext}");
        gen(&out, &t(&format!("back-{ext}.png")), &[]);
    }
    // A file that cannot be read does not stop the others; it is named, its cause said once,
    // and the command fails.
    std::fs::write(dir.join("broken.png"), "not a PNG").unwrap();
    let err = fails(&[
        "generate",
        "--image",
        dir.to_str().unwrap(),
        "--out",
        &t("many-out2"),
        "--model",
        &model,
        "--device",
        "cpu",
    ]);
    assert!(err.contains("1 of 4 images failed"), "{err}");
    assert_eq!(err.matches("Invalid PNG signature").count(), 1, "{err}");
    assert!(tmp.path().join("many-out2/2.png").exists());
    assert!(!tmp.path().join("many-out2/broken.png").exists());

    // New images: a grid and single images, the same for the same seed.
    let sample = |seed: &str, out: &str| {
        ok(&[
            "generate", "--random", "--model", &model, "--count", "4", "--steps", "3", "--seed",
            seed, "--out", out, "--device", "cpu",
        ])
    };
    let text = sample("1", &t("grid.png"));
    assert!(text.contains("5 network evaluations"), "{text}");
    let g = image::open(t("grid.png")).unwrap();
    assert_eq!((g.width(), g.height()), (2 * 98 + 2, 2 * 98 + 2));
    let single =
        |d: &str, i: usize| std::fs::read(tmp.path().join(format!("{d}/{i:03}.png"))).unwrap();
    sample("1", &t("again.png"));
    sample("2", &t("other.png"));
    assert_eq!(single("grid", 0), single("again", 0));
    assert_eq!(single("grid", 3), single("again", 3));
    assert_ne!(single("grid", 0), single("other", 0));
    assert_eq!(
        image::open(tmp.path().join("grid/001.png"))
            .unwrap()
            .width(),
        32
    );

    // A blind seed-unet cannot sample; bad sampler flags are named.
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        &t("seed"),
        "--arch",
        "seed-unet",
        "--width",
        "4",
        "--batch",
        "4",
        "--max-steps",
        "1",
        "--device",
        "cpu",
    ]);
    let err = fails(&[
        "generate",
        "--random",
        "--model",
        &t("seed/best.safetensors"),
        "--out",
        &t("s.png"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("seed-unet") && err.contains("cannot sample"),
        "{err}"
    );
    let err = fails(&[
        "generate",
        "--random",
        "--model",
        &model,
        "--sampler",
        "rk4",
        "--out",
        &t("s.png"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--sampler") && err.contains("rk4"), "{err}");
    // A training folder stands for its best model; a folder without one is named.
    let png = dir.join("0.png");
    for (m, out) in [
        ("run", "via-run.png"),
        ("run/best.safetensors", "via-best.png"),
    ] {
        ok(&[
            "generate",
            "--image",
            png.to_str().unwrap(),
            "--model",
            &t(m),
            "--sigma",
            "20",
            "--out",
            &t(out),
            "--device",
            "cpu",
        ]);
    }
    assert_eq!(
        std::fs::read(t("via-run.png")).unwrap(),
        std::fs::read(t("via-best.png")).unwrap()
    );
    let err = fails(&[
        "generate",
        "--image",
        png.to_str().unwrap(),
        "--model",
        &t("many"),
        "--out",
        &t("via-many.png"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("a folder without best.safetensors"), "{err}");
    // Sizes and counts beyond memory are refused before sampling (a memory-allocation abort).
    for (flag, value, says) in [
        ("--size", "100000", "--size 100000: at most 1024"),
        ("--count", "100000000", "at most 33554432 (32768 images"),
    ] {
        let err = fails(&[
            "generate",
            "--random",
            "--model",
            &model,
            flag,
            value,
            "--out",
            &t("huge.png"),
            "--device",
            "cpu",
        ]);
        assert!(err.contains(says), "{err}");
        assert!(!tmp.path().join("huge.png").exists());
    }
    let err = fails(&[
        "generate",
        "--model",
        &model,
        "--image",
        &t("gray.jpg"),
        "--sigma=-1",
        "--out",
        &t("s.png"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--sigma"), "{err}");
    assert!(!tmp.path().join("s.png").exists());
}

/// `estimate`: the noise level of each image of a folder, as a table and as JSON, without a
/// model; a file that cannot be read is named and the command fails; --json must not be an
/// image.
#[test]
fn estimate_reports_noise_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("noisy");
    std::fs::create_dir_all(&dir).unwrap();
    let (w, h) = (96usize, 80usize);
    for (name, sigma, gray) in [("a.png", 20.0f32, false), ("b.png", 8.0, true)] {
        let clean: Vec<f32> = (0..3)
            .flat_map(|c| (0..h * w).map(move |i| (c, i)))
            .map(|(c, i)| smooth(1, if gray { 0 } else { c }, i / w, i % w) as f32 / 255.0)
            .collect();
        let mut rng = denoise_data::noise::rng_for(&[name.len() as u64, sigma as u64]);
        let noisy = if gray {
            let one = denoise_data::noise::add_gaussian(&clean[..h * w], sigma / 255.0, &mut rng);
            [one.clone(), one.clone(), one].concat()
        } else {
            denoise_data::noise::add_gaussian(&clean, sigma / 255.0, &mut rng)
        };
        let px = |c: usize, i: usize| (noisy[c * h * w + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let i = y as usize * w + x as usize;
            image::Rgb([px(0, i), px(1, i), px(2, i)])
        })
        .save(dir.join(name))
        .unwrap();
    }
    let json = tmp.path().join("noise.json");
    let text = ok(&[
        "estimate",
        "--image",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        text.contains("| image | size | noise sigma | from |"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (row, sigma, from) in [
        (&images[0], 20.0, "colour channels"),
        (&images[1], 8.0, "gray"),
    ] {
        let est = row["sigma"].as_f64().unwrap();
        assert!((est - sigma).abs() < 0.15 * sigma, "{row}");
        assert_eq!(row["from"], from, "{row}");
        assert_eq!(
            (row["width"].as_u64(), row["height"].as_u64()),
            (Some(96), Some(80))
        );
    }
    std::fs::write(dir.join("c.png"), "not a PNG").unwrap();
    let err = fails(&["estimate", "--image", dir.to_str().unwrap()]);
    assert!(
        err.contains("c.png") && err.contains("1 of 3 images failed"),
        "{err}"
    );
    let a = dir.join("a.png");
    let before = std::fs::read(&a).unwrap();
    let err = fails(&[
        "estimate",
        "--image",
        a.to_str().unwrap(),
        "--json",
        a.to_str().unwrap(),
    ]);
    assert!(err.contains("is the image"), "{err}");
    assert_eq!(std::fs::read(&a).unwrap(), before);
}
