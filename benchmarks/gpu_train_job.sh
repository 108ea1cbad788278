#!/usr/bin/env bash
# Train the default TarFuse model on one GPU within a wall-time budget, then (if the evaluation
# tool exists and time is left) evaluate it; everything lands in OUT_DIR.
#
# Usage (from the repository root):
#   bash benchmarks/gpu_train_job.sh DATA_ROOT [OUT_DIR] [BUDGET_S] [extra tarfuse-train args...]
#     DATA_ROOT  folder holding the data sets (roadscene/, msrs_det/ ...), e.g. .gpu_data
#     OUT_DIR    output folder (default: $OUT if set, else ./gpu_train_out)
#     BUDGET_S   wall seconds for the training process (default 300). After ~20 steps the
#                trainer measures its step time and lowers the epoch count (config: 150) so
#                that training + validation + saving fit; it prints what it chose.
# Environment: DEVICE (default cuda), WORKERS (default 6), EVAL_BUDGET_S (default 90),
#   PYTHON (default python3). Extra wheels (ultralytics, kornia) go on PYTHONPATH beforehand.
# CPU background use: DEVICE=cpu WORKERS=1 bash benchmarks/gpu_train_job.sh DATA OUT 0 --epochs 20
#   (BUDGET_S 0 = no budget: the configured / given epoch count runs to the end).
# Outputs: OUT_DIR/tarfuse_default.safetensors (the checkpoint, provenance inside),
#   OUT_DIR/train/{log.jsonl,loss_curves.png,summary.json,config.yaml,splits/,state/} (state/ is
#   resumable anywhere: tarfuse-train --resume OUT_DIR/train --device cpu --epochs N),
#   OUT_DIR/train.log, and OUT_DIR/eval_roadscene/ when the evaluation ran.
set -uo pipefail

DATA_ROOT=${1:?usage: gpu_train_job.sh DATA_ROOT [OUT_DIR] [BUDGET_S] [train args...]}
OUT_DIR=${2:-${OUT:-./gpu_train_out}}
BUDGET_S=${3:-300}
shift $(( $# < 3 ? $# : 3 ))
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-6}
EVAL_BUDGET_S=${EVAL_BUDGET_S:-90}
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_ROOT=$(cd "${DATA_ROOT}" && pwd) || { echo "data root ${1} not found" >&2; exit 2; }
mkdir -p "${OUT_DIR}"
OUT_DIR=$(cd "${OUT_DIR}" && pwd)
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
export YOLO_OFFLINE=1
export YOLO_CONFIG_DIR="${OUT_DIR}/.cache/ultralytics"
export MPLCONFIGDIR="${OUT_DIR}/.cache/matplotlib"
export PYTHONUNBUFFERED=1
mkdir -p "${YOLO_CONFIG_DIR}" "${MPLCONFIGDIR}"
cd "${REPO}"

echo "== tarfuse gpu_train_job: $(date -u +%FT%TZ) repo=${REPO} data=${DATA_ROOT} out=${OUT_DIR}"
echo "== commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
"${PYTHON}" - <<'EOF'
import importlib
import torch
print('== torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
for name in ('torchvision', 'ultralytics', 'ultralytics.utils.loss', 'safetensors', 'cv2',
             'tqdm', 'yaml', 'matplotlib'):
    try:
        module = importlib.import_module(name)
        print('==', name, getattr(module, '__version__', '?'))
    except Exception as exc:  # report and go on: train.py says what it needs
        print('== MISSING', name, exc)
EOF

BUDGET_ARGS=()
if [ "${BUDGET_S}" != "0" ]; then BUDGET_ARGS=(--time-budget "${BUDGET_S}"); fi
T0=$(date +%s)
# A hard stop a little above the budget, so a stuck run still leaves time for the copy-back.
HARD_S=$(( BUDGET_S > 0 ? BUDGET_S + 60 : 86400 ))
timeout --signal=INT --kill-after=20 "${HARD_S}" "${PYTHON}" -m tarfuse_ros.tools.train \
    --config config/train.yaml --set "data.root=${DATA_ROOT}" --device "${DEVICE}" \
    --workers "${WORKERS}" --out "${OUT_DIR}/train" ${BUDGET_ARGS[@]+"${BUDGET_ARGS[@]}"} "$@" \
    2>&1 | tee "${OUT_DIR}/train.log"
TRAIN_RC=${PIPESTATUS[0]}
T1=$(date +%s)
echo "== training exit code ${TRAIN_RC}, wall $(( T1 - T0 )) s"

CKPT="${OUT_DIR}/train/tarfuse.safetensors"
[ -f "${CKPT}" ] && cp "${CKPT}" "${OUT_DIR}/tarfuse_default.safetensors"
EVAL_RC=skipped
if [ -f "${CKPT}" ] && [ -f tarfuse_ros/tools/evaluate.py ] && [ "${EVAL_BUDGET_S}" != "0" ] \
        && [ -d "${DATA_ROOT}/roadscene" ]; then
    timeout --signal=INT --kill-after=10 "${EVAL_BUDGET_S}" "${PYTHON}" -m \
        tarfuse_ros.tools.evaluate --data "${DATA_ROOT}/roadscene" --split test \
        --weights "${CKPT}" --out "${OUT_DIR}/eval_roadscene" --device "${DEVICE}" \
        2>&1 | tail -n 40 | tee "${OUT_DIR}/eval.log"
    EVAL_RC=${PIPESTATUS[0]}
fi
T2=$(date +%s)

echo "== summary"
echo "training: rc=${TRAIN_RC} wall=$(( T1 - T0 ))s  evaluation: rc=${EVAL_RC} wall=$(( T2 - T1 ))s"
ls -la "${OUT_DIR}/train" 2>/dev/null
[ -f "${OUT_DIR}/train/summary.json" ] && cat "${OUT_DIR}/train/summary.json"
[ -f "${OUT_DIR}/eval_roadscene/metrics.json" ] && head -c 3000 \
    "${OUT_DIR}/eval_roadscene/metrics.json"
echo
exit "${TRAIN_RC}"
