#!/usr/bin/env bash
# The main job (README): sets up .venv if needed, then compares upstream MACE with
# `tensor_product: gaunt` on the acetylacetone dataset (../shared/data/acac): same data, seed and
# training budget for both, evaluated on the 300 K / 600 K MD test sets, the dihedral scan and the
# proton-transfer path. The report (report.md, report.json, learning_curves.png) lands in
# examples/compare/results/mace_acac/. GAUNT_MAIN_MINUTES sets the training minutes per variant
# (default 3); extra arguments go to gaunt-compare (e.g. `bash scripts/main.sh --epochs 5`).
# The op-level CPU benchmark is `.venv/bin/python benchmarks/cpu_ops.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PYTHONUNBUFFERED=1
.venv/bin/python examples/compare/prepare_acac.py
OUT=examples/compare/results/mace_acac
status=0
.venv/bin/gaunt-compare examples/compare/mace_acac.yaml --max-minutes "${GAUNT_MAIN_MINUTES:-3}" \
  --test 'examples/compare/data/test_*.xyz' --out "$OUT" "$@" || status=$?
echo
# the report is written for a failed (exit 1) or interrupted (exit 130) variant too
[ -f "$OUT/report.md" ] && cat "$OUT/report.md"
exit "$status"
