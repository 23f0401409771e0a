//! End-to-end tests: the `denoise` binary run as a user runs it, on data the tests write
//! (a CIFAR-format dataset and folders of PNG images of smooth synthetic pictures).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn denoise(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_denoise"))
        .args(args)
        .env("DENOISE_LOG", "info")
        .output()
        .expect("run denoise");
    out
}

fn ok(args: &[&str]) -> String {
    let out = denoise(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "denoise {args:?} failed:\n{text}");
    text
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = denoise(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "denoise {args:?} should have failed");
    assert!(
        !err.contains("panicked"),
        "denoise {args:?} panicked:\n{err}"
    );
    err
}

/// A smooth synthetic image: a few low-frequency waves whose phases depend on `k`.
fn smooth(k: usize, c: usize, y: usize, x: usize) -> u8 {
    let (k, c, y, x) = (k as f64, c as f64, y as f64, x as f64);
    let v = 128.0
        + 60.0 * ((x + 3.0 * k) / 6.0 + c).sin()
        + 50.0 * ((y * (1.0 + 0.1 * k)) / 7.0 - c * 0.5).cos();
    v.clamp(0.0, 255.0) as u8
}

fn write_png(path: &Path, k: usize, w: usize, h: usize) {
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([0, 1, 2].map(|c| smooth(k, c, y as usize, x as usize)))
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `train/` and `test/` with two class folders of smooth 32x32 images.
fn image_folder(root: &Path, per_class: usize) -> PathBuf {
    let dir = root.join("images");
    for split in ["train", "test"] {
        for (ci, class) in ["waves", "ripples"].iter().enumerate() {
            for i in 0..per_class {
                write_png(
                    &dir.join(split).join(class).join(format!("{i:04}.png")),
                    ci * 50 + i,
                    32,
                    32,
                );
            }
        }
    }
    dir
}

/// The six files of the CIFAR-10 binary release, of the right sizes, holding smooth images.
fn cifar_binary(root: &Path) -> PathBuf {
    let dir = root.join("cifar").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |k: usize| {
        let mut r = vec![(k % 10) as u8];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    r.push(smooth(k % 37, c, y, x));
                }
            }
        }
        r
    };
    let records: Vec<Vec<u8>> = (0..37).map(record).collect();
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        let mut bytes = Vec::with_capacity(10_000 * 3073);
        for i in 0..10_000 {
            bytes.extend_from_slice(&records[i % 37]);
        }
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
    root.join("cifar")
}

/// PSNR in dB of 8-bit values `a` against `b`.
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metadata(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().clone().unwrap();
    serde_json::from_str(&m["denoise.train"]).unwrap()
}

fn weights(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn cifar_binary_train_resume_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar_binary(tmp.path());
    let data = data.to_str().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let common = [
        "--data",
        data,
        "--width",
        "8",
        "--batch",
        "4",
        "--val-limit",
        "8",
        "--device",
        "cpu",
        "--log-every",
        "1",
    ];
    // Six steps straight...
    let mut args = vec!["train", "--out", a.to_str().unwrap(), "--max-steps", "6"];
    args.extend(common);
    let text = ok(&args);
    assert!(
        text.contains("45000 train, 5000 validation, 10000 test"),
        "{text}"
    );
    // ...and three, then three more with --resume, give the same weights and optimizer state.
    let mut args = vec!["train", "--out", b.to_str().unwrap(), "--max-steps", "3"];
    args.extend(common);
    ok(&args);
    assert_eq!(metadata(&b.join("last.safetensors"))["global_step"], 3);
    let mut args = vec![
        "train",
        "--out",
        b.to_str().unwrap(),
        "--max-steps",
        "6",
        "--resume",
    ];
    args.extend(common);
    let text = ok(&args);
    assert!(text.contains("resuming"), "{text}");
    let state = metadata(&b.join("last.safetensors"));
    assert_eq!(state["global_step"], 6);
    assert_eq!(state["images_seen"], 24);
    assert_eq!(
        weights(&a.join("last.safetensors")),
        weights(&b.join("last.safetensors"))
    );
    for f in ["best.safetensors", "metrics.jsonl", "steps.csv", "loss.png"] {
        assert!(a.join(f).exists(), "{f} missing");
    }

    // A folder that holds a run is not started over by mistake: without --resume or
    // --overwrite it is refused, before the data is read, and its checkpoints stay as they were.
    let before = std::fs::read(a.join("last.safetensors")).unwrap();
    let mut args = vec!["train", "--out", a.to_str().unwrap(), "--max-steps", "2"];
    args.extend(common);
    let err = fails(&args);
    assert!(
        err.contains("holds a run (last.safetensors (6 steps))") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(
        !err.contains("45000 train"),
        "refused after reading the data:\n{err}"
    );
    assert_eq!(std::fs::read(a.join("last.safetensors")).unwrap(), before);
    let mut both = args.clone();
    both.extend(["--resume", "--overwrite"]);
    let err = fails(&both);
    assert!(
        err.contains("--overwrite") && err.contains("--resume"),
        "{err}"
    );
    // Two runs in one folder at once: the second is refused while the first holds the lock.
    let lock = std::fs::File::open(a.join(".train.lock")).unwrap();
    lock.try_lock().unwrap();
    let mut resume = args.clone();
    resume.push("--resume");
    let err = fails(&resume);
    assert!(
        err.contains("another training run is using this folder"),
        "{err}"
    );
    drop(lock);
    assert_eq!(std::fs::read(a.join("last.safetensors")).unwrap(), before);
    // Nor is a resumed run's network changed: another width is refused (it used to be ignored,
    // and written into the recipe as if it had been used).
    let a_out = a.to_str().unwrap();
    let wider = [
        "train",
        "--out",
        a_out,
        "--max-steps",
        "8",
        "--resume",
        "--width",
        "16",
        "--data",
        data,
        "--batch",
        "4",
        "--device",
        "cpu",
    ];
    let err = fails(&wider);
    assert!(err.contains("width 8, not 16"), "{err}");
    assert_eq!(std::fs::read(a.join("last.safetensors")).unwrap(), before);
    // Nor does --resume start over a folder whose last.safetensors is gone but whose best is not.
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::copy(a.join("best.safetensors"), c.join("best.safetensors")).unwrap();
    let mut resume = vec!["train", "--out", c.to_str().unwrap(), "--resume"];
    resume.extend(common);
    let err = fails(&resume);
    assert!(
        err.contains("nothing to resume") && err.contains("--overwrite"),
        "{err}"
    );
    let records = jsonl(&b.join("metrics.jsonl"));
    assert_eq!(records.len(), 2);
    // --init-from starts a new run from a checkpoint's (averaged) weights, with a fresh
    // optimizer: one step at a vanishing rate leaves them where they were.
    let d = tmp.path().join("d");
    let b_last = b.join("last.safetensors");
    let mut args = vec![
        "train",
        "--out",
        d.to_str().unwrap(),
        "--max-steps",
        "1",
        "--lr",
        "1e-12",
        "--init-from",
        b_last.to_str().unwrap(),
    ];
    args.extend(common);
    let text = ok(&args);
    assert!(text.contains("starting from the weights of"), "{text}");
    let state = metadata(&d.join("last.safetensors"));
    assert_eq!(state["global_step"], 1);
    assert_eq!(state["config"]["init_from"], b_last.to_str().unwrap());
    let start = weights(&b_last);
    let tuned = weights(&d.join("last.safetensors"));
    let ema: Vec<_> = start
        .iter()
        .filter(|(n, _)| n.starts_with("ema."))
        .collect();
    assert!(!ema.is_empty());
    for (name, bytes) in ema {
        let model = format!("model.{}", &name[4..]);
        let (_, got) = tuned.iter().find(|(n, _)| *n == model).unwrap();
        let f = |b: &[u8]| -> Vec<f32> {
            b.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (a, g) = (f(bytes), f(got));
        let diff = a
            .iter()
            .zip(&g)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "{model} moved by {diff} from {name}");
    }
    // Its network is the checkpoint's: another width is refused, as is a checkpoint that is
    // not a file.
    let e = tmp.path().join("e");
    let mut wider = args.clone();
    wider[2] = e.to_str().unwrap();
    let w = wider.iter().position(|a| *a == "--width").unwrap();
    wider[w + 1] = "16";
    let err = fails(&wider);
    assert!(
        err.contains("--init-from") && err.contains("width 8, not 16"),
        "{err}"
    );
    assert!(!e.exists(), "a refused run left its folder behind");
    let mut missing = args.clone();
    missing[2] = e.to_str().unwrap();
    missing[8] = "nowhere.safetensors";
    let err = fails(&missing);
    assert!(
        err.contains("--init-from nowhere.safetensors: expected a checkpoint file"),
        "{err}"
    );
    // --overwrite starts the folder over: a new run of its own steps.
    let mut args = vec![
        "train",
        "--out",
        a.to_str().unwrap(),
        "--max-steps",
        "2",
        "--overwrite",
    ];
    args.extend(common);
    let text = ok(&args);
    assert!(text.contains("starting over"), "{text}");
    assert_eq!(metadata(&a.join("last.safetensors"))["global_step"], 2);
    assert_eq!(jsonl(&a.join("metrics.jsonl")).len(), 1);

    // `info` reads a checkpoint back: what it is, how far it trained, whether it resumes.
    let last = b.join("last.safetensors");
    let text = ok(&["info", last.to_str().unwrap()]);
    assert!(text.contains("network     cond-unet"), "{text}");
    assert!(text.contains("6 steps, 24 images"), "{text}");
    assert!(
        text.contains("resume      yes: Adam's state after step 6"),
        "{text}"
    );
    assert!(text.contains("2 validations"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", last.to_str().unwrap()])).unwrap();
    assert_eq!(v["resumable"], true);
    assert_eq!(v["train"]["global_step"], 6);
    assert_eq!(
        v["tensors"]["adam.m"]["tensors"],
        v["tensors"]["model"]["tensors"]
    );
    assert!(v["parameters"].as_u64().unwrap() > 10_000);
    // A training folder stands for its last.safetensors.
    assert_eq!(ok(&["info", b.to_str().unwrap()]), text);
    let best = ok(&[
        "info",
        "--json",
        a.join("best.safetensors").to_str().unwrap(),
    ]);
    let best: serde_json::Value = serde_json::from_str(&best).unwrap();
    assert_eq!(best["resumable"], false);
    assert_eq!(best["parameters"], v["parameters"]);
    assert!(records
        .iter()
        .all(|r| r["val_loss"].as_f64().unwrap().is_finite()));

    // Evaluate the best checkpoint on 10 test images (the first of each class).
    let json = tmp.path().join("eval.json");
    let grid = tmp.path().join("grid.png");
    let plot = tmp.path().join("psnr.png");
    let best = a.join("best.safetensors");
    let text = ok(&[
        "eval",
        "--model",
        best.to_str().unwrap(),
        "--data",
        data,
        "--limit",
        "10",
        "--sigmas",
        "15,50",
        "--json",
        json.to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(text.contains("| 15 | true sigma | 10 |"), "{text}");
    let p = image::open(&plot).unwrap();
    assert_eq!((p.width(), p.height()), (900, 540));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    // Noisy input at sigma 15 on [0, 1] images: about 24.6 dB.
    let noisy = results[0]["noisy_psnr"].as_f64().unwrap();
    assert!((noisy - 24.6).abs() < 0.3, "{noisy}");
    let g = image::open(&grid).unwrap();
    assert_eq!((g.width(), g.height()), (8 * 130 + 2, 6 * 130 + 2));
}

#[test]
fn image_folder_training_learns_and_denoises() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 10);
    let out = tmp.path().join("run");
    let args = "--width 16 --batch 8 --max-steps 120 --lr 0.003 --sigma-min 40 --sigma-max 60 --log-every 1 \
                --device cpu --seed 3 --patience 0 --epochs 1000";
    let mut full = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    full.extend(args.split_whitespace());
    ok(&full);
    let losses: Vec<f64> = std::fs::read_to_string(out.join("steps.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 120);
    assert!(losses.iter().all(|l| l.is_finite()));
    // The loss on the fixed validation batches (same images, same noise every time) falls.
    let records = jsonl(&out.join("metrics.jsonl"));
    let val: Vec<f64> = records
        .iter()
        .map(|r| r["val_loss"].as_f64().unwrap())
        .collect();
    assert!(val.len() >= 10, "{val:?}");
    assert!(
        val[val.len() - 1] < 0.8 * val[0],
        "validation loss did not fall: {val:?}"
    );

    // The same run in mixed precision (bf16 arithmetic, f32 weights): it learns as well, and
    // its checkpoints hold f32 weights.
    let out16 = tmp.path().join("run-bf16");
    let mut full = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out16.to_str().unwrap(),
        "--dtype",
        "bf16",
    ];
    full.extend(args.split_whitespace());
    ok(&full);
    let val16: Vec<f64> = jsonl(&out16.join("metrics.jsonl"))
        .iter()
        .map(|r| r["val_loss"].as_f64().unwrap())
        .collect();
    let (last, last16) = (val[val.len() - 1], val16[val16.len() - 1]);
    eprintln!("validation loss after 120 steps: f32 {last:.5}, bf16 {last16:.5}");
    assert!(
        (last16 - last).abs() < 0.1 * last,
        "bf16 {val16:?} vs f32 {val:?}"
    );
    let bytes = std::fs::read(out16.join("best.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st
        .tensors()
        .iter()
        .all(|(_, t)| t.dtype() == safetensors::Dtype::F32));

    // Denoise a noisy smooth image of an odd size: the output beats the input.
    let (w, h) = (45usize, 37usize);
    let mut rng = 12345u64;
    let mut gauss = || {
        // Irwin-Hall approximation of a standard normal, from a small LCG.
        let mut s = 0.0;
        for _ in 0..12 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s += (rng >> 11) as f64 / (1u64 << 53) as f64;
        }
        s - 6.0
    };
    let clean = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([0, 1, 2].map(|c| smooth(7, c, y as usize, x as usize)))
    });
    let noisy = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = clean.get_pixel(x, y).0;
        image::Rgb(p.map(|v| (v as f64 + 50.0 * gauss()).clamp(0.0, 255.0).round() as u8))
    });
    let noisy_path = tmp.path().join("noisy.png");
    noisy.save(&noisy_path).unwrap();
    let den_path = tmp.path().join("den.png");
    let best = out.join("best.safetensors");
    ok(&[
        "generate",
        "--image",
        noisy_path.to_str().unwrap(),
        "--model",
        best.to_str().unwrap(),
        "--out",
        den_path.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let den = image::open(&den_path).unwrap().to_rgb8();
    assert_eq!((den.width(), den.height()), (w as u32, h as u32));
    let mse = |a: &image::RgbImage| {
        a.as_raw()
            .iter()
            .zip(clean.as_raw())
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    let (m_noisy, m_den) = (mse(&noisy), mse(&den));
    let db = |m: f64| 10.0 * (255.0f64 * 255.0 / m).log10();
    eprintln!(
        "denoised {:.2} dB vs noisy {:.2} dB",
        db(m_den),
        db(m_noisy)
    );
    assert!(
        db(m_den) > db(m_noisy) + 3.0,
        "denoised {:.2} dB vs noisy {:.2} dB",
        db(m_den),
        db(m_noisy)
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p).to_str().unwrap().to_string();

    // A data folder that does not exist, or holds nothing usable.
    let err = fails(&[
        "train",
        "--data",
        &t("nowhere"),
        "--out",
        &t("o"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("nowhere") && err.contains("missing"), "{err}");
    std::fs::create_dir_all(t("empty")).unwrap();
    let err = fails(&[
        "train",
        "--data",
        &t("empty"),
        "--out",
        &t("o"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("no CIFAR-10 binary files"), "{err}");
    // f16 training would need loss scaling: refused before any data is read.
    let err = fails(&[
        "train",
        "--dtype",
        "f16",
        "--data",
        &t("empty"),
        "--out",
        &t("o"),
    ]);
    assert!(err.contains("dtype `f16`") && err.contains("bf16"), "{err}");

    // A truncated CIFAR file: named, with the expected and the found size.
    let dir = tmp.path().join("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        std::fs::write(dir.join(format!("{name}.bin")), vec![0u8; 3073 * 10]).unwrap();
    }
    let err = fails(&[
        "train",
        "--data",
        dir.to_str().unwrap(),
        "--out",
        &t("o"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("data_batch_1.bin") && err.contains("30730000") && err.contains("30730"),
        "{err}"
    );

    // Images of different sizes, unless --crop.
    write_png(&tmp.path().join("mixed/a.png"), 0, 32, 32);
    write_png(&tmp.path().join("mixed/b.png"), 1, 40, 36);
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--out",
        &t("o"),
        "--device",
        "cpu",
        "--max-steps",
        "1",
    ]);
    assert!(err.contains("b.png") && err.contains("40x36"), "{err}");
    ok(&[
        "train",
        "--data",
        &t("mixed"),
        "--out",
        &t("o"),
        "--device",
        "cpu",
        "--max-steps",
        "1",
        "--crop",
        "--width",
        "4",
        "--batch",
        "2",
    ]);
    // Or --patch: both images cut into 16x16 patches (4 + 4), so any sizes train together.
    let text = ok(&[
        "train",
        "--data",
        &t("mixed"),
        "--out",
        &t("p"),
        "--device",
        "cpu",
        "--max-steps",
        "1",
        "--patch",
        "16",
        "--width",
        "4",
        "--batch",
        "2",
    ]);
    assert!(
        text.contains("4 train (random crops, new each epoch), 4 validation, 8 test patches"),
        "{text}"
    );
    // Patches larger than an image, or of a size the network cannot take; bad flags.
    let (mixed, p2) = (t("mixed"), t("p2"));
    for (flags, says) in [
        (
            &["--patch", "34"][..],
            "a.png: image is 32x32, smaller than the 34x34 patches",
        ),
        (
            &["--patch", "18"][..],
            "18x18: cond-unet needs sides that are multiples of 4",
        ),
        (
            &["--patch", "8", "--arch", "seed-unet"][..],
            "8x8: the l1-ssim loss needs at least 11x11",
        ),
        (&["--patch", "0"][..], "--patch"),
        (&["--patch", "16", "--crop"][..], "--patch"),
    ] {
        let mut args = vec!["train", "--data", &mixed, "--out", &p2, "--device", "cpu"];
        args.extend(flags);
        let err = fails(&args);
        assert!(err.contains(says), "{flags:?}: {err}");
    }
    // A run refused after its folder was made leaves no folder behind.
    assert!(!tmp.path().join("p2").exists(), "p2 left behind");

    // Bad flags and config files.
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--arch",
        "transformer",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("unknown architecture `transformer`"), "{err}");
    std::fs::write(t("bad.toml"), "lr = \"fast\"\n").unwrap();
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--config",
        &t("bad.toml"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("bad.toml"), "{err}");
    std::fs::write(t("unknown.toml"), "learning_rate = 0.1\n").unwrap();
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--config",
        &t("unknown.toml"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("learning_rate"), "{err}");

    // Test images too small for SSIM.
    let tiny = tmp.path().join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    write_png(&tiny.join("a.png"), 0, 8, 8);
    let err = fails(&[
        "eval",
        "--model",
        &t("o/last.safetensors"),
        "--data",
        &t("tiny"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("tiny") && err.contains("8x8 pixels; SSIM needs images of at least 11x11"),
        "{err}"
    );

    // Checkpoints: missing, not safetensors, cut short.
    let err = fails(&[
        "eval",
        "--model",
        &t("none.safetensors"),
        "--data",
        &t("mixed"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("none.safetensors"), "{err}");
    std::fs::write(t("junk.safetensors"), b"junk").unwrap();
    let err = fails(&[
        "generate",
        "--model",
        &t("junk.safetensors"),
        "--image",
        &t("mixed/a.png"),
        "--out",
        &t("x.png"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("junk.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );
    let last = std::fs::read(tmp.path().join("o/last.safetensors")).unwrap();
    std::fs::write(t("cut.safetensors"), &last[..last.len() / 2]).unwrap();
    let err = fails(&[
        "generate",
        "--model",
        &t("cut.safetensors"),
        "--image",
        &t("mixed/a.png"),
        "--out",
        &t("x.png"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("cut.safetensors"), "{err}");
    assert!(
        !tmp.path().join("x.png").exists(),
        "no output after a failure"
    );
    for (file, says) in [
        ("junk.safetensors", "not a safetensors file"),
        ("cut.safetensors", "cut.safetensors"),
        ("none.safetensors", "No such file"),
    ] {
        let err = fails(&["info", &t(file)]);
        assert!(err.contains(file) && err.contains(says), "{err}");
    }
    let err = fails(&["info", &t("empty")]);
    assert!(err.contains("a folder without last.safetensors"), "{err}");

    // Outputs that would replace their inputs: refused, the inputs untouched.
    let last = t("o/last.safetensors");
    let before = std::fs::read(&last).unwrap();
    let err = fails(&[
        "export",
        "--model",
        &last,
        "--out",
        &t("o/../o/last.safetensors"),
    ]);
    assert!(err.contains("is the --model itself"), "{err}");
    let err = fails(&["eval", "--model", &last, "--json", &last, "--device", "cpu"]);
    assert!(err.contains("is the --model itself"), "{err}");
    let png = t("mixed/a.png");
    let noisy = std::fs::read(&png).unwrap();
    for (image, out) in [(png.as_str(), png.clone()), (&t("mixed"), t("mixed/."))] {
        let err = fails(&[
            "generate", "--image", image, "--out", &out, "--device", "cpu",
        ]);
        assert!(err.contains("is the --image itself"), "{err}");
    }
    assert_eq!(std::fs::read(&last).unwrap(), before);
    assert_eq!(std::fs::read(&png).unwrap(), noisy);

    // Not an image, and an output name with no image extension.
    std::fs::write(t("text.png"), b"hello").unwrap();
    let model = t("o/best.safetensors");
    let err = fails(&[
        "generate",
        "--model",
        &model,
        "--image",
        &t("text.png"),
        "--out",
        &t("x.png"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("text.png") && err.contains("cannot decode"),
        "{err}"
    );
    let err = fails(&[
        "generate",
        "--model",
        &model,
        "--image",
        &t("mixed/a.png"),
        "--out",
        &t("x.txt"),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("x.txt"), "{err}");
    assert!(!tmp.path().join("x.png").exists());

    // CUDA in a CPU-only build.
    if !cfg!(feature = "cuda") {
        let err = fails(&[
            "generate",
            "--model",
            &model,
            "--image",
            &t("mixed/a.png"),
            "--out",
            &t("x.png"),
            "--device",
            "cuda",
        ]);
        assert!(err.contains("no CUDA support"), "{err}");
    }

    // Eval flags.
    let err = fails(&[
        "eval",
        "--model",
        &model,
        "--data",
        &t("mixed"),
        "--sigmas",
        "15,-3",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--sigmas"), "{err}");
    // Outputs that cannot be written are refused before the evaluation, not after it.
    for (flag, path, says) in [
        ("--grid", t("grid.txt"), "use a .png name"),
        ("--json", t("text.png/eval.json"), "cannot make its folder"),
        ("--json", t("mixed"), "a folder, expected a file name"),
    ] {
        let err = fails(&[
            "eval",
            "--model",
            &model,
            "--data",
            &t("mixed"),
            flag,
            &path,
            "--device",
            "cpu",
        ]);
        assert!(err.contains(flag) && err.contains(says), "{err}");
    }
    // A file where the run's folder should be; a validation set of no images.
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--out",
        &t("text.png"),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("--out") && err.contains("found a file"),
        "{err}"
    );
    let err = fails(&[
        "train",
        "--data",
        &t("mixed"),
        "--out",
        &t("o2"),
        "--val-limit",
        "0",
    ]);
    assert!(err.contains("val_limit must be at least 1"), "{err}");
}

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

/// The file `models/<name>`, which must be there and hold at most `max_bytes`.
fn shipped_model(name: &str, max_bytes: u64) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("models/{name}: {e}"))
        .len();
    assert!(size <= max_bytes, "models/{name}: {size} bytes");
    path
}

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

/// `train --print-config` prints the configuration the flags give, as a file `--config` reads
/// back to the same configuration; nothing is trained or written.
#[test]
fn print_config_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let text = ok(&[
        "train",
        "--print-config",
        "--out",
        o,
        "--lr",
        "5e-4",
        "--arch",
        "seed-unet",
    ]);
    assert!(
        text.contains("lr = 0.0005") && text.contains("arch = \"seed-unet\""),
        "{text}"
    );
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, &text).unwrap();
    let again = ok(&[
        "train",
        "--print-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert_eq!(again, text);
    assert!(!out.exists());
}

/// With no --data and no network, training stops with a message that says where to put the
/// files, and leaves no partial download behind.
#[test]
fn offline_download_says_where_to_put_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_denoise"))
        .args([
            "train",
            "--out",
            tmp.path().join("o").to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .env("XDG_CACHE_HOME", tmp.path().join("cache"))
        .env("HOME", tmp.path())
        // Port 9 (discard) on loopback: refused at once, like an offline machine.
        .env(
            "DENOISE_CIFAR10_URL",
            "http://127.0.0.1:9/cifar-10-binary.tar.gz",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cifar-10-batches-bin") && err.contains("--data"),
        "{err}"
    );
    let cache = tmp.path().join("cache/denoise/cifar10");
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// `bench` on a tiny network: throughput, and a training step's time phase by phase, printed
/// and saved; bad sizes refused.
#[test]
fn bench_reports_throughput_and_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let j = json.to_str().unwrap();
    let text = ok(&[
        "bench",
        "--arch",
        "cond-unet",
        "--width",
        "8",
        "--batch",
        "2",
        "--infer-batch",
        "2",
        "--size",
        "16",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--json",
        j,
    ]);
    assert!(
        text.contains("img/s") && text.contains("phase by phase"),
        "{text}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        (r["arch"].as_str(), r["train_batch"].as_u64()),
        (Some("cond-unet"), Some(2))
    );
    assert!(
        r["train_img_per_s"]["median"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let p = &r["train_phases_ms"];
    let ms: Vec<f64> = ["forward_ms", "loss_ms", "backward_ms", "optimizer_ms"]
        .iter()
        .map(|k| p[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}")))
        .collect();
    assert!(ms.iter().all(|&v| v > 0.0), "{r}");
    let err = fails(&["bench", "--size", "12", "--device", "cpu"]);
    assert!(err.contains("--size"), "{err}");
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
    assert_eq!(
        train["config"]["init_from"],
        "models/cond-unet-cifar10.safetensors"
    );
    let text = ok(&["info", path.to_str().unwrap()]);
    assert!(text.contains("| 25 | true sigma |"), "{text}");

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
