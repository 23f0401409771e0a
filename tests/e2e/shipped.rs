//! The shipped models, with no training: CIFAR-10 thumbnails and photos of any size.

use std::path::Path;

use crate::common::*;

/// The model in `models/` is small, says how it was made, and serves `generate` with no
/// `--model`: it denoises a noisy picture well and samples new images.
#[test]
fn shipped_model_works_without_training() {
    let path = shipped_model("cond-unet-cifar10.safetensors", 10_000_000);
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let model: serde_json::Value = serde_json::from_str(&meta["denoise.model"]).unwrap();
    assert_eq!(model["arch"], "cond-unet");
    let train: serde_json::Value = serde_json::from_str(&meta["denoise.train"]).unwrap();
    assert!(train["images_seen"].as_u64().unwrap() > 0);
    assert!(train["elapsed_secs"].as_f64().unwrap() > 0.0);
    let eval: serde_json::Value = serde_json::from_str(&meta["denoise.eval"]).unwrap();
    assert!(!eval["results"].as_array().unwrap().is_empty());
    let text = ok(&["info", path.to_str().unwrap()]);
    assert!(text.contains("network     cond-unet"), "{text}");
    assert!(text.contains("resume      no: a model-only file"), "{text}");
    assert!(text.contains("| 25 | true sigma |"), "{text}");

    let tmp = tempfile::tempdir().unwrap();
    // A smooth 64x48 picture with sigma-25 noise: the model, told nothing, must clean it.
    let (w, h) = (64u32, 48u32);
    let clean = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([0, 1, 2].map(|c| smooth(5, c, y as usize, x as usize)))
    });
    let mut rng = 99u64;
    let noisy = image::RgbImage::from_fn(w, h, |x, y| {
        let p = clean.get_pixel(x, y).0;
        image::Rgb(p.map(|v| {
            let mut s = 0.0;
            for _ in 0..12 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s += (rng >> 11) as f64 / (1u64 << 53) as f64;
            }
            (v as f64 + 25.0 * (s - 6.0)).clamp(0.0, 255.0).round() as u8
        }))
    });
    let np = tmp.path().join("noisy.png");
    noisy.save(&np).unwrap();
    let out = tmp.path().join("clean.png");
    let generate = |input: &Path, out: &Path, extra: &[&str]| {
        let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
        let args = [
            "generate", "--image", input, "--out", out, "--device", "cpu",
        ];
        ok(&[&args[..], extra].concat())
    };
    let text = generate(&np, &out, &[]);
    assert!(text.contains("estimated"), "{text}");
    let den = image::open(&out).unwrap().to_rgb8();
    let db = |a: &image::RgbImage| psnr(a.as_raw(), clean.as_raw());
    // At least 6 dB cleaner.
    let gains = |what: &str, noisy: f64, den: f64| {
        eprintln!("shipped model, {what}: noisy {noisy:.2} dB, denoised {den:.2} dB");
        assert!(
            den > noisy + 6.0,
            "{what}: noisy {noisy:.2} dB, denoised {den:.2} dB"
        );
    };
    gains("RGB", db(&noisy), db(&den));

    // A gray picture (read as three equal channels): its noise level estimated too (it came
    // out 0, and the picture unchanged, before the estimator counted repeated channels once),
    // and the network told twice that level (`tiles::GRAY_SIGMA_FACTOR`; told the level
    // itself it gained 3.2 dB here).
    let gray = image::GrayImage::from_fn(w, h, |x, y| image::Luma([noisy.get_pixel(x, y).0[1]]));
    let gp = tmp.path().join("noisy-gray.png");
    gray.save(&gp).unwrap();
    let gout = tmp.path().join("clean-gray.png");
    let text = generate(&gp, &gout, &[]);
    let sigma: f64 = text
        .split("noise sigma ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no estimated sigma in {text}"));
    assert!(
        (20.0..30.0).contains(&sigma) && text.contains("as gray"),
        "{text}"
    );
    let gden = image::open(&gout).unwrap().to_luma8();
    let gclean: Vec<u8> = clean.pixels().map(|p| p.0[1]).collect();
    let what = format!("gray, sigma {sigma} estimated");
    gains(
        &what,
        psnr(gray.as_raw(), &gclean),
        psnr(gden.as_raw(), &gclean),
    );

    // A camera JPEG's EXIF data (here an orientation tag: rotate 90°) and ICC profile go into
    // the output, JPEG or PNG, unchanged: a phone photo is not shown sideways afterwards.
    let exif: Vec<u8> = vec![
        0x49, 0x49, 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00, // TIFF header, IFD at 8
        0x01, 0x00, // one entry
        0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00,
        0x00, // orientation 6
        0x00, 0x00, 0x00, 0x00, // no next IFD
    ];
    let icc = b"not a real ICC profile, carried as it is".to_vec();
    let jp = tmp.path().join("camera.jpg");
    {
        use image::ImageEncoder;
        let mut bytes = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
        enc.set_exif_metadata(exif.clone()).unwrap();
        enc.set_icc_profile(icc.clone()).unwrap();
        image::DynamicImage::ImageRgb8(noisy.clone())
            .write_with_encoder(enc)
            .unwrap();
        std::fs::write(&jp, bytes).unwrap();
    }
    for name in ["camera-out.jpg", "camera-out.png"] {
        use image::ImageDecoder;
        let o = tmp.path().join(name);
        generate(&jp, &o, &["--sigma", "25"]);
        let mut dec = image::ImageReader::open(&o)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        assert_eq!(dec.exif_metadata().unwrap().as_ref(), Some(&exif), "{name}");
        assert_eq!(dec.icc_profile().unwrap().as_ref(), Some(&icc), "{name}");
        assert_eq!(
            dec.orientation().unwrap(),
            image::metadata::Orientation::Rotate90,
            "{name}"
        );
    }

    // The same with the network in bf16: within 0.1 dB of f32.
    let out16 = tmp.path().join("clean-bf16.png");
    generate(&np, &out16, &["--dtype", "bf16"]);
    let den16 = image::open(&out16).unwrap().to_rgb8();
    assert!(
        (db(&den16) - db(&den)).abs() < 0.1,
        "bf16 {:.3} dB, f32 {:.3} dB",
        db(&den16),
        db(&den)
    );

    // eval with no --model scores the shipped model too.
    let set = tmp.path().join("set");
    std::fs::create_dir_all(&set).unwrap();
    clean.save(set.join("a.png")).unwrap();
    let json = tmp.path().join("eval.json");
    let text = ok(&[
        "eval",
        "--data",
        set.to_str().unwrap(),
        "--sigmas",
        "25",
        "--json",
        json.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        text.contains("models/cond-unet-cifar10.safetensors (cond-unet"),
        "{text}"
    );
    let r = &serde_json::from_slice::<serde_json::Value>(&std::fs::read(&json).unwrap()).unwrap()
        ["results"][0];
    let (noisy, denoised) = (
        r["noisy_psnr"].as_f64().unwrap(),
        r["psnr"].as_f64().unwrap(),
    );
    assert!(denoised > noisy + 6.0, "{r}");

    let grid = tmp.path().join("new.png");
    let text = ok(&[
        "generate",
        "--random",
        "--count",
        "2",
        "--steps",
        "4",
        "--out",
        grid.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(text.contains("2 images"), "{text}");
    assert!(tmp.path().join("new/001.png").exists());
}

/// Photos of several sizes: `eval` scores each whole (the large one through the tiled path)
/// with the shipped photo model, picked by their size, under each kind of noise; `generate`
/// picks the photo model for a picture larger than 64x64 and says so; `train` takes the noise
/// flags into its recipe.
#[test]
fn photos_of_any_size_get_the_photo_model() {
    // The shipped photo model: at most 40 MB, with its recipe, training time and eval table.
    let path = shipped_model("cond-unet-photos.safetensors", 40_000_000);
    let train = metadata(&path);
    assert!(train["elapsed_secs"].as_f64().unwrap() > 0.0);
    // Fine-tuned in stages from the CIFAR-10 model: each stage's recipe and time are recorded.
    assert_eq!(
        train["config"]["init_from"],
        "models/cond-unet-photos.safetensors"
    );
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let lineage: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["denoise.lineage"]).unwrap();
    let stages = lineage.as_array().unwrap();
    assert_eq!(stages.len(), 2, "{lineage}");
    assert_eq!(
        stages[1]["checkpoint"],
        "models/cond-unet-cifar10.safetensors"
    );
    assert!(stages
        .iter()
        .all(|s| s["elapsed_secs"].as_f64().unwrap() > 0.0));
    let text = ok(&["info", path.to_str().unwrap()]);
    assert!(text.contains("| 25 | true sigma |"), "{text}");
    assert!(
        text.contains("which from models/cond-unet-cifar10.safetensors"),
        "{text}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    // 600x480 is more than generate's whole-image limit (512x512 pixels): it runs in tiles.
    for (k, (w, h)) in [(600, 480), (40, 40), (90, 70)].into_iter().enumerate() {
        write_png(&photos.join(format!("p{k}.png")), k, w, h);
    }
    let p = photos.to_str().unwrap();
    let json = tmp.path().join("eval.json");
    let eval = |extra: &[&str]| {
        let args = [
            "eval",
            "--data",
            p,
            "--sigmas",
            "25",
            "--json",
            json.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        let text = ok(&[&args[..], extra].concat());
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (text, v)
    };
    let (text, v) = eval(&["--estimate-sigma"]);
    assert!(
        text.contains("cond-unet-photos.safetensors (cond-unet")
            && text.contains("3 test images of several sizes, each whole, gaussian noise"),
        "{text}"
    );
    assert_eq!(v["images"], 3);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let (noisy, den) = (
            r["noisy_psnr"].as_f64().unwrap(),
            r["psnr"].as_f64().unwrap(),
        );
        assert!(den > noisy + 6.0, "{r}");
    }
    let est = results[1]["mean_estimate"].as_f64().unwrap();
    assert!((est - 25.0).abs() < 4.0, "{est}");
    let gaussian = results[0]["noisy_psnr"].as_f64().unwrap();
    // Signal-dependent noise of the same mid-grey level, then JPEG: other inputs, still
    // cleaned; the JSON says what they were.
    let (_, v) = eval(&[
        "--noise",
        "poisson-gaussian",
        "--jpeg-quality-range",
        "60,60",
    ]);
    assert_eq!(v["noise"], "poisson-gaussian");
    assert_eq!(v["jpeg_quality_range"], serde_json::json!([60, 60]));
    let r = &v["results"][0];
    let noisy = r["noisy_psnr"].as_f64().unwrap();
    assert!((noisy - gaussian).abs() > 0.05, "{noisy} {gaussian}");
    assert!(r["psnr"].as_f64().unwrap() > noisy + 3.0, "{r}");
    let err = fails(&["eval", "--data", p, "--jpeg-quality-range", "0,50"]);
    assert!(
        err.contains("--jpeg-quality-range") && err.contains("1 <= LOW"),
        "{err}"
    );
    // A grid shows small images only: of large photos it is refused before the evaluation.
    let big = tmp.path().join("big");
    write_png(&big.join("p.png"), 0, 600, 480);
    let grid = tmp.path().join("g.png");
    let err = fails(&[
        "eval",
        "--data",
        big.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(
        err.contains("g.png: the grid") && err.contains("256x256"),
        "{err}"
    );
    assert!(!grid.exists());

    // generate: the photo model for the 90x70 picture, the CIFAR-10 model for the 40x40 one.
    for (name, model) in [
        ("p2.png", "cond-unet-photos.safetensors"),
        ("p1.png", "cond-unet-cifar10.safetensors"),
    ] {
        let out = tmp.path().join(format!("clean-{name}"));
        let input = photos.join(name);
        let text = ok(&[
            "generate",
            "--image",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(
            text.contains(&format!("estimated, model {model})")),
            "{text}"
        );
    }

    // train: the noise flags go into the recipe.
    let out = tmp.path().join("run");
    let text = ok(&[
        "train",
        "--print-config",
        "--out",
        out.to_str().unwrap(),
        "--noise",
        "poisson-gaussian",
        "--jpeg-quality-range",
        "30,90",
    ]);
    assert!(
        text.contains("noise = \"poisson-gaussian\"")
            && text.contains("jpeg_quality_range = [\n    30,\n    90,\n]"),
        "{text}"
    );
    let err = fails(&["train", "--print-config", "--jpeg-quality-range", "90,30"]);
    assert!(err.contains("JPEG quality range 90,30"), "{err}");
}
