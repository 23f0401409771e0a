//! `cargo xtask gpu-bundle`: a CUDA build of `denoise` made on a machine without a GPU, and a
//! folder to carry to one.
//!
//! 1. CUDA 13.0 from PyPI wheels (nvcc, runtime, cuBLAS, cuRAND, NVRTC, CCCL, NVVM) in a venv under
//!    the cache folder (once).
//! 2. A CUDA_HOME laid out from the wheels: `bin`, `include`, `nvvm`, and `lib64` with the
//!    unversioned names the linker wants; plus `stubs/libcuda.so`, a stub of the driver built
//!    from cudarc's list of driver functions, used only to link (it never leaves this machine).
//! 3. `cargo build --release -p denoise-cli --features cuda` for sm_90 into `target/cuda`.
//! 4. `target/gpu-bundle/`: the binary (stripped, gzipped), `gpu-check.sh`, the PyTorch benchmark and a few MB of
//!    CIFAR-10 images (`--data`, an image folder such as the extracted JPEG copy).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];

fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DENOISE_CUDA_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache")
        });
    home.join("denoise").join("cuda-13.0")
}

fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

fn toolkit(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let marker = cache.join(".installed");
    if !marker.exists() {
        eprintln!("xtask: installing CUDA 13.0 wheels into {}", venv.display());
        std::fs::create_dir_all(cache)?;
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--no-cache-dir"])
            .args(WHEELS))?;
        std::fs::write(&marker, WHEELS.join("\n"))?;
    }
    let cu13 = std::fs::read_dir(venv.join("lib"))?
        .flatten()
        .map(|e| e.path().join("site-packages/nvidia/cu13"))
        .find(|p| p.exists())
        .context("the nvidia wheels did not create site-packages/nvidia/cu13")?;
    Ok(cu13)
}

fn cudarc_driver_functions() -> Result<Vec<String>> {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    for reg in std::fs::read_dir(cargo_home.join("registry/src"))?.flatten() {
        for krate in std::fs::read_dir(reg.path())?.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            if name.starts_with("cudarc-") {
                let src = std::fs::read_to_string(krate.path().join("src/driver/sys/mod.rs"))?;
                let mut names: Vec<String> = src
                    .lines()
                    .filter_map(|l| l.strip_prefix("pub unsafe fn cu"))
                    .map(|rest| format!("cu{}", rest.split('(').next().unwrap_or("")))
                    .collect();
                names.sort();
                names.dedup();
                return Ok(names);
            }
        }
    }
    bail!("cudarc's sources are not in the cargo registry: run `cargo fetch` first")
}

fn cuda_home(cache: &Path, cu13: &Path) -> Result<PathBuf> {
    let home = cache.join("cuda-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join("lib64"))?;
    std::fs::create_dir_all(home.join("stubs"))?;
    for d in ["bin", "include", "nvvm"] {
        std::os::unix::fs::symlink(cu13.join(d), home.join(d))?;
    }
    for f in std::fs::read_dir(cu13.join("lib"))?.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if let Some(i) = name.find(".so") {
            std::os::unix::fs::symlink(f.path(), home.join("lib64").join(&name))?;
            let plain = home.join("lib64").join(format!("{}.so", &name[..i]));
            if !plain.exists() {
                std::os::unix::fs::symlink(f.path(), plain)?;
            }
        }
    }
    let stub_c = home.join("stubs/cuda_stub.c");
    let body: String = cudarc_driver_functions()?
        .iter()
        .map(|f| format!("void {f}(void) {{}}\n"))
        .collect();
    std::fs::write(&stub_c, body)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(home.join("stubs/libcuda.so"))
        .arg(&stub_c))?;
    Ok(home)
}

fn copy_subset(src: &Path, dst: &Path, split: &str, per_class: usize) -> Result<usize> {
    let mut n = 0;
    let mut classes: Vec<PathBuf> = std::fs::read_dir(src.join(split))
        .with_context(|| format!("{}: expected train/ and test/ class folders", src.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class)?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        let out = dst.join(split).join(class.file_name().unwrap());
        std::fs::create_dir_all(&out)?;
        for f in files.iter().take(per_class) {
            std::fs::copy(f, out.join(f.file_name().unwrap()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `cargo xtask gpu-bundle [--data DIR] [--skip-build]`
pub fn gpu_bundle(root: &Path, args: &[String]) -> Result<()> {
    let mut data = root.join("../data/cifar10-jpeg");
    let mut skip_build = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = PathBuf::from(it.next().context("--data needs a folder")?),
            "--skip-build" => skip_build = true,
            other => {
                bail!("gpu-bundle: unknown argument {other} (expected --data DIR, --skip-build)")
            }
        }
    }
    if !data.join("train").is_dir() || !data.join("test").is_dir() {
        bail!(
            "gpu-bundle --data {}: expected an image folder with train/ and test/ class folders \
             (for example the JPEG copy of CIFAR-10, extracted)",
            data.display()
        );
    }
    let target = root.join("target/cuda");
    let bin = target.join("release/denoise");
    if !skip_build {
        let started = std::time::Instant::now();
        let cache = cache_dir();
        let cu13 = toolkit(&cache)?;
        let home = cuda_home(&cache, &cu13)?;
        let lib64 = home.join("lib64");
        let stubs = home.join("stubs");
        let path = format!(
            "{}:{}",
            home.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        eprintln!("xtask: building denoise with CUDA for sm_90 (the first build compiles candle's kernels: long)");
        run(crate::cargo()
            .args([
                "build",
                "--release",
                "--package",
                "denoise-cli",
                "--bin",
                "denoise",
                "--features",
                "cuda",
            ])
            .env("CUDA_HOME", &home)
            .env("CUDA_ROOT", &home)
            .env("CUDA_PATH", &home)
            .env("CUDA_COMPUTE_CAP", "90")
            .env(
                "CUDAFORGE_THREADS",
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .to_string(),
            )
            .env("PATH", path)
            .env(
                "LIBRARY_PATH",
                format!("{}:{}", lib64.display(), stubs.display()),
            )
            .env(
                "RUSTFLAGS",
                format!(
                    "-L native={} -L native={}",
                    lib64.display(),
                    stubs.display()
                ),
            )
            .env("CARGO_TARGET_DIR", &target))?;
        eprintln!(
            "xtask: CUDA build took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    if !bin.exists() {
        bail!("{} does not exist: run without --skip-build", bin.display());
    }
    let bundle = root.join("target/gpu-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle)?;
    // Stripped and gzipped: the embedded PTX is text and compresses about 4x.
    let stripped = target.join("denoise.stripped");
    std::fs::copy(&bin, &stripped)?;
    let _ = Command::new("strip").arg(&stripped).status();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(bundle.join("denoise.gz"))?,
        flate2::Compression::default(),
    );
    std::io::copy(&mut std::fs::File::open(&stripped)?, &mut gz)?;
    gz.finish()?;
    std::fs::copy(
        root.join("xtask/gpu/gpu-check.sh"),
        bundle.join("gpu-check.sh"),
    )?;
    std::fs::copy(
        root.join("xtask/torch/seed_unet_bench.py"),
        bundle.join("seed_unet_bench.py"),
    )?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    std::fs::write(
        bundle.join("build-info.txt"),
        format!("denoise {commit}, features cuda, sm_90, CUDA 13.0 wheels\n"),
    )?;
    let n_train = copy_subset(&data, &bundle.join("data"), "train", 500)?;
    let n_test = copy_subset(&data, &bundle.join("data"), "test", 100)?;
    let size = dir_size(&bundle)?;
    println!(
        "gpu bundle: {} ({:.1} MiB: binary, gpu-check.sh, seed_unet_bench.py, {n_train} train and {n_test} test images)",
        bundle.display(),
        size as f64 / (1 << 20) as f64
    );
    if size > 64 << 20 {
        bail!("the bundle is over 64 MiB");
    }
    println!("on the GPU machine: bash gpu-check.sh   (results in results/gpu-check.json)");
    Ok(())
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(p)?.flatten() {
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}
