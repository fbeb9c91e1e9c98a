#!/usr/bin/env bash
# The test command (README, .ci/run): sets up .venv if needed, then runs the whole suite twice:
#   1. everything, under e3nn 0.5.1 (satisfies fairchem; reads MACE models saved under 0.4.4);
#   2. the tests marked `e3nn044` (the layers and the MACE path) under mace-torch's own pin,
#      e3nn 0.4.4, from the overlay .venv/e3nn-0.4.4 placed first on PYTHONPATH.
# Extra arguments go to both pytest runs (e.g. `bash scripts/test.sh -x -k conv`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=.venv/bin/python
echo "[test] pass 1/2: full suite (e3nn $($PY -c 'import importlib.metadata as m; print(m.version("e3nn"))'))"
$PY -m pytest tests -q -p no:cacheprovider -ra "$@"
echo "[test] pass 2/2: MACE path and layers under e3nn 0.4.4 (mace-torch's pin)"
GAUNT_EXPECT_E3NN=0.4.4 PYTHONPATH="$PWD/.venv/e3nn-0.4.4${PYTHONPATH:+:$PYTHONPATH}" \
  $PY -m pytest tests -q -p no:cacheprovider -ra -m e3nn044 "$@"
