//! What the commands share about their outputs: refusing an output that would replace an
//! input, writing JSON atomically, progress bars and counted words.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::images;

pub fn is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Fails before a long run, not after it, on an output file that cannot be written: a
/// folder's name, or a folder that cannot be made (it is made here).
pub fn prepare_output(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: a folder, expected a file name", path.display());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "{flag} {}: cannot make its folder {}",
                path.display(),
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Refuses a grid's file name that is not `.png` (grids are written as PNG only).
pub fn require_png(flag: &str, path: &Path) -> Result<()> {
    if images::format_of(path).ok() != Some(image::ImageFormat::Png) {
        bail!(
            "{flag} {}: the grid is written as PNG: use a .png name",
            path.display()
        );
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    // The error names the file.
    denoise_model::checkpoint::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())?;
    Ok(())
}

/// Refuses a `--json` output that is the model file itself.
pub fn refuse_same_json(json: &Path, model_file: &Path) -> Result<()> {
    if is_same_file(json, model_file) {
        bail!(
            "--json {} is the --model itself: the results would replace the checkpoint",
            json.display()
        );
    }
    Ok(())
}

/// Whether two paths name one existing file or folder (through links and `..`).
pub fn is_same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub fn progress_bar(show: bool, unit: &str) -> indicatif::ProgressBar {
    let bar = if show {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// An error naming the `failed` files of `total`, if any (each was reported as it failed).
pub fn some_failed(failed: &[String], total: usize) -> Result<()> {
    if !failed.is_empty() {
        bail!(
            "{} of {total} images failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// `n` and the word, in the plural unless `n` is 1.
pub fn count_of(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The error and its causes on one line, as anyhow's `{:#}`, but without a cause whose text
/// the message above it already quotes (our library errors, and the image crate's, print
/// their source in their own message).
pub fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
