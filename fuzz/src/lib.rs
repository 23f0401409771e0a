//! The bodies of the fuzz targets (`fuzz_targets/*.rs`, run by `cargo fuzz run NAME`): every
//! parser of `denoise` that reads a user's bytes, called as the tool calls it. A body returns
//! normally whatever the bytes are; a panic, an abort, a time-out or running out of memory is a
//! finding. Files go through a file in a temporary folder where the tool reads files.
//!
//! - `image_decode`: an image file read as `generate` and `estimate` read it (every format,
//!   8/16-bit, alpha, EXIF / ICC; the CLI's own `images.rs`), written back as PNG and JPEG as
//!   `generate` writes it, and read as training data reads it (`denoise_data::folder::read_rgb`).
//! - `checkpoint`: a checkpoint's bytes (safetensors header, `denoise.*` metadata JSON, tensor
//!   shapes against the metadata, dtypes), then the network built from it.
//! - `cifar`: CIFAR-10 binary records.
//! - `config`: a training configuration, as TOML and as JSON.
//! - `estimate`: the noise estimators on arbitrary pixel data of any shape.

use std::path::PathBuf;

#[path = "../../crates/cli/src/images.rs"]
#[allow(dead_code)]
mod images;

/// A file in a temporary folder of this process, rewritten for each input.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("a temporary folder");
    }
    let path = DIR.with(|d| d.path().join(name));
    std::fs::write(&path, data).expect("write the input");
    path
}

/// An image file, read and written back as the tool does.
pub fn image_decode(data: &[u8]) {
    let path = scratch("input", data);
    if let Ok(pic) = images::read(&path) {
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            if images::check_writable(&pic, format).is_ok() {
                images::encode(&pic.rgb, &pic, format, 90).expect("a read image encodes");
            }
        }
    }
    let _ = denoise_data::folder::read_rgb(&path, None, false);
}

/// A checkpoint file, loaded, described and built into its network.
pub fn checkpoint(data: &[u8]) {
    let Ok(ckpt) = denoise_model::Checkpoint::from_bytes(data, "fuzz.safetensors") else {
        return;
    };
    let _ = ckpt.model_config();
    let _ = denoise_model::Model::from_checkpoint(&ckpt, &candle_core::Device::Cpu);
}

/// CIFAR-10 binary records (whole ones; a file of another size is refused before parsing).
pub fn cifar(data: &[u8]) {
    let _ = denoise_data::cifar::parse_records(data, std::path::Path::new("data_batch_1.bin"));
}

/// A training configuration, as TOML and as JSON.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for json in [false, true] {
        if let Ok(cfg) = denoise_trainer::TrainConfig::from_text(text, json, "fuzz") {
            let _ = cfg.model_config();
            let _ = cfg.to_toml();
        }
    }
}

/// The noise estimators on pixels from the bytes: the first byte picks the channels (1 or 3)
/// and the second the width; the rest are the values.
pub fn estimate(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let c = if data[0] % 2 == 0 { 1 } else { 3 };
    let w = usize::from(data[1]).max(1);
    let values: Vec<f32> = data[2..].iter().map(|&b| f32::from(b) / 255.0).collect();
    let h = values.len() / (c * w);
    if h == 0 {
        return;
    }
    let img = &values[..c * h * w];
    let s = denoise_data::estimate::estimate_sigma(img, (c, h, w));
    assert!(s.is_finite() && s >= 0.0, "estimate {s}");
    let (s, _) = denoise_data::estimate::estimate_sigma_from(img, (c, h, w));
    assert!(s.is_finite() && s >= 0.0, "estimate {s}");
    let s = denoise_data::estimate::estimate_sigma_mad(img, (c, h, w));
    assert!(s.is_finite() && s >= 0.0, "estimate {s}");
}

/// Seeds for each target, made here rather than stored: `cargo fuzz run NAME` starts from the
/// files that `cargo test` in this folder writes to `corpus/NAME/` (`write_seeds`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let img = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 128])
    });
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Tiff,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).expect("encode a seed");
        out.push(("image_decode", bytes.into_inner()));
    }
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(9, 7, |x, y| {
        image::Luma([(x * 7000 + y * 300) as u16])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    gray16
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode a seed");
    out.push(("image_decode", bytes.into_inner()));
    // A small cond-unet checkpoint, as `denoise export` writes it.
    let mut cfg = denoise_model::ModelConfig::from_arch("cond-unet").expect("an arch");
    cfg.set_width(8);
    let model = denoise_model::Model::new(&cfg, &candle_core::Device::Cpu, 0).expect("a model");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("m.safetensors");
    model.save(&path).expect("save a seed");
    out.push(("checkpoint", std::fs::read(&path).expect("read the seed")));
    let mut record = vec![3u8];
    record.extend((0..3072).map(|i| (i % 251) as u8));
    out.push(("cifar", record.repeat(2)));
    out.push((
        "config",
        b"arch = \"cond-unet\"\nwidth = 16\nbatch = 8\nlr = 0.0002\n".to_vec(),
    ));
    out.push((
        "config",
        br#"{"arch": "seed-unet", "epochs": 3, "noise": "poisson-gaussian"}"#.to_vec(),
    ));
    let mut pixels = vec![1u8, 32];
    pixels.extend((0..3 * 32 * 32).map(|i| ((i * 37) % 256) as u8));
    out.push(("estimate", pixels));
    out
}

#[cfg(test)]
mod tests {
    /// Every body runs on its seeds (and on a few bytes of nothing much), and the seeds are
    /// written to `corpus/NAME/` for `cargo fuzz run NAME`.
    #[test]
    fn bodies_run_on_their_seeds() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (i, (target, bytes)) in super::seeds().into_iter().enumerate() {
            let body: fn(&[u8]) = match target {
                "image_decode" => super::image_decode,
                "checkpoint" => super::checkpoint,
                "cifar" => super::cifar,
                "config" => super::config,
                "estimate" => super::estimate,
                other => panic!("no target {other}"),
            };
            body(&bytes);
            body(&bytes[..bytes.len() / 2]);
            body(b"");
            let dir = corpus.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), &bytes).unwrap();
        }
    }
}
