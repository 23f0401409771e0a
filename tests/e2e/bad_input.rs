//! Every wrong input a user can give is one clear error and a non-zero exit code.

use crate::common::*;

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

/// Files made to hurt: an image whose header claims 100000x100000 pixels (refused from the
/// header, under a 4 GiB address-space limit, before anything is allocated for it), CIFAR-10
/// records whose labels are not 0-9, and other tools' checkpoints (a PyTorch zip, a pickle).
#[test]
fn hostile_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    // A PNG header of 100000x100000 RGB pixels, with a few bytes of image data.
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let crc = crc32(&c[4..]);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    };
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]));
    png.extend(chunk(b"IEND", &[]));
    std::fs::write(t("huge.png"), &png).unwrap();
    for args in [
        vec![
            "generate",
            "--image",
            &t("huge.png"),
            "--out",
            &t("out.png"),
        ],
        vec!["estimate", "--image", &t("huge.png")],
    ] {
        let out = under_ulimit("-v 4194304", &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("huge.png") && err.contains("100000x100000") && err.contains("at most"),
            "{err}"
        );
    }
    assert!(!tmp.path().join("out.png").exists());

    // CIFAR-10 files of the right size whose second record's label is 200.
    let data = cifar_binary(tmp.path());
    let batch = data.join("cifar-10-batches-bin/data_batch_3.bin");
    let mut bytes = std::fs::read(&batch).unwrap();
    bytes[3073] = 200;
    std::fs::write(&batch, bytes).unwrap();
    let err = fails(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        &t("run"),
        "--max-steps",
        "1",
        "--width",
        "8",
    ]);
    assert!(
        err.contains("data_batch_3.bin") && err.contains("record 1") && err.contains("label 200"),
        "{err}"
    );

    // A PyTorch checkpoint (a zip archive) and an old-style pickle.
    std::fs::write(
        t("model.pth"),
        b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl",
    )
    .unwrap();
    std::fs::write(t("model.pkl"), b"\x80\x02}q\x00.").unwrap();
    for (file, says) in [("model.pth", "PyTorch"), ("model.pkl", "pickle")] {
        for args in [
            vec!["info", &t(file)],
            vec![
                "generate",
                "--random",
                "--model",
                &t(file),
                "--out",
                &t("g.png"),
            ],
        ] {
            let err = fails(&args);
            assert!(
                err.contains(file) && err.contains(says) && err.contains("safetensors"),
                "{args:?}: {err}"
            );
        }
    }
}

/// CRC-32 (PNG's, polynomial 0xEDB88320) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
