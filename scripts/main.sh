#!/usr/bin/env bash
# The main job (README): sets up .venv if needed, then runs the CPU op benchmark of the Gaunt layers
# against e3nn/MACE (table on stdout, JSON in benchmarks/results/cpu_ops.json).
# Extra arguments go to the benchmark (e.g. `bash scripts/main.sh --lmax 2 3`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PYTHONUNBUFFERED=1
.venv/bin/python benchmarks/cpu_ops.py --quick "$@"
