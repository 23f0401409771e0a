//! `cargo xtask bench`: training and inference throughput of `denoise`, and with
//! `--compare-torch` of the identical PyTorch network on the same threads, alternating the two.
//! Before it times cond-unet against its PyTorch twin, it checks that they are the same
//! network: the twin loads the shipped checkpoint and must denoise a test image as `denoise
//! generate` does (`unet_bench.py --twin-check`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

struct Opts {
    arches: Vec<String>,
    repeats: usize,
    steps: usize,
    compare: bool,
    json: Option<PathBuf>,
    python: String,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        arches: vec![],
        repeats: 5,
        steps: 3,
        compare: false,
        json: None,
        python: std::env::var("DENOISE_PYTHON").unwrap_or_else(|_| "python3".into()),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--arch" => o.arches.push(val("--arch")?),
            "--repeats" => o.repeats = val("--repeats")?.parse().context("--repeats: expected a number")?,
            "--steps" => o.steps = val("--steps")?.parse().context("--steps: expected a number")?,
            "--json" => o.json = Some(PathBuf::from(val("--json")?)),
            "--python" => o.python = val("--python")?,
            "--compare-torch" => o.compare = true,
            other => bail!("bench: unknown argument {other} (expected --arch A, --repeats N, --steps N, --compare-torch, --json FILE, --python PY)"),
        }
    }
    if o.arches.is_empty() {
        o.arches = vec!["seed-unet".into(), "cond-unet".into()];
    }
    if o.repeats == 0 || o.steps == 0 {
        bail!("--repeats and --steps must be at least 1");
    }
    Ok(o)
}

fn json_of(out: std::process::Output, what: &str) -> Result<serde_json::Value> {
    if !out.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what}: no JSON in its output"))?;
    Ok(serde_json::from_str(line)?)
}

fn stats(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    serde_json::json!({"min": s[0], "median": s[s.len() / 2], "max": s[s.len() - 1]})
}

fn median(v: &serde_json::Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

/// The machine's nominal peak f32 FLOP/s: cores x clock x 32 (two 8-wide FMA units), or x 64
/// where the CPU has AVX-512 (two 16-wide units, as Zen 5 and most Xeons; Zen 4 splits them in
/// halves and peaks at the AVX2 figure). `cpu MHz` is the base clock: boost runs above it.
fn machine_peak_gflops(threads: usize) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
    };
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let avx512 = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "avx512f"));
    let per_cycle = if avx512 { 64.0 } else { 32.0 };
    Some(threads as f64 * per_cycle * mhz / 1000.0)
}

/// The runs of one network: ours and (with `--compare-torch`) PyTorch's, repeat by repeat.
#[derive(Default)]
struct Samples {
    train: Vec<f64>,
    infer: Vec<f64>,
    torch_train: Vec<f64>,
    torch_infer: Vec<f64>,
    peak_rss_mb: f64,
    threads: usize,
    forward_flops: f64,
}

/// `--compare-torch` on cond-unet: the PyTorch twin loads the shipped checkpoint and must give
/// `denoise generate`'s output.
fn twin_check(o: &Opts, root: &Path, bin: &Path, script: &Path) -> Result<serde_json::Value> {
    let out = Command::new(&o.python)
        .arg(script)
        .arg("--twin-check")
        .arg("--denoise")
        .arg(bin)
        .arg("--checkpoint")
        .arg(root.join("models/cond-unet-cifar10.safetensors"))
        .output()?;
    let check = json_of(out, "the PyTorch twin's check")?;
    println!(
        "cond-unet twin check: PyTorch's and denoise's outputs on a {}x{} test image differ by {} of {} levels at most",
        check["image"][0], check["image"][1], check["max_level_diff"], check["levels"]
    );
    Ok(check)
}

/// One `denoise bench` run of `arch` on the CPU, through the JSON it writes to `tmp`.
fn denoise_run(bin: &Path, arch: &str, steps: usize, tmp: &Path) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .args([
            "bench",
            "--arch",
            arch,
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--steps",
            &steps.to_string(),
            "--json",
        ])
        .arg(tmp)
        .output()?;
    if !out.status.success() {
        bail!(
            "denoise bench failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(tmp)?)?)
}

/// One run of the PyTorch twin of `arch` on `threads` threads.
fn torch_run(o: &Opts, script: &Path, arch: &str, threads: usize) -> Result<serde_json::Value> {
    let out = Command::new(&o.python)
        .arg(script)
        .args([
            "--arch",
            arch,
            "--device",
            "cpu",
            "--threads",
            &threads.to_string(),
            "--repeats",
            "1",
            "--steps",
            &o.steps.to_string(),
        ])
        .output()?;
    json_of(out, "the PyTorch benchmark")
}

/// The repeats of `arch`, ours then PyTorch's in turn (so that both see the same machine load).
fn measure(
    o: &Opts,
    bin: &Path,
    script: &Path,
    arch: &str,
    tmp: &Path,
    report: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Samples> {
    let mut s = Samples::default();
    for r in 0..o.repeats {
        let v = denoise_run(bin, arch, o.steps, tmp)?;
        let (a, b) = (median(&v["train_img_per_s"]), median(&v["infer_img_per_s"]));
        s.train.push(a);
        s.infer.push(b);
        s.peak_rss_mb = s.peak_rss_mb.max(v["peak_rss_mb"].as_f64().unwrap_or(0.0));
        s.threads = v["threads"].as_u64().unwrap_or(0) as usize;
        s.forward_flops = v["forward_flops_per_image"].as_f64().unwrap_or(0.0);
        eprintln!(
            "[{}/{}] {arch}: train {a:.1} img/s, inference {b:.1} img/s",
            r + 1,
            o.repeats
        );
        if o.compare {
            let t = torch_run(o, script, arch, s.threads)?;
            let (ta, tb) = (median(&t["train_img_per_s"]), median(&t["infer_img_per_s"]));
            eprintln!(
                "[{}/{}] pytorch {}: train {ta:.1} img/s, inference {tb:.1} img/s",
                r + 1,
                o.repeats,
                t["version"]
            );
            s.torch_train.push(ta);
            s.torch_infer.push(tb);
            report.insert("pytorch_version".into(), t["version"].clone());
        }
    }
    Ok(s)
}

/// The report entry of one network, printed as it is made.
fn summarize(arch: &str, s: &Samples) -> serde_json::Value {
    let (rss, threads, flops) = (s.peak_rss_mb, s.threads, s.forward_flops);
    let peak = machine_peak_gflops(threads);
    let train_gflops = s.train.iter().cloned().fold(f64::NAN, f64::max) * 3.0 * flops / 1e9;
    let mut entry = serde_json::json!({
        "train_img_per_s": stats(&s.train),
        "infer_img_per_s": stats(&s.infer),
        "peak_rss_mb": rss,
        "threads": threads,
        "train_flops_per_image": 3.0 * flops,
        "machine_peak_gflops": peak,
        "train_peak_share": peak.map(|p| stats(&s.train)["median"].as_f64().unwrap() * 3.0 * flops / 1e9 / p),
        "infer_peak_share": peak.map(|p| stats(&s.infer)["median"].as_f64().unwrap() * flops / 1e9 / p),
    });
    println!(
        "{arch}: train {:.1} img/s (min {:.1}, max {:.1}, best {:.1} GFLOP/s), inference {:.1} img/s (min {:.1}, max {:.1}), {threads} threads, peak RSS {rss:.0} MB{}",
        median(&entry["train_img_per_s"]),
        entry["train_img_per_s"]["min"].as_f64().unwrap(),
        entry["train_img_per_s"]["max"].as_f64().unwrap(),
        train_gflops,
        median(&entry["infer_img_per_s"]),
        entry["infer_img_per_s"]["min"].as_f64().unwrap(),
        entry["infer_img_per_s"]["max"].as_f64().unwrap(),
        peak.map_or(String::new(), |p| format!(", {:.0} % of the machine's {p:.0} GFLOP/s nominal peak in training (direct-convolution FLOPs: Winograd layers do fewer)", 100.0 * median(&entry["train_img_per_s"]) * 3.0 * flops / 1e9 / p)),
    );
    if !s.torch_train.is_empty() {
        let ratio = |ours: &[f64], theirs: &[f64]| -> Vec<f64> {
            ours.iter().zip(theirs).map(|(a, b)| a / b).collect()
        };
        entry["pytorch"] = serde_json::json!({"train_img_per_s": stats(&s.torch_train), "infer_img_per_s": stats(&s.torch_infer)});
        entry["ratio_vs_pytorch"] = serde_json::json!({
            "train": stats(&ratio(&s.train, &s.torch_train)),
            "infer": stats(&ratio(&s.infer, &s.torch_infer)),
        });
        println!(
            "pytorch (same network, {threads} threads): train {:.1} img/s, inference {:.1} img/s\nratio ours / pytorch: train {:.2}x (min {:.2}, max {:.2}), inference {:.2}x (min {:.2}, max {:.2})",
            median(&entry["pytorch"]["train_img_per_s"]),
            median(&entry["pytorch"]["infer_img_per_s"]),
            median(&entry["ratio_vs_pytorch"]["train"]),
            entry["ratio_vs_pytorch"]["train"]["min"].as_f64().unwrap(),
            entry["ratio_vs_pytorch"]["train"]["max"].as_f64().unwrap(),
            median(&entry["ratio_vs_pytorch"]["infer"]),
            entry["ratio_vs_pytorch"]["infer"]["min"].as_f64().unwrap(),
            entry["ratio_vs_pytorch"]["infer"]["max"].as_f64().unwrap(),
        );
    }
    entry
}

pub fn bench(root: &Path, bin: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let script = root.join("xtask/torch/unet_bench.py");
    if o.compare {
        let ok = Command::new(&o.python)
            .args(["-c", "import torch"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("--compare-torch: `{} -c 'import torch'` failed: install PyTorch (pip install torch) or pass --python", o.python);
        }
    }
    let tmp = std::env::temp_dir().join(format!("denoise-bench-{}.json", std::process::id()));
    let mut report = serde_json::Map::new();
    for arch in &o.arches {
        if o.compare && arch == "cond-unet" {
            let check = twin_check(&o, root, bin, &script)?;
            report.insert("cond_unet_twin_check".into(), check);
        }
        let samples = measure(&o, bin, &script, arch, &tmp, &mut report)?;
        report.insert(arch.clone(), summarize(arch, &samples));
    }
    let _ = std::fs::remove_file(&tmp);
    if let Some(path) = &o.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
