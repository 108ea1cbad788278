#!/usr/bin/env bash
# Short GPU lease: train the default model and the four loss ablations side by side for BUDGET
# seconds each, snapshotting logs and the default checkpoint into $OUT every 15 s (so a lease cut
# short still returns something). Evaluation happens afterwards, anywhere, with tarfuse-eval.
# Usage: OUT=dir bash benchmarks/gpu_train_short.sh [BUDGET_S]
set -uo pipefail
BUDGET=${1:-95}
OUT=${OUT:-./gpu_out}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
mkdir -p "${OUT}" /tmp/runs /tmp/yolo
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}" YOLO_OFFLINE=1 \
  YOLO_CONFIG_DIR=/tmp/yolo MPLCONFIGDIR=/tmp/yolo PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
snapshot() {
  [ -f /tmp/runs/full/tarfuse.safetensors ] && \
    cp /tmp/runs/full/tarfuse.safetensors "${OUT}/tarfuse_default.safetensors"
  tar -czf "${OUT}/runs.tar.gz.tmp" -C /tmp runs --exclude='*.safetensors' --exclude='state' \
    && mv "${OUT}/runs.tar.gz.tmp" "${OUT}/runs.tar.gz"
}
pids=()
for entry in 'full|' 'no_consistency|loss.consistency=0' 'no_complementary|loss.complementary=0' \
    'no_detection|loss.det=0' 'no_registration_loss|loss.reg=0'; do
  name=${entry%%|*}; set_arg=${entry#*|}
  extra=(); [ -n "${set_arg}" ] && extra=(--set "${set_arg}")
  timeout --signal=INT --kill-after=15 $(( BUDGET + 40 )) python3 -m tarfuse_ros.tools.train \
    --config config/train.yaml --set "data.root=${REPO}/.gpu_data" --device cuda --workers 3 \
    --out "/tmp/runs/${name}" --time-budget "${BUDGET}" "${extra[@]}" \
    > "/tmp/runs/train_${name}.log" 2>&1 &
  pids+=($!)
done
while kill -0 "${pids[0]}" 2>/dev/null; do sleep 15; snapshot; done
wait "${pids[@]}"
snapshot
tail -n 2 /tmp/runs/train_*.log
ls -la "${OUT}"
