//! What the end-to-end tests share: running the binary, and the data they write (a
//! CIFAR-format dataset and folders of PNG images of smooth synthetic pictures).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn denoise(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_denoise"))
        .args(args)
        .env("DENOISE_LOG", "info")
        .output()
        .expect("run denoise");
    out
}

pub fn ok(args: &[&str]) -> String {
    let out = denoise(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "denoise {args:?} failed:\n{text}");
    text
}

/// Runs `denoise args` under bash's `ulimit LIMIT` (`-f KIB`: a file-size limit; `-v KIB`: an
/// address-space limit).
pub fn under_ulimit(limit: &str, args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit {limit}; exec '{}' {}",
            env!("CARGO_BIN_EXE_denoise"),
            quoted.join(" ")
        ))
        .output()
        .expect("run denoise under bash")
}

/// Runs a command that must fail; returns its stderr.
pub fn fails(args: &[&str]) -> String {
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
pub fn smooth(k: usize, c: usize, y: usize, x: usize) -> u8 {
    let (k, c, y, x) = (k as f64, c as f64, y as f64, x as f64);
    let v = 128.0
        + 60.0 * ((x + 3.0 * k) / 6.0 + c).sin()
        + 50.0 * ((y * (1.0 + 0.1 * k)) / 7.0 - c * 0.5).cos();
    v.clamp(0.0, 255.0) as u8
}

pub fn write_png(path: &Path, k: usize, w: usize, h: usize) {
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        image::Rgb([0, 1, 2].map(|c| smooth(k, c, y as usize, x as usize)))
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `train/` and `test/` with two class folders of smooth 32x32 images.
pub fn image_folder(root: &Path, per_class: usize) -> PathBuf {
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
pub fn cifar_binary(root: &Path) -> PathBuf {
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
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn metadata(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().clone().unwrap();
    serde_json::from_str(&m["denoise.train"]).unwrap()
}

pub fn weights(path: &Path) -> Vec<(String, Vec<u8>)> {
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

/// The file `models/<name>`, which must be there and hold at most `max_bytes`.
pub fn shipped_model(name: &str, max_bytes: u64) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("models/{name}: {e}"))
        .len();
    assert!(size <= max_bytes, "models/{name}: {size} bytes");
    path
}
