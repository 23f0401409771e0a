//! `train` end to end: CIFAR-10 binaries and image folders, resume, eval, configs, the
//! offline download message.

use std::process::Command;

use crate::common::*;

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
