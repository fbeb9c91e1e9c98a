#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv with everything every part of
# gaunt-plugins needs: torch 2.13 (CPU build on disk), e3nn 0.5.1, mace-torch 0.3.16,
# fairchem-core 1.10.0 (--no-deps + its real runtime deps), torch-scatter (built from source),
# triton 3.7.1, pytest; plus an overlay with e3nn 0.4.4 (mace-torch's own pin) in .venv/e3nn-0.4.4.
# Idempotent: a stamp holding this file's hash skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GAUNT_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.gaunt-setup-stamp"
HASH=$(cat scripts/setup_env.sh $(ls pyproject.toml 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  echo "[setup] environment $VENV is up to date"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] torch (CPU build) and the numeric stack"
# scipy < 1.17: fairchem's GemNet files import scipy.special.sph_harm, removed in 1.17
$PIP install -q torch==2.13.0 numpy 'scipy<1.17'
echo "[setup] mace-torch 0.3.16 and e3nn"
$PIP install -q mace-torch==0.3.16
# e3nn 0.5.1 satisfies fairchem (>=0.5) and still unpickles MACE models saved under 0.4.4.
$PIP install -q e3nn==0.5.1
echo "[setup] fairchem-core 1.10.0 (no deps) and its runtime dependencies"
$PIP install -q --no-deps fairchem-core==1.10.0
$PIP install -q ase hydra-core lmdb numba orjson 'pydantic>=2.10' pyyaml requests submitit \
  tensorboard torch-geometric torchtnt tqdm wandb 'huggingface-hub>=0.27.1' pymatgen
echo "[setup] torch-scatter (built from source against the installed torch; pip caches the wheel)"
$VENV/bin/python -c "import torch_scatter" 2>/dev/null || \
  $PIP install -q --no-build-isolation torch-scatter
echo "[setup] triton 3.7.1, test and plotting tools"
$PIP install -q triton==3.7.1 pytest matplotlib
echo "[setup] e3nn 0.4.4 overlay (mace-torch's pin) in $VENV/e3nn-0.4.4"
$PIP install -q --no-deps --target "$VENV/e3nn-0.4.4" e3nn==0.4.4
if [ -f pyproject.toml ]; then
  echo "[setup] gaunt-plugins (editable)"
  $PIP install -q --no-deps --no-build-isolation -e .
fi
echo "$HASH" > "$STAMP"
echo "[setup] done"
