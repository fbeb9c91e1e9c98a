#!/usr/bin/env bash
# Downloads the wheels that benchmarks/gpu_suite.py installs on the GPU machine (which reaches no package
# registry): Python 3.12, manylinux x86_64, binary only, no dependencies resolved (each one named here),
# the versions this project's .venv runs. Only what that machine's image lacks: it already has torch,
# triton, numpy, scipy, h5py, torchmetrics, torch-geometric, pytest(-xdist), pyyaml, tqdm, pandas,
# matplotlib, huggingface-hub, protobuf, ...
#
#   bash scripts/gpu_wheels.sh           # MACE and fairchem (EquiformerV2) sets into .whl/ (about 35 MiB)
#   bash scripts/gpu_wheels.sh --cueq    # also cuEquivariance 0.13 with its CUDA 13 ops packages
#                                        # (about 74 MiB more: over the 64 MiB one call carries)
#
# .whl/ is added to .git/info/exclude (it must not be committed, and the device tool sends ignored
# folders only when a call names them in `carry`). The total, with the source tree, must stay under
# 64 MiB; the script prints both and fails when they do not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
CUEQ=0
for arg in "$@"; do
  case "$arg" in
    --cueq) CUEQ=1 ;;
    *) echo "usage: bash scripts/gpu_wheels.sh [--cueq]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
LIMIT_MIB=64

MACE=(mace-torch==0.3.16 e3nn==0.5.1 ase==3.29.0 matscipy==1.3.1 torch-ema==0.3 prettytable==3.18.0
      wcwidth==0.9.4 configargparse==1.9.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 lmdb==3.0.0
      orjson==3.13.0)
# fairchem-core --no-deps plus what building and training EquiformerV2 imports (wandb is imported by
# fairchem's logger and pulls OpenTelemetry); hydra, torchtnt and torch-scatter are not imported there
# (torch-scatter has no wheels at all: gpu_suite.py uses benchmarks/shims/torch_scatter instead)
FAIRCHEM=(fairchem-core==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
          typing-inspection==0.4.5 pymatgen==2026.10.24 pymatgen-core==2026.10.16 monty==2026.10.21
          ruamel.yaml==0.19.1 submitit==1.5.4 wandb==0.31.0 platformdirs==4.14.9
          opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
          opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
          opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2
          opentelemetry-exporter-otlp-common==0.66b2 googleapis-common-protos==1.76.0)
CUEQ_SET=(cuequivariance==0.13.0 cuequivariance-torch==0.13.0 cuequivariance-ops-torch-cu13==0.13.0
          cuequivariance-ops-cu13==0.13.0)
# sdist-only packages, built here into pure-Python wheels
SDIST=(python-hostlist==2.3.0)

PLATFORMS=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done

mkdir -p "$DEST"
if [ -d .git ] && ! grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null; then
  mkdir -p .git/info && echo "/$DEST/" >> .git/info/exclude
fi

SETS=("${MACE[@]}" "${FAIRCHEM[@]}")
[ "$CUEQ" = 1 ] && SETS+=("${CUEQ_SET[@]}")
echo "[gpu_wheels] downloading ${#SETS[@]} wheels into $DEST"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${SETS[@]}"
for spec in "${SDIST[@]}"; do
  name=${spec%%==*}
  ls "$DEST" | grep -qi "^${name//-/_}-" || \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "$spec"
done

# one version of each distribution (two stop the whole install there)
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "[gpu_wheels] more than one version of: $dupes (remove the older from $DEST)" >&2
  exit 1
fi
wheels_mib=$(du -cb "$DEST"/*.whl | tail -1 | awk '{printf "%.1f", $1 / 1048576}')
tree_mib=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | \
           awk '/total$/ {s += $1} END {printf "%.1f", s / 1048576}')
total=$(awk -v a="$wheels_mib" -v b="$tree_mib" 'BEGIN {printf "%.1f", a + b}')
echo "[gpu_wheels] $(ls "$DEST"/*.whl | wc -l) wheels, $wheels_mib MiB; source tree $tree_mib MiB; together $total MiB" \
     "(one call carries $LIMIT_MIB MiB)"
if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t > l)}'; then
  echo "[gpu_wheels] over the limit: leave out the largest (cuequivariance-ops-cu13 is 43 MiB," \
       "cuequivariance-ops-torch-cu13 27 MiB, wandb 19 MiB)" >&2
  exit 1
fi
echo "[gpu_wheels] run on the GPU machine with carry [\"$DEST\"]:"
echo "  python3 benchmarks/gpu_suite.py --out \"\$OUT\" --wheels $DEST"
