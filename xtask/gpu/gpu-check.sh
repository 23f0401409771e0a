#!/usr/bin/env bash
# The GPU check of `denoise`, laid out by `cargo xtask gpu-bundle`. Run it on the GPU machine from
# the bundle folder: `bash gpu-check.sh`. Everything lands in $OUT (default ./results), summed up
# in $OUT/gpu-check.json. Needs: an NVIDIA driver, CUDA 13 libraries (PyTorch's nvidia-* packages
# or a CUDA toolkit), python3 with PyTorch for the comparison.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
OUT=${OUT:-$HERE/results}
mkdir -p "$OUT"
STEPS=${STEPS:-300}
WORK=${WORK:-$HERE/work}   # checkpoints (large) go here, not to $OUT
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*"; }
status() { echo "$1=$2" >> "$OUT/status.txt"; }
: > "$OUT/status.txt"

if [ ! -x ./denoise ]; then
    gzip -dc denoise.gz > denoise && chmod +x denoise
fi

log "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee "$OUT/gpu.txt"

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
ldd ./denoise > "$OUT/ldd.txt" 2>&1
if grep -q "not found" "$OUT/ldd.txt"; then
    log "missing libraries:"; grep "not found" "$OUT/ldd.txt"
    status ldd missing
else
    log "every library resolves"; status ldd ok
fi
grep -E "libcuda|libcublas|libcudart|libcurand|libnvrtc|libcudnn" "$OUT/ldd.txt"

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

run selftest 45 ./denoise selftest --device cuda --json "$OUT/selftest.json"
run bench-seed-unet 75 ./denoise bench --arch seed-unet --device cuda --steps 10 --repeats 3 --json "$OUT/bench-seed-unet.json"
run torch-bench 60 python3 seed_unet_bench.py --device cuda --steps 10 --repeats 3
tail -n 1 "$OUT/torch-bench.log" > "$OUT/torch-bench.json"
run torch-bench-tf32 45 python3 seed_unet_bench.py --device cuda --steps 10 --repeats 3 --tf32
tail -n 1 "$OUT/torch-bench-tf32.log" > "$OUT/torch-bench-tf32.json"
run train-seed-unet 120 ./denoise train --arch seed-unet --data data --out "$WORK/seed-unet" --max-steps "$STEPS" --time-budget 90 --device cuda --log-every 50
run eval-seed-unet 45 ./denoise eval --model "$WORK/seed-unet/best.safetensors" --data data --limit 1000 --sigmas 15,25,50 --device cuda --json "$OUT/eval-seed-unet.json"
run selftest-tf32 30 ./denoise selftest --device cuda --tf32 --tol 2e-2 --json "$OUT/selftest-tf32.json"
run bench-seed-unet-tf32 60 ./denoise bench --arch seed-unet --device cuda --tf32 --steps 10 --repeats 3 --json "$OUT/bench-seed-unet-tf32.json"
run bench-cond-unet 60 ./denoise bench --arch cond-unet --device cuda --steps 10 --repeats 3 --json "$OUT/bench-cond-unet.json"
run train-cond-unet 120 ./denoise train --arch cond-unet --data data --out "$WORK/cond-unet" --max-steps "$STEPS" --time-budget 90 --device cuda --log-every 50
run eval-cond-unet 60 ./denoise eval --model "$WORK/cond-unet/best.safetensors" --data data --limit 1000 --sigmas 15,25,50 --estimate-sigma --device cuda --json "$OUT/eval-cond-unet.json"
run sample-cond-unet 45 ./denoise generate --random --model "$WORK/cond-unet/last.safetensors" --count 64 --seed 0 --out "$OUT/samples.png" --device cuda

for arch in seed-unet cond-unet; do
    mkdir -p "$OUT/$arch"
    cp "$WORK"/$arch/{metrics.jsonl,steps.csv,loss.png} "$OUT/$arch/" 2>/dev/null
done

log "summary"
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
    "missing_libraries": [l.strip() for l in (text("ldd.txt") or "").splitlines() if "not found" in l],
    "selftest": load("selftest.json"),
    "selftest_tf32": load("selftest-tf32.json"),
    "bench": {"denoise": ours, "pytorch": torch_, "pytorch_tf32": torch_tf32,
              "train_ratio_vs_pytorch": ratio(ours, torch_, "train_img_per_s"),
              "infer_ratio_vs_pytorch": ratio(ours, torch_, "infer_img_per_s"),
              "denoise_tf32": load("bench-seed-unet-tf32.json"),
              "train_ratio_tf32_vs_pytorch_tf32": ratio(load("bench-seed-unet-tf32.json"), torch_tf32, "train_img_per_s"),
              "infer_ratio_tf32_vs_pytorch_tf32": ratio(load("bench-seed-unet-tf32.json"), torch_tf32, "infer_img_per_s")},
    "train_seed_unet": [json.loads(l) for l in (text("seed-unet/metrics.jsonl") or "").splitlines() if l.strip()],
    "eval_seed_unet": load("eval-seed-unet.json"),
    "bench_cond_unet": load("bench-cond-unet.json"),
    "train_cond_unet": [json.loads(l) for l in (text("cond-unet/metrics.jsonl") or "").splitlines() if l.strip()],
    "eval_cond_unet": load("eval-cond-unet.json"),
}
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps({k: summary[k] for k in ["gpu", "status", "missing_libraries"]}, indent=1))
print("train ratio", summary["bench"]["train_ratio_vs_pytorch"], "infer ratio", summary["bench"]["infer_ratio_vs_pytorch"])
PY
# Few files travel back best: gpu-check.json, and everything else in one archive.
(cd "$OUT" && tar czf results.tar.gz --exclude gpu-check.json --exclude results.tar.gz --exclude samples.png . && find . -mindepth 1 ! -name gpu-check.json ! -name results.tar.gz ! -name samples.png -delete)
log "done: $OUT/gpu-check.json (logs in $OUT/results.tar.gz)"
