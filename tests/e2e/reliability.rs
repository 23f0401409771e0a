//! Crashes and faults: a run killed at any moment loses nothing and resumes to the weights of an
//! uninterrupted one; a full disk, a diverging loss and a killed run's lock are clear errors or
//! handled, with the last good checkpoint kept.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// A tiny, fast run that validates (and so writes `best` and `last`) after every step.
fn run_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--arch",
        "seed-unet",
        "--width",
        "8",
        "--batch",
        "4",
        "--max-steps",
        steps,
        "--val-every",
        "1",
        "--patience",
        "0",
        "--log-every",
        "1",
        "--device",
        "cpu",
    ]
}

/// Whether a checkpoint that exists loads (`denoise info` reads its header, metadata and
/// tensors' names).
fn loads(path: &Path) -> bool {
    denoise(&["info", path.to_str().unwrap()]).status.success()
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL at many moments, including during checkpoint writes (a validation and two writes
/// every step): after each kill both checkpoints that exist load, `--resume` continues, and the
/// resumed run ends with the uninterrupted run's weights. `DENOISE_KILLS=N` tries N kills
/// (default 8; `xtask/reliability/kill-test.sh` runs hundreds).
#[test]
fn killed_runs_lose_nothing_and_resume_to_the_same_weights() {
    let kills: usize = std::env::var("DENOISE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 8);
    let data = data.to_str().unwrap();
    let steps = "40";
    let reference = tmp.path().join("reference");
    ok(&run_args(data, reference.to_str().unwrap(), steps));

    let dir = tmp.path().join("killed");
    let out = dir.to_str().unwrap();
    let (mut lost, mut taken_over, mut resumed) = (0, 0, 0);
    let mut logs = Vec::new();
    for i in 0..kills {
        let mut args = run_args(data, out, steps);
        args.push("--resume");
        let mut child = Command::new(env!("CARGO_BIN_EXE_denoise"))
            .args(&args)
            .env("DENOISE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Moments spread over start-up, training and the writes (a golden-ratio sequence).
        let ms = 80 + ((i as f64 * 0.618_034).fract() * 900.0) as u64;
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        logs.push(format!("--- kill {i} after {ms} ms\n{err}"));
        assert!(!err.contains("panicked"), "{err}");
        taken_over += err.contains("is taken over") as usize;
        resumed += err.contains("resuming from") as usize;
        for f in ["last.safetensors", "best.safetensors"] {
            let p = dir.join(f);
            if p.exists() && !loads(&p) {
                lost += 1;
                eprintln!("kill {i} after {ms} ms: {f} does not load");
            }
        }
        // A run that finished before the kill: start the last stretch again.
        if dir.join("last.safetensors").exists()
            && metadata(&dir.join("last.safetensors"))["finished"] == true
        {
            break;
        }
    }
    let mut args = run_args(data, out, steps);
    args.push("--resume");
    let text = ok(&args);
    println!(
        "kills tried: {kills}, checkpoints that did not load: {lost}, runs that resumed: \
         {resumed}, killed runs' locks taken over: {taken_over}"
    );
    assert_eq!(lost, 0);
    assert!(resumed > 0 && taken_over > 0, "{text}");
    assert_eq!(
        weights(&dir.join("last.safetensors")),
        weights(&reference.join("last.safetensors")),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    let best_step = |d: &Path| metadata(&d.join("best.safetensors"))["global_step"].clone();
    if weights(&dir.join("best.safetensors")) != weights(&reference.join("best.safetensors")) {
        // Kept for a look: every killed run's log, and both folders.
        std::fs::write(tmp.path().join("kills.log"), logs.join("\n")).unwrap();
        eprintln!("kept {}", tmp.keep().display());
    }
    assert_eq!(
        weights(&dir.join("best.safetensors")),
        weights(&reference.join("best.safetensors")),
        "best: step {} after the kills, {} uninterrupted",
        best_step(&dir),
        best_step(&reference)
    );
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
}

/// A write that the disk cannot take (here a file-size limit): training stops with an error
/// that names the file and its size, the last good checkpoint is kept as it was and no
/// temporary file is left; `generate` leaves no half-written image.
#[test]
fn a_full_disk_is_a_clear_error_and_the_last_checkpoint_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 8);
    let data = data.to_str().unwrap();
    let dir = tmp.path().join("run");
    let out = dir.to_str().unwrap();
    ok(&run_args(data, out, "2"));
    let last = dir.join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    assert!(before.len() > 200 << 10, "{} bytes", before.len());
    let mut args = run_args(data, out, "4");
    args.push("--resume");
    let run = under_ulimit("-f 200", &args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("last.safetensors") && err.contains("MB") && err.contains("is kept"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
    // Resumed without the limit, it goes on from the kept checkpoint.
    let text = ok(&args);
    assert!(text.contains("resuming"), "{text}");
    assert_eq!(metadata(&last)["global_step"], 4);

    let noisy = tmp.path().join("noisy.png");
    write_png(&noisy, 3, 300, 200);
    let clean = tmp.path().join("clean.png");
    let run = under_ulimit(
        "-f 8",
        &[
            "generate",
            "--image",
            noisy.to_str().unwrap(),
            "--out",
            clean.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("clean.png"), "{err}");
    assert!(!clean.exists());
    assert!(temporaries(tmp.path()).is_empty());
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// A loss that becomes infinite or NaN stops the run, saying at which step, with the last good
/// checkpoint kept; `--resume` from it with a sane rate trains on.
#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 8);
    let data = data.to_str().unwrap();
    let dir = tmp.path().join("run");
    let out = dir.to_str().unwrap();
    // Validation only at the end of each epoch here (4 steps of 4 images).
    let args = |steps: &'static str, lr: &'static str| -> Vec<String> {
        let mut a: Vec<String> = run_args(data, out, steps)
            .into_iter()
            .map(String::from)
            .collect();
        let i = a.iter().position(|x| x == "--val-every").unwrap();
        a.drain(i..i + 2);
        a.extend(["--lr".into(), lr.into(), "--resume".into()]);
        a
    };
    ok(&strs(&args("4", "1e-3")));
    let last = dir.join("last.safetensors");
    let before = std::fs::read(&last).unwrap();
    let err = fails(&strs(&args("8", "1e30")));
    assert!(err.contains("diverged at step"), "{err}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    let text = ok(&strs(&args("8", "1e-3")));
    assert!(text.contains("resuming"), "{text}");
    assert_eq!(metadata(&last)["global_step"], 8);
}
