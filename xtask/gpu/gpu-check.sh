#!/usr/bin/env bash
# The GPU check of `denoise`, laid out by `cargo xtask gpu-bundle`. Run it on the GPU machine from
# the bundle folder: `bash gpu-check.sh`. Everything lands in $OUT (default ./results), summed up
# in $OUT/gpu-check.json. Needs: an NVIDIA driver, CUDA 13 libraries (PyTorch's nvidia-* packages
# or a CUDA toolkit; cuDNN 9 for denoise-cudnn), python3 with PyTorch for the comparison.
#
# Two builds come in the bundle: `denoise` (candle's convolutions, features cuda) and
# `denoise-cudnn` (all three convolution passes through cuDNN, features cudnn). Both are checked
# and benchmarked; training, evaluation and sampling use denoise-cudnn where its selftest passes.
#
# A dry run without a GPU (to check this script): put CPU builds in place of both binaries and run
# `DEVICE=cpu STEPS=4 BENCH_STEPS=1 EVAL_LIMIT=20 BF16_BATCH=4 BF16_TRAIN_BATCH=4 bash gpu-check.sh`.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
OUT=${OUT:-$HERE/results}
mkdir -p "$OUT"
STEPS=${STEPS:-300}
BENCH_STEPS=${BENCH_STEPS:-10}
EVAL_LIMIT=${EVAL_LIMIT:-1000}
BF16_BATCH=${BF16_BATCH:-256}   # inference batch of the bf16 benchmarks (ours and PyTorch's)
BF16_TRAIN_BATCH=${BF16_TRAIN_BATCH:-64}   # and their training batch
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$HERE/work}   # checkpoints (large) go here, not to $OUT
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*"; }
status() { echo "$1=$2" >> "$OUT/status.txt"; }
: > "$OUT/status.txt"

for b in denoise denoise-cudnn; do
    if [ ! -x "./$b" ] && [ -f "$b.gz" ]; then
        gzip -dc "$b.gz" > "$b" && chmod +x "$b"
    fi
done

log "GPU"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee "$OUT/gpu.txt"
else
    echo "no nvidia-smi (device $DEVICE)" | tee "$OUT/gpu.txt"
fi

log "library folders: PyTorch's nvidia-* packages and the CUDA toolkit"
LIBDIRS=$(python3 - <<'PY'
import glob, os, site, sys
paths = []
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    paths += sorted(glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True))
    paths += sorted(glob.glob(os.path.join(r, "torch", "lib")))
for d in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]:
    if os.path.isdir(d):
        paths.append(d)
seen = []
for p in paths:
    if p not in seen:
        seen.append(p)
print(":".join(seen))
PY
)
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "$LD_LIBRARY_PATH" | tr ':' '\n' > "$OUT/libdirs.txt"
for b in denoise denoise-cudnn; do
    ldd "./$b" > "$OUT/ldd-$b.txt" 2>&1
    if grep -q "not found" "$OUT/ldd-$b.txt"; then
        log "$b: missing libraries:"; grep "not found" "$OUT/ldd-$b.txt"
        status "ldd-$b" missing
    else
        log "$b: every library resolves"; status "ldd-$b" ok
    fi
    grep -E "libcuda|libcublas|libcudart|libcurand|libnvrtc|libcudnn" "$OUT/ldd-$b.txt"
done

run() { # name, timeout seconds, command...
    local name=$1 t=$2; shift 2
    log "$name: $*"
    local start=$(date +%s.%N)
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local end=$(date +%s.%N)
    tail -n 5 "$OUT/$name.log"
    status "$name" "$rc"
    echo "$name $(python3 -c "print(round($end - $start, 2))")" >> "$OUT/durations.txt"
    return $rc
}
: > "$OUT/durations.txt"

# Writes $OUT/gpu-check.json from what is there so far: called after the main steps too, so that
# a run cut short by a time limit still leaves a summary behind.
summarize() {
    for arch in seed-unet cond-unet cond-unet-bf16; do
        mkdir -p "$OUT/$arch"
        cp "$WORK"/$arch/{metrics.jsonl,steps.csv,loss.png} "$OUT/$arch/" 2>/dev/null
    done
    cp build-info.txt "$OUT/" 2>/dev/null
    python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception as e:
        return {"error": str(e)}
def text(name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read().strip()
    except Exception:
        return None
status = dict(l.strip().split("=", 1) for l in open(os.path.join(out, "status.txt")) if "=" in l)
durations = dict(l.split() for l in open(os.path.join(out, "durations.txt")) if l.strip())
ours = load("bench-seed-unet.json")
torch_ = load("torch-bench.json")
torch_tf32 = load("torch-bench-tf32.json")
ours_cudnn = load("bench-seed-unet-cudnn.json")
ours_cudnn_tf32 = load("bench-seed-unet-cudnn-tf32.json")
def ratio(a, b, k):
    try:
        return a[k]["median"] / b[k]["median"]
    except Exception:
        return None
import datetime
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "build": text("../build-info.txt") or text("build-info.txt"),
    "gpu": text("gpu.txt"),
    "status": status,
    "durations_s": durations,
    "missing_libraries": {b: [l.strip() for l in (text(f"ldd-{b}.txt") or "").splitlines() if "not found" in l]
                          for b in ["denoise", "denoise-cudnn"]},
    "selftest": load("selftest.json"),
    "selftest_cudnn": load("selftest-cudnn.json"),
    "selftest_tf32": load("selftest-tf32.json"),
    "selftest_cudnn_tf32": load("selftest-cudnn-tf32.json"),
    "bench": {"denoise": ours, "pytorch": torch_, "pytorch_tf32": torch_tf32,
              "train_ratio_vs_pytorch": ratio(ours, torch_, "train_img_per_s"),
              "infer_ratio_vs_pytorch": ratio(ours, torch_, "infer_img_per_s"),
              "denoise_tf32": load("bench-seed-unet-tf32.json"),
              "train_ratio_tf32_vs_pytorch_tf32": ratio(load("bench-seed-unet-tf32.json"), torch_tf32, "train_img_per_s"),
              "infer_ratio_tf32_vs_pytorch_tf32": ratio(load("bench-seed-unet-tf32.json"), torch_tf32, "infer_img_per_s"),
              "denoise_cudnn": ours_cudnn,
              "cudnn_train_ratio_vs_pytorch": ratio(ours_cudnn, torch_, "train_img_per_s"),
              "cudnn_infer_ratio_vs_pytorch": ratio(ours_cudnn, torch_, "infer_img_per_s"),
              "denoise_cudnn_heuristic": load("bench-seed-unet-cudnn-heuristic.json"),
              "cudnn_heuristic_train_ratio_vs_pytorch": ratio(load("bench-seed-unet-cudnn-heuristic.json"), torch_, "train_img_per_s"),
              "cudnn_heuristic_infer_ratio_vs_pytorch": ratio(load("bench-seed-unet-cudnn-heuristic.json"), torch_, "infer_img_per_s"),
              "pytorch_cudnn_benchmark": load("torch-bench-cudnn-benchmark.json"),
              "cudnn_train_ratio_vs_pytorch_cudnn_benchmark": ratio(ours_cudnn, load("torch-bench-cudnn-benchmark.json"), "train_img_per_s"),
              "cudnn_infer_ratio_vs_pytorch_cudnn_benchmark": ratio(ours_cudnn, load("torch-bench-cudnn-benchmark.json"), "infer_img_per_s"),
              "denoise_cudnn_tf32": ours_cudnn_tf32,
              "cudnn_train_ratio_tf32_vs_pytorch_tf32": ratio(ours_cudnn_tf32, torch_tf32, "train_img_per_s"),
              "cudnn_infer_ratio_tf32_vs_pytorch_tf32": ratio(ours_cudnn_tf32, torch_tf32, "infer_img_per_s")},
    "train_seed_unet": [json.loads(l) for l in (text("seed-unet/metrics.jsonl") or "").splitlines() if l.strip()],
    "eval_seed_unet": load("eval-seed-unet.json"),
    "bench_cond_unet": load("bench-cond-unet.json"),
    "bench_cond_unet_pytorch": load("torch-bench-cond-unet.json"),
    "cond_unet_train_ratio_vs_pytorch": ratio(load("bench-cond-unet.json"), load("torch-bench-cond-unet.json"), "train_img_per_s"),
    "cond_unet_infer_ratio_vs_pytorch": ratio(load("bench-cond-unet.json"), load("torch-bench-cond-unet.json"), "infer_img_per_s"),
    "train_cond_unet": [json.loads(l) for l in (text("cond-unet/metrics.jsonl") or "").splitlines() if l.strip()],
    "eval_cond_unet": load("eval-cond-unet.json"),
    "bf16": {"bench_seed_unet": load("bench-seed-unet-bf16.json"),
             "pytorch": load("torch-bench-bf16.json"),
             "train_ratio_vs_pytorch_bf16": ratio(load("bench-seed-unet-bf16.json"), load("torch-bench-bf16.json"), "train_img_per_s"),
             "infer_ratio_vs_pytorch_bf16": ratio(load("bench-seed-unet-bf16.json"), load("torch-bench-bf16.json"), "infer_img_per_s"),
             "eval_cond_unet": load("eval-cond-unet-bf16.json"),
             "train_cond_unet": [json.loads(l) for l in (text("cond-unet-bf16/metrics.jsonl") or "").splitlines() if l.strip()],
             "eval_cond_unet_trained_bf16": load("eval-cond-unet-trained-bf16.json")},
}
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps({k: summary[k] for k in ["gpu", "status", "missing_libraries"]}, indent=1))
b = summary["bench"]
print("vs PyTorch FP32, train/infer: denoise", b["train_ratio_vs_pytorch"], b["infer_ratio_vs_pytorch"],
      "denoise-cudnn", b["cudnn_train_ratio_vs_pytorch"], b["cudnn_infer_ratio_vs_pytorch"])
print("denoise-cudnn with heuristics vs PyTorch FP32, train/infer:", b["cudnn_heuristic_train_ratio_vs_pytorch"], b["cudnn_heuristic_infer_ratio_vs_pytorch"],
      "; denoise-cudnn vs PyTorch cudnn.benchmark:", b["cudnn_train_ratio_vs_pytorch_cudnn_benchmark"], b["cudnn_infer_ratio_vs_pytorch_cudnn_benchmark"])
print("vs PyTorch TF32, train/infer: denoise", b["train_ratio_tf32_vs_pytorch_tf32"], b["infer_ratio_tf32_vs_pytorch_tf32"],
      "denoise-cudnn", b["cudnn_train_ratio_tf32_vs_pytorch_tf32"], b["cudnn_infer_ratio_tf32_vs_pytorch_tf32"])
print("cond-unet vs PyTorch FP32, train/infer:", summary["cond_unet_train_ratio_vs_pytorch"], summary["cond_unet_infer_ratio_vs_pytorch"])
print("vs PyTorch bf16 autocast, train/infer:", summary["bf16"]["train_ratio_vs_pytorch_bf16"], summary["bf16"]["infer_ratio_vs_pytorch_bf16"])
def phases(r):
    p = r.get("train_phases_ms") or {}
    return "/".join("%.1f" % p[k] if k in p else "?" for k in ["forward_ms", "loss_ms", "backward_ms", "optimizer_ms"])
print("seed-unet FP32 step, ms forward/loss/backward/optimizer: denoise", phases(ours),
      "denoise-cudnn", phases(ours_cudnn), "PyTorch", phases(torch_))
PY
}

B="--steps $BENCH_STEPS --repeats 3"
run selftest 45 ./denoise selftest --device "$DEVICE" --json "$OUT/selftest.json"
run selftest-cudnn 45 ./denoise-cudnn selftest --device "$DEVICE" --json "$OUT/selftest-cudnn.json"
BIN=./denoise
if grep -q "^selftest-cudnn=0$" "$OUT/status.txt"; then BIN=./denoise-cudnn; fi
status trained-with "$BIN"
log "training, evaluation and sampling with $BIN"
run bench-seed-unet 75 ./denoise bench --arch seed-unet --device "$DEVICE" $B --json "$OUT/bench-seed-unet.json"
run bench-seed-unet-cudnn 75 ./denoise-cudnn bench --arch seed-unet --device "$DEVICE" $B --json "$OUT/bench-seed-unet-cudnn.json"
run torch-bench 60 python3 unet_bench.py --device "$DEVICE" $B
tail -n 1 "$OUT/torch-bench.log" > "$OUT/torch-bench.json"
run torch-bench-tf32 45 python3 unet_bench.py --device "$DEVICE" $B --tf32
tail -n 1 "$OUT/torch-bench-tf32.log" > "$OUT/torch-bench-tf32.json"
# cuDNN's algorithms: timed per shape (denoise's default, PyTorch's cudnn.benchmark) or picked by
# heuristics (PyTorch's default, DENOISE_CUDNN_BENCHMARK=0), both ways on both sides.
run bench-seed-unet-cudnn-heuristic 45 env DENOISE_CUDNN_BENCHMARK=0 ./denoise-cudnn bench --arch seed-unet --device "$DEVICE" $B --json "$OUT/bench-seed-unet-cudnn-heuristic.json"
run torch-bench-cudnn-benchmark 45 python3 unet_bench.py --device "$DEVICE" $B --cudnn-benchmark
tail -n 1 "$OUT/torch-bench-cudnn-benchmark.log" > "$OUT/torch-bench-cudnn-benchmark.json"
summarize > /dev/null
run train-seed-unet 120 $BIN train --arch seed-unet --data data --out "$WORK/seed-unet" --overwrite --max-steps "$STEPS" --time-budget 90 --device "$DEVICE" --log-every 50
run eval-seed-unet 45 $BIN eval --model "$WORK/seed-unet/best.safetensors" --data data --limit "$EVAL_LIMIT" --sigmas 15,25,50 --device "$DEVICE" --json "$OUT/eval-seed-unet.json"
summarize > /dev/null
run selftest-tf32 30 ./denoise selftest --device "$DEVICE" --tf32 --tol 2e-2 --json "$OUT/selftest-tf32.json"
run selftest-cudnn-tf32 30 ./denoise-cudnn selftest --device "$DEVICE" --tf32 --tol 2e-2 --json "$OUT/selftest-cudnn-tf32.json"
run bench-seed-unet-tf32 60 ./denoise bench --arch seed-unet --device "$DEVICE" --tf32 $B --json "$OUT/bench-seed-unet-tf32.json"
run bench-seed-unet-cudnn-tf32 60 ./denoise-cudnn bench --arch seed-unet --device "$DEVICE" --tf32 $B --json "$OUT/bench-seed-unet-cudnn-tf32.json"
summarize > /dev/null
run bench-cond-unet 60 $BIN bench --arch cond-unet --device "$DEVICE" $B --json "$OUT/bench-cond-unet.json"
run torch-bench-cond-unet 60 python3 unet_bench.py --arch cond-unet --device "$DEVICE" $B
tail -n 1 "$OUT/torch-bench-cond-unet.log" > "$OUT/torch-bench-cond-unet.json"
run train-cond-unet 120 $BIN train --arch cond-unet --data data --out "$WORK/cond-unet" --overwrite --max-steps "$STEPS" --time-budget 90 --device "$DEVICE" --log-every 50
run eval-cond-unet 60 $BIN eval --model "$WORK/cond-unet/best.safetensors" --data data --limit "$EVAL_LIMIT" --sigmas 15,25,50 --estimate-sigma --device "$DEVICE" --json "$OUT/eval-cond-unet.json"
run sample-cond-unet 45 $BIN generate --random --model "$WORK/cond-unet/last.safetensors" --count 64 --seed 0 --out "$OUT/samples.png" --device "$DEVICE"
summarize > /dev/null
# bf16: training (mixed precision) and inference speed against PyTorch's autocast, the f32-trained
# cond-unet evaluated in bf16, and a cond-unet trained in bf16 (same seed and steps) evaluated.
run bench-seed-unet-bf16 60 $BIN bench --arch seed-unet --device "$DEVICE" --dtype bf16 --batch "$BF16_TRAIN_BATCH" --infer-batch "$BF16_BATCH" $B --json "$OUT/bench-seed-unet-bf16.json"
run torch-bench-bf16 45 python3 unet_bench.py --device "$DEVICE" $B --dtype bf16 --batch "$BF16_TRAIN_BATCH" --infer-batch "$BF16_BATCH"
tail -n 1 "$OUT/torch-bench-bf16.log" > "$OUT/torch-bench-bf16.json"
run eval-cond-unet-bf16 45 $BIN eval --model "$WORK/cond-unet/best.safetensors" --data data --limit "$EVAL_LIMIT" --sigmas 15,25,50 --dtype bf16 --device "$DEVICE" --json "$OUT/eval-cond-unet-bf16.json"
summarize > /dev/null
run train-cond-unet-bf16 120 $BIN train --arch cond-unet --dtype bf16 --data data --out "$WORK/cond-unet-bf16" --overwrite --max-steps "$STEPS" --time-budget 90 --device "$DEVICE" --log-every 50
run eval-cond-unet-trained-bf16 45 $BIN eval --model "$WORK/cond-unet-bf16/best.safetensors" --data data --limit "$EVAL_LIMIT" --sigmas 15,25,50 --device "$DEVICE" --json "$OUT/eval-cond-unet-trained-bf16.json"

log "summary"
summarize
# Few files travel back best: gpu-check.json, and everything else in one archive.
# (The archive is written outside $OUT first: tar fails on a folder that changes as it reads it.)
(cd "$OUT" && tar czf "$WORK/results.tar.gz" --exclude gpu-check.json --exclude samples.png . \
    && mv "$WORK/results.tar.gz" . \
    && find . -mindepth 1 ! -name gpu-check.json ! -name results.tar.gz ! -name samples.png -delete)
log "done: $OUT/gpu-check.json (logs in $OUT/results.tar.gz)"
