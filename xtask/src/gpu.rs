//! `cargo xtask gpu-bundle`: a CUDA build of `denoise` made on a machine without a GPU, and a
//! folder to carry to one.
//!
//! 1. CUDA 13.0 from PyPI wheels (nvcc, runtime, cuBLAS, cuRAND, NVRTC, CCCL, NVVM, cuDNN 9) in a
//!    venv under the cache folder (once; again when the list of wheels changes).
//! 2. A CUDA_HOME laid out from the wheels: `bin`, `include`, `nvvm`, and `lib64` with the
//!    unversioned names the linker wants; plus `stubs/libcuda.so`, a stub of the driver built
//!    from cudarc's list of driver functions, used only to link (it never leaves this machine).
//! 3. `cargo build --release -p denoise-cli` for sm_90 into `target/cuda`, twice: with `--features
//!    cuda` (candle's convolutions) and with `--features cudnn` (all conv passes through cuDNN).
//! 4. `target/gpu-bundle/`: both binaries (stripped, gzipped), `gpu-check.sh`, the PyTorch
//!    benchmark and a few MB of CIFAR-10 images (`--data`, an image folder such as the extracted
//!    JPEG copy).

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
    // The oldest cuDNN 9 for CUDA 13: linking against it keeps the binary to symbols that every
    // later cuDNN 9 (PyTorch's, on the GPU machine) has.
    "nvidia-cudnn-cu13==9.13.0.50",
];

/// The two builds in the bundle: (file name, cargo features).
const BUILDS: &[(&str, &str)] = &[("denoise", "cuda"), ("denoise-cudnn", "cudnn")];

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
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(WHEELS.join("\n").as_str()) {
        eprintln!("xtask: installing CUDA 13.0 wheels into {}", venv.display());
        std::fs::create_dir_all(cache)?;
        if !venv.join("bin/pip").exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--no-cache-dir"])
            .args(WHEELS))?;
        std::fs::write(&marker, WHEELS.join("\n"))?;
    }
    let nvidia = std::fs::read_dir(venv.join("lib"))?
        .flatten()
        .map(|e| e.path().join("site-packages/nvidia"))
        .find(|p| p.join("cu13").exists() && p.join("cudnn").exists())
        .context("the nvidia wheels did not create site-packages/nvidia/{cu13,cudnn}")?;
    Ok(nvidia)
}

/// The driver functions that cudarc (the version the CUDA build resolves to) may load: read from
/// its sources, which `cargo metadata` downloads when they are not yet in the registry (a fresh
/// machine has never built with `cuda`).
fn cudarc_driver_functions() -> Result<Vec<String>> {
    let out = crate::cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--features",
            "denoise-cli/cuda",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata --features denoise-cli/cuda failed ({})",
            out.status
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading cargo metadata's JSON")?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cargo metadata lists no cudarc package with --features denoise-cli/cuda")?;
    let sys = Path::new(manifest)
        .parent()
        .context("cudarc's manifest path has no folder")?
        .join("src/driver/sys/mod.rs");
    let src = std::fs::read_to_string(&sys)
        .with_context(|| format!("reading cudarc's driver bindings {}", sys.display()))?;
    let mut names: Vec<String> = src
        .lines()
        .filter_map(|l| l.strip_prefix("pub unsafe fn cu"))
        .map(|rest| format!("cu{}", rest.split('(').next().unwrap_or("")))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!(
            "{} declares no `pub unsafe fn cu...`: cudarc's layout changed",
            sys.display()
        );
    }
    Ok(names)
}

fn cuda_home(cache: &Path, nvidia: &Path) -> Result<PathBuf> {
    let cu13 = nvidia.join("cu13");
    let home = cache.join("cuda-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join("lib64"))?;
    std::fs::create_dir_all(home.join("stubs"))?;
    for d in ["bin", "include", "nvvm"] {
        std::os::unix::fs::symlink(cu13.join(d), home.join(d))?;
    }
    let libs =
        std::fs::read_dir(cu13.join("lib"))?.chain(std::fs::read_dir(nvidia.join("cudnn/lib"))?);
    for f in libs.flatten() {
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
        let nvidia = toolkit(&cache)?;
        let home = cuda_home(&cache, &nvidia)?;
        let lib64 = home.join("lib64");
        let stubs = home.join("stubs");
        let path = format!(
            "{}:{}",
            home.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        for (name, features) in BUILDS {
            eprintln!(
                "xtask: building {name} (--features {features}) for sm_90 \
                 (the first build compiles candle's kernels: long)"
            );
            run(crate::cargo()
                .args(["build", "--release", "--package", "denoise-cli"])
                .args(["--bin", "denoise", "--features", features])
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
                .env("PATH", &path)
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
            // Both builds write target/cuda/release/denoise: keep each under its own name.
            std::fs::copy(&bin, target.join(name))?;
        }
        eprintln!(
            "xtask: CUDA builds took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let bundle = root.join("target/gpu-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle)?;
    for (name, _) in BUILDS {
        let built = target.join(name);
        if !built.exists() {
            bail!(
                "{} does not exist: run without --skip-build",
                built.display()
            );
        }
        // Stripped and gzipped: the embedded PTX is text and compresses about 4x.
        let stripped = target.join(format!("{name}.stripped"));
        std::fs::copy(&built, &stripped)?;
        let _ = Command::new("strip").arg(&stripped).status();
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(bundle.join(format!("{name}.gz")))?,
            flate2::Compression::default(),
        );
        std::io::copy(&mut std::fs::File::open(&stripped)?, &mut gz)?;
        gz.finish()?;
    }
    let (n_train, n_test) = lay_out(
        root,
        &bundle,
        &data,
        (500, 100),
        "sm_90, CUDA 13.0 wheels; denoise: features cuda; \
         denoise-cudnn: features cudnn (cuDNN 9.13 at link time)",
    )?;
    let size = dir_size(&bundle)?;
    println!(
        "gpu bundle: {} ({:.1} MiB: two binaries, gpu-check.sh, unet_bench.py, {n_train} train and {n_test} test images)",
        bundle.display(),
        size as f64 / (1 << 20) as f64
    );
    if size > 64 << 20 {
        bail!("the bundle is over 64 MiB");
    }
    println!("on the GPU machine: bash gpu-check.sh   (results in results/gpu-check.json)");
    Ok(())
}

/// The rest of a bundle folder: `gpu-check.sh`, the PyTorch benchmark, `build-info.txt` and a
/// subset of the image folder `data` (`per_class` train and test images per class); the numbers
/// of train and test images copied.
fn lay_out(
    root: &Path,
    bundle: &Path,
    data: &Path,
    (train, test): (usize, usize),
    build: &str,
) -> Result<(usize, usize)> {
    std::fs::copy(
        root.join("xtask/gpu/gpu-check.sh"),
        bundle.join("gpu-check.sh"),
    )?;
    std::fs::copy(
        root.join("xtask/torch/unet_bench.py"),
        bundle.join("unet_bench.py"),
    )?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    std::fs::write(
        bundle.join("build-info.txt"),
        format!("denoise {commit}, {build}\n"),
    )?;
    Ok((
        copy_subset(data, &bundle.join("data"), "train", train)?,
        copy_subset(data, &bundle.join("data"), "test", test)?,
    ))
}

/// `cargo xtask gpu-dry-run [--data DIR] [--python PATH]`: `gpu-check.sh` end to end on the CPU,
/// to check the script (and the summary it writes) before a GPU's scarce minutes go into it. The
/// CPU release build stands in for both binaries; a few steps, a small eval, one-step
/// benchmarks. Fails when any step of the script failed.
pub fn gpu_dry_run(root: &Path, args: &[String]) -> Result<()> {
    let mut data = root.join("../data/cifar10-jpeg");
    let mut python: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = PathBuf::from(it.next().context("--data needs a folder")?),
            "--python" => python = Some(PathBuf::from(it.next().context("--python needs a path")?)),
            other => {
                bail!("gpu-dry-run: unknown argument {other} (expected --data DIR, --python PATH)")
            }
        }
    }
    if !data.join("train").is_dir() || !data.join("test").is_dir() {
        bail!(
            "gpu-dry-run --data {}: expected an image folder with train/ and test/ class folders",
            data.display()
        );
    }
    let bin = crate::build_denoise()?;
    let dir = root.join("target/gpu-dry-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for name in BUILDS.iter().map(|(n, _)| n) {
        std::fs::copy(&bin, dir.join(name))?;
    }
    lay_out(
        root,
        &dir,
        &data,
        (20, 10),
        "CPU build standing in for both (dry run)",
    )?;
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(bin_dir) = python.as_ref().and_then(|p| p.parent()) {
        // The script calls `python3`: the given interpreter's folder (a venv's `bin/`) first.
        if !bin_dir.join("python3").exists() {
            bail!("--python: {} has no python3 beside it", bin_dir.display());
        }
        path = format!("{}:{path}", bin_dir.display());
    }
    let started = std::time::Instant::now();
    let status = Command::new("bash")
        .arg("gpu-check.sh")
        .current_dir(&dir)
        .env("DEVICE", "cpu")
        .env("STEPS", "4")
        .env("BENCH_STEPS", "1")
        .env("EVAL_LIMIT", "20")
        // PyTorch's CPU autocast to bf16 runs at about 2 images/s here.
        .env("BF16_BATCH", "4")
        .env("BF16_TRAIN_BATCH", "4")
        .env("PATH", path)
        .status()
        .context("running bash gpu-check.sh")?;
    let summary = std::fs::read_to_string(dir.join("results/gpu-check.json"))
        .context("gpu-check.sh wrote no results/gpu-check.json")?;
    let summary: serde_json::Value = serde_json::from_str(&summary)?;
    let failed: Vec<String> = summary["status"]
        .as_object()
        .context("gpu-check.json has no status")?
        .iter()
        .filter(|(k, v)| {
            let v = v.as_str().unwrap_or("");
            !(v == "0" || v == "ok" || k.as_str() == "trained-with")
        })
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    println!(
        "gpu-check.sh dry run: {status}, {:.0} s, {} steps failed{}",
        started.elapsed().as_secs_f64(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    if !status.success() || !failed.is_empty() {
        bail!(
            "the dry run of gpu-check.sh failed (logs in {}/results)",
            dir.display()
        );
    }
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
