#!/usr/bin/env bash
# The prepared GPU job of the detection issue: joint training of the shipped default
# (training/joint_v1.yaml), then the held-out selection evaluations; results in $OUT.
#
# Modes (benchmarks/gpu_pack.sh builds .gpu_a and .gpu_b; training/README.md, "A GPU lease"):
#   install          device call 1 (carry .gpu_a): install the wheels into /tmp/site and keep
#                    .gpu_a's data in /tmp/tarfuse_a (the machine keeps both while warm)
#   run BUDGET_S     device call 2 (carry .gpu_b), within 30 s of call 1: train for BUDGET_S
#                    seconds, put every learnt part into the shipped model's config
#                    (benchmarks/swap_parts.py), evaluate on the held-out pairs
#   all BUDGET_S     both, in one process (a CPU rehearsal, or a lease where both parts fit)
# Environment: OUT (default ./gpu_out), DEVICE (default cuda), TRAIN_ARGS (extra tarfuse-train
#   arguments, e.g. '--max-steps 4 --batch 2 --no-amp' for a CPU rehearsal), EVAL_ARGS (extra
#   tarfuse-eval arguments, e.g. '--max-pairs 2').
# $OUT gets (8 files at most come back): tarfuse_joint.safetensors, results.tar.gz (training
#   log, curves, config, evaluation metrics and reports), train.log, eval.log, summary.txt.
set -uo pipefail
MODE=${1:?usage: gpu_joint.sh install | run BUDGET_S | all BUDGET_S}
BUDGET=${2:-420}
OUT=${OUT:-./gpu_out}
DEVICE=${DEVICE:-cuda}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
mkdir -p "${OUT}"

install_wheels() {  # the wheels of one part (.gpu_a in call 1, .gpu_b in call 2)
  if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo 'wheels not installed: they are for Python 3.12 (the device machine); using this one'
  elif ls "$1"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$1"/whl/*.whl || return 1
  fi
}

install() {
  install_wheels .gpu_a || return 1
  if [ -d .gpu_a/datasets ]; then
    rm -rf /tmp/tarfuse_a && cp -r .gpu_a /tmp/tarfuse_a
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  echo "installed: $(ls /tmp/site 2>/dev/null | tr '\n' ' ')"
}

run() {
  local work shared
  install_wheels .gpu_b || return 1
  work=$(mktemp -d)
  shared=${work}/shared/datasets
  mkdir -p "${shared}"
  # One data tree from both parts (symbolic links; the files stay where they are).
  for part in /tmp/tarfuse_a "${REPO}/.gpu_a" "${REPO}/.gpu_b"; do
    [ -d "${part}/datasets" ] && cp -rsn "${part}/datasets/." "${shared}/"
  done
  export PYTHONPATH="/tmp/site:${REPO}" TARFUSE_SHARED="${work}/shared" YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR="${work}/yolo" MPLCONFIGDIR="${work}/mpl" PYTHONUNBUFFERED=1
  mkdir -p "${YOLO_CONFIG_DIR}" "${MPLCONFIGDIR}"
  echo "== $(date -u +%FT%TZ) commit $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    > "${OUT}/summary.txt"
  # shellcheck disable=SC2086
  python3 -m tarfuse_ros.tools.train --config training/joint_v1.yaml --device "${DEVICE}" \
    --out "${work}/joint" --time-budget "${BUDGET}" ${TRAIN_ARGS:-} > "${OUT}/train.log" 2>&1
  echo "train exit $?" >> "${OUT}/summary.txt"
  python3 benchmarks/swap_parts.py models/tarfuse_default.safetensors \
    "${work}/joint/tarfuse.safetensors" "${OUT}/tarfuse_joint.safetensors" --parts ir_common \
    ir_specific vi_common vi_specific registration reconstruction neck detect \
    >> "${OUT}/summary.txt" 2>&1 || return 1
  local evals=('roadscene|training/fuse_v1/roadscene_holdout.txt' 'msrs_train|val')
  for entry in "${evals[@]}"; do
    # shellcheck disable=SC2086
    python3 -m tarfuse_ros.tools.evaluate --data "${entry%%|*}" --split "${entry#*|}" \
      --deform synthetic --weights "${OUT}/tarfuse_joint.safetensors" --device "${DEVICE}" \
      --out "${work}/eval/${entry%%|*}" --figures 0 --no-progress ${EVAL_ARGS:-} \
      >> "${OUT}/eval.log" 2>&1
    grep -h '^pairs' "${OUT}/eval.log" | tail -n 1 >> "${OUT}/summary.txt"
  done
  tar -czf "${OUT}/results.tar.gz" -C "${work}" --exclude=state --exclude='*.safetensors' \
    joint eval
  cat "${OUT}/summary.txt"
}

case "${MODE}" in
  install) install ;;
  run) run ;;
  all) install && run ;;
  *) echo "unknown mode ${MODE}: install | run BUDGET_S | all BUDGET_S" >&2; exit 2 ;;
esac
