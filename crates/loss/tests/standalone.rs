//! `denoise-loss` can be imported on its own: a throw-away project outside the workspace that
//! depends on it alone (by path, as it would from crates.io) builds and computes SSIM and PSNR,
//! and nothing else of the workspace is compiled for it.

use std::path::Path;
use std::process::Command;

#[test]
fn a_project_outside_the_workspace_uses_the_loss_crate_alone() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = crate_dir.parent().and_then(Path::parent).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("ssim-user");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"ssim-user\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\ndenoise-loss = {{ path = {:?} }}\ncandle-core = \"0.11.1\"\n\n\
             [workspace]\n",
            crate_dir.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        r#"use candle_core::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let clean = Tensor::arange(0f32, 3.0 * 32.0 * 32.0, &dev)?
        .reshape((1, 3, 32, 32))?
        .affine(1.0 / 3072.0, 0.0)?;
    let noisy = (&clean + Tensor::randn(0f32, 0.05, (1, 3, 32, 32), &dev)?)?;
    let ssim = denoise_loss::Ssim::default();
    let same = ssim.per_image(&clean, &clean)?.to_vec1::<f32>()?[0];
    let worse = ssim.per_image(&noisy, &clean)?.to_vec1::<f32>()?[0];
    let db = denoise_loss::psnr(&noisy, &clean, 1.0)?.to_vec1::<f32>()?[0];
    println!("ssim same {same:.4} noisy {worse:.4} psnr {db:.1}");
    assert!((same - 1.0).abs() < 1e-4 && worse < same && db > 20.0 && db < 32.0);
    Ok(())
}
"#,
    )
    .unwrap();
    // The workspace's lock file, so that the same versions (already downloaded) are used.
    std::fs::copy(workspace.join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env_remove("RUSTFLAGS")
        .args(["run", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the throw-away project failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ssim same 1.0000"), "{stdout}");
    // Nothing of the workspace but denoise-loss was built.
    let built: Vec<String> = std::fs::read_dir(dir.path().join("target/debug/deps"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libdenoise_") || n.starts_with("denoise_"))
        .collect();
    assert!(
        !built.is_empty() && built.iter().all(|n| n.contains("denoise_loss")),
        "{built:?}"
    );
}
