#!/usr/bin/env bash
# The one prepared script for a borrowed GPU machine (run by the lead through the device tool).
# It trains the default model and four ablations side by side on one GPU within a time budget,
# evaluates them with tarfuse-eval, runs the model benchmark on the GPU, and leaves in $OUT:
#   tarfuse_default.safetensors  the trained default model
#   results.tar.gz               logs, metrics.json + report.md per run, a few figures, bench JSON
#   session.log                  everything printed
# Needs: .gpu_data/{roadscene,msrs_det} (copied from shared/datasets) and .whl/ (ultralytics,
# kornia wheels for the machine's Python), both carried.
# Usage: bash benchmarks/gpu_session.sh [TRAIN_BUDGET_S] [DEVICE]
# A quick CPU rehearsal: EVAL_ARGS="--max-pairs 2 --max-side 160" bash ... 20 cpu
set -uo pipefail
BUDGET=${1:-270}
DEVICE=${2:-cuda}
OUT=${OUT:-./gpu_out}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
mkdir -p "${OUT}"
WORK=$(mktemp -d)
exec > >(tee "${OUT}/session.log") 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="${WORK}/yolo" MPLCONFIGDIR="${WORK}/mpl" PYTHONUNBUFFERED=1
mkdir -p "${YOLO_CONFIG_DIR}" "${MPLCONFIGDIR}"
DATA="${REPO}/.gpu_data"
echo "== $(date -u +%FT%TZ) commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

# name | extra training arguments (the ablations switch one loss off each)
VARIANTS=(
  'full|'
  'no_consistency|--set loss.consistency=0'
  'no_complementary|--set loss.complementary=0'
  'no_detection|--set loss.det=0'
  'no_registration_loss|--set loss.reg=0'
)
T0=$(date +%s)
# `wait` on explicit pids: a bare `wait` would also wait for the tee above, forever.
pids=()
for entry in "${VARIANTS[@]}"; do
  name=${entry%%|*}; extra=${entry#*|}
  # shellcheck disable=SC2086
  timeout --signal=INT --kill-after=20 $(( BUDGET + 90 )) python3 -m tarfuse_ros.tools.train \
    --config config/train.yaml --set "data.root=${DATA}" --device "${DEVICE}" --workers 3 \
    --out "${WORK}/runs/${name}" --time-budget "${BUDGET}" ${extra} \
    > "${WORK}/train_${name}.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "== training wall $(( $(date +%s) - T0 )) s"
for entry in "${VARIANTS[@]}"; do
  name=${entry%%|*}
  echo "-- ${name}"; tail -n 4 "${WORK}/train_${name}.log"
done

T1=$(date +%s)
evaluate() {  # name data split extra...
  local name=$1 data=$2 split=$3; shift 3
  local ckpt="${WORK}/runs/${name}/tarfuse.safetensors"
  [ -f "${ckpt}" ] || { echo "no checkpoint for ${name}"; return; }
  timeout --signal=INT --kill-after=10 150 python3 -m tarfuse_ros.tools.evaluate \
    --data "${DATA}/${data}" --split "${split}" --weights "${ckpt}" --device "${DEVICE}" \
    --threads 2 --no-progress --figures 4 --out "${WORK}/eval/${name}_${data}" ${EVAL_ARGS:-} "$@" \
    > "${WORK}/eval_${name}_${data}.log" 2>&1
}
pids=()
for entry in "${VARIANTS[@]}"; do
  evaluate "${entry%%|*}" roadscene test &
  pids+=($!)
done
evaluate full msrs_det test --deform synthetic &
pids+=($!)
wait "${pids[@]}"
echo "== evaluation wall $(( $(date +%s) - T1 )) s"
for f in "${WORK}"/eval_*.log; do echo "-- ${f##*/}"; tail -n 3 "${f}"; done

if [ -f "${WORK}/runs/full/tarfuse.safetensors" ]; then
  cp "${WORK}/runs/full/tarfuse.safetensors" "${OUT}/tarfuse_default.safetensors"
  timeout 120 python3 benchmarks/bench_model.py --weights "${OUT}/tarfuse_default.safetensors" \
    --json "${WORK}/bench_gpu.json" --iters 50 --max-seconds 10 2>&1 | tail -n 30
fi
rm -f "${WORK}"/runs/*/*.safetensors "${WORK}"/runs/*/state* 2>/dev/null
tar -czf "${OUT}/results.tar.gz" -C "${WORK}" --exclude='yolo' --exclude='mpl' .
ls -la "${OUT}"
echo "== total wall $(( $(date +%s) - T0 )) s"
