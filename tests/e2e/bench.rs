//! `bench`: throughput and phase times.

use crate::common::*;

/// `bench` on a tiny network: throughput, and a training step's time phase by phase, printed
/// and saved; bad sizes refused.
#[test]
fn bench_reports_throughput_and_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let j = json.to_str().unwrap();
    let text = ok(&[
        "bench",
        "--arch",
        "cond-unet",
        "--width",
        "8",
        "--batch",
        "2",
        "--infer-batch",
        "2",
        "--size",
        "16",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--json",
        j,
    ]);
    assert!(
        text.contains("img/s") && text.contains("phase by phase"),
        "{text}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        (r["arch"].as_str(), r["train_batch"].as_u64()),
        (Some("cond-unet"), Some(2))
    );
    assert!(
        r["train_img_per_s"]["median"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let p = &r["train_phases_ms"];
    let ms: Vec<f64> = ["forward_ms", "loss_ms", "backward_ms", "optimizer_ms"]
        .iter()
        .map(|k| p[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}")))
        .collect();
    assert!(ms.iter().all(|&v| v > 0.0), "{r}");
    let err = fails(&["bench", "--size", "12", "--device", "cpu"]);
    assert!(err.contains("--size"), "{err}");
}
