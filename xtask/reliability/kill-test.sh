#!/usr/bin/env bash
# The long kill test of docs/reliability.md: a small training run killed with SIGKILL at
# KILLS different moments (default 300), each time checking that best and last load, then
# resumed to the end and compared with an uninterrupted run (weights bit for bit).
#   bash xtask/reliability/kill-test.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DENOISE_KILLS="${1:-300}" cargo test -p denoise-cli --test e2e \
    reliability::killed_runs_lose_nothing_and_resume_to_the_same_weights -- --nocapture 2>&1 |
    grep -E "kills tried|test result|panicked|FAILED|did not load|differ|best: step"
