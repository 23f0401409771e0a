//! `denoise estimate`: the noise level of images, as `generate` estimates it (no model).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::images::{self, images_of};
use crate::output::{is_same_file, report, some_failed, write_json};

#[derive(Args)]
pub struct EstimateArgs {
    /// An image (PNG, JPEG, TIFF, WebP or BMP), or a folder of them.
    #[arg(long)]
    pub image: PathBuf,
    /// Also write the estimates as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: EstimateArgs) -> Result<()> {
    use denoise_data::estimate::{estimate_sigma_from, Basis};
    let files = images_of(&a.image)?;
    if let Some(path) = &a.json {
        if let Some(f) = files.iter().find(|f| is_same_file(f, path)) {
            bail!(
                "--json {} is the image {} itself: the estimates would replace it",
                path.display(),
                f.display()
            );
        }
    }
    println!("| image | size | noise sigma | from |");
    println!("|:---|:---|---:|:---|");
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    for f in &files {
        match images::read(f) {
            Ok(pic) => {
                let (sigma, basis) = estimate_sigma_from(&pic.rgb, (3, pic.h, pic.w));
                let from = match basis {
                    _ if pic.h.min(pic.w) < denoise_data::estimate::MIN_SIDE => "too small",
                    _ if denoise_model::tiles::is_gray(&pic.rgb, 3) => "gray",
                    Basis::Channels => "colour channels",
                    Basis::Luma => "brightness (colours subsampled)",
                };
                println!(
                    "| {} | {} | {:.2} | {from} |",
                    f.display(),
                    pic.describe(),
                    sigma * 255.0
                );
                rows.push(serde_json::json!({
                    "image": f.display().to_string(),
                    "width": pic.w,
                    "height": pic.h,
                    "sigma": sigma * 255.0,
                    "from": from,
                }));
            }
            Err(e) => {
                eprintln!("error: {}", report(&e));
                failed.push(f.display().to_string());
            }
        }
    }
    if let Some(path) = &a.json {
        write_json(
            path,
            &serde_json::json!({ "sigma_units": "0..255", "images": rows }),
        )?;
    }
    some_failed(&failed, files.len())?;
    Ok(())
}
