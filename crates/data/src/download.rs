//! Fetching the official CIFAR-10 binary release: download with a progress bar into a temporary
//! file, check its md5, extract into a temporary folder, rename into place. Nothing half-written
//! is ever left under the final names.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::cifar::{self, BIN_DIR};
use crate::{io_err, DataError, Result};

/// Where the official binary release is downloaded from.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The archive's MD5, as published on the CIFAR-10 page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The archive's file name in the data folder.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// What to tell a user whose machine cannot download the archive.
pub fn offline_help(dir: &Path) -> String {
    format!(
        "To train without network access, either download {CIFAR10_URL} (md5 {CIFAR10_MD5}) \
         elsewhere and extract it so that {}/data_batch_1.bin exists (or put the archive itself at {} \
         and run again), or pass --data with a folder that holds the CIFAR-10 binary files or \
         images (for example the JPEG copy of CIFAR-10, extracted).",
        dir.join(BIN_DIR).display(),
        dir.join(ARCHIVE_NAME).display()
    )
}

/// Makes sure `dir/cifar-10-batches-bin` holds the complete binary release, downloading and
/// extracting it when it does not. Returns the folder with the batch files.
pub fn ensure_cifar10(dir: &Path, progress: bool) -> Result<PathBuf> {
    let bin = dir.join(BIN_DIR);
    if cifar::is_complete(&bin) {
        return Ok(bin);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let archive = dir.join(ARCHIVE_NAME);
    if !archive.exists() {
        let url = std::env::var("DENOISE_CIFAR10_URL").unwrap_or_else(|_| CIFAR10_URL.to_string());
        download(&url, &archive, progress).map_err(|reason| DataError::Download {
            url: url.clone(),
            reason,
            help: offline_help(dir),
        })?;
    }
    install_archive(&archive, dir, CIFAR10_MD5)?;
    let _ = std::fs::remove_file(&archive);
    Ok(bin)
}

/// Downloads `url` to `dest` through `dest.part`, renamed only once complete.
fn download(url: &str, dest: &Path, progress: bool) -> std::result::Result<(), String> {
    let part = dest.with_extension("gz.part");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let result = (|| {
        let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bar = if progress {
            indicatif::ProgressBar::new(total.unwrap_or(170_052_171))
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "downloading CIFAR-10 {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        let mut reader = resp.body_mut().as_reader();
        let mut file =
            std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", part.display()))?;
            bar.inc(n as u64);
        }
        file.sync_all().map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        std::fs::rename(&part, dest).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// The md5 of a file, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `archive` against `md5` and extracts its `cifar-10-batches-bin` folder into `dir`
/// (through a temporary folder, renamed into place).
pub fn install_archive(archive: &Path, dir: &Path, md5: &str) -> Result<PathBuf> {
    let found = md5_file(archive)?;
    if found != md5 {
        return Err(DataError::Checksum {
            path: archive.to_path_buf(),
            expected: md5.into(),
            found,
        });
    }
    let tmp = dir.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        tar::Archive::new(flate2::read::GzDecoder::new(f))
            .unpack(&tmp)
            .map_err(io_err(archive))?;
        let extracted = tmp.join(BIN_DIR);
        if !cifar::is_complete(&extracted) {
            return Err(DataError::Invalid(format!(
                "{}: the archive does not hold a complete {BIN_DIR} folder",
                archive.display()
            )));
        }
        let bin = dir.join(BIN_DIR);
        let _ = std::fs::remove_dir_all(&bin);
        std::fs::rename(&extracted, &bin).map_err(io_err(&bin))?;
        Ok(bin)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
