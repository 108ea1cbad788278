#!/usr/bin/env bash
# The prepared GPU job of the detection issue: joint training of the shipped default
# (training/joint_v1.yaml), then the held-out selection evaluations; results in $OUT.
#
# Modes (benchmarks/gpu_pack.sh builds .gpu_a and .gpu_b; training/README.md, "A GPU lease"):
#   install          device call 1 (carry .gpu_a): install the wheels into SITE, keep .gpu_a's
#                    data in STAGE (the machine keeps both while warm), check that the
#                    package imports and sees the GPU (exit 1: do not start call 2)
#   run BUDGET_S [STOP_S]
#                    device call 2 (carry .gpu_b), within 30 s of call 1: train for BUDGET_S
#                    seconds, put every learnt part into the shipped model's config
#                    (benchmarks/swap_parts.py), evaluate on the held-out pairs. STOP_S: the
#                    script stops itself that many seconds after its start (give the call's
#                    timeout_s less a margin): as on a TERM or INT (the call's time limit), the
#                    step running stops as Ctrl-C stops it (training saves its weights), the
#                    evaluations left are skipped and what there is goes to $OUT; exit 124
#   all BUDGET_S [STOP_S]
#                    both, in one process (a CPU rehearsal, or a lease where both parts fit)
# Environment: OUT (default ./gpu_out), DEVICE (default cuda), TRAIN_ARGS (extra tarfuse-train
#   arguments, e.g. '--max-steps 4 --batch 2 --no-amp' for a CPU rehearsal), EVAL_ARGS (extra
#   tarfuse-eval arguments, e.g. '--max-pairs 2'), SITE (default /tmp/site), STAGE (default
#   /tmp/tarfuse_a).
# $OUT gets (8 files at most come back): tarfuse_joint.safetensors, results.tar.gz (training
#   log, curves, config, evaluation metrics and reports), train.log, eval.log, summary.txt.
set -uo pipefail
MODE=${1:?usage: gpu_joint.sh install | run BUDGET_S [STOP_S] | all BUDGET_S [STOP_S]}
BUDGET=${2:-360}
STOP_AT=${3:-}
OUT=${OUT:-./gpu_out}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/site}
STAGE=${STAGE:-/tmp/tarfuse_a}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
mkdir -p "${OUT}"
OUT=$(cd "${OUT}" && pwd)
STOPPED=

install_wheels() {  # the wheels of one part (.gpu_a in call 1, .gpu_b in call 2)
  if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo 'wheels not installed: they are for Python 3.12 (the device machine); using this one'
  elif ls "$1"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "${SITE}" "$1"/whl/*.whl || return 1
  fi
}

install() {
  install_wheels .gpu_a || return 1
  if [ -d .gpu_a/datasets ]; then
    rm -rf "${STAGE}" && cp -r .gpu_a "${STAGE}"
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  echo "installed: $(ls "${SITE}" 2>/dev/null | tr '\n' ' ')"
  echo "cpus $(env -u OMP_NUM_THREADS nproc)," \
    "/dev/shm $(df -h --output=avail /dev/shm 2>/dev/null | tail -n 1)," \
    "/tmp $(df -h --output=avail /tmp | tail -n 1)"
  # What call 2 imports, now (seconds), rather than in call 2 after its start.
  PYTHONPATH="${SITE}:${REPO}" YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$(mktemp -d) python3 -c '
import sys
import kornia, torch, ultralytics
import tarfuse_ros.tools.evaluate, tarfuse_ros.tools.train
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]} torch {torch.__version__} kornia {kornia.__version__} "
      f"ultralytics {ultralytics.__version__} cuda {cuda}"
      + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
sys.exit(sys.argv[1].startswith("cuda") and not cuda)' "${DEVICE}" \
    || { echo 'import check failed: do not start call 2' >&2; return 1; }
}

stoppable() {  # run "$@" in the background; a TERM or INT stops it as Ctrl-C does
  "$@" &
  local pid=$! status
  # (A background job's SIGINT is ignored: TERM, which tarfuse-train and tarfuse-eval take as
  # Ctrl-C. A second TERM from the time limit to the whole process group does nothing more.)
  trap "STOPPED=1; kill -TERM ${pid} 2>/dev/null" TERM INT
  wait "${pid}"
  status=$?
  while kill -0 "${pid}" 2>/dev/null; do  # wait returned for the signal: wait for the stop
    wait "${pid}"
    status=$?
  done
  trap 'STOPPED=1' TERM INT
  return "${status}"
}

run() {
  local work shared train_status status eval_status=0 name rc
  trap 'STOPPED=1' TERM INT
  work=$(mktemp -d)
  shared=${work}/shared/datasets
  mkdir -p "${shared}"
  # One data tree from both parts (symbolic links; the files stay where they are).
  for part in "${STAGE}" "${REPO}/.gpu_a" "${REPO}/.gpu_b"; do
    [ -d "${part}/datasets" ] && cp -rsn "${part}/datasets/." "${shared}/"
  done
  if [ ! -d "${shared}/msrs_train/ir" ] || [ ! -d "${shared}/roadscene/ir" ]; then
    echo "msrs_train/ir or roadscene/ir is missing: call 1 (install, carry .gpu_a) did not" \
      "run on this machine (it goes back 30 s after a call), or .gpu_b was not carried;" \
      "run both calls again" | tee "${OUT}/summary.txt" >&2
    return 3
  fi
  install_wheels .gpu_b || return 1
  export PYTHONPATH="${SITE}:${REPO}" TARFUSE_SHARED="${work}/shared" YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR="${work}/yolo" MPLCONFIGDIR="${work}/mpl" PYTHONUNBUFFERED=1
  # The tools must read the packed data, not a shared/ beside the checkout (a rehearsal here
  # found /work/shared and hid that the packed tree was not taken: it lacked datasets/README.md).
  if ! python3 -c 'import sys; from tarfuse_ros.core.paths import shared_datasets_dir as d
sys.exit(str(d()) != sys.argv[1])' "${shared}"; then
    echo "the tools do not take the packed data in ${shared} as the shared data sets" \
      "(tarfuse_ros/core/paths.py): pack again with benchmarks/gpu_pack.sh" \
      | tee "${OUT}/summary.txt" >&2
    return 3
  fi
  mkdir -p "${YOLO_CONFIG_DIR}" "${MPLCONFIGDIR}"
  # The device machine gets no .git: the commit gpu_pack.sh packed.
  echo "== $(date -u +%FT%TZ) commit $(git rev-parse HEAD 2>/dev/null \
    || cat .gpu_b/commit.txt 2>/dev/null || echo unknown)" > "${OUT}/summary.txt"
  if [ -z "${STOPPED}" ]; then
    # shellcheck disable=SC2086
    stoppable python3 -m tarfuse_ros.tools.train --config training/joint_v1.yaml \
      --device "${DEVICE}" --out "${work}/joint" --time-budget "${BUDGET}" ${TRAIN_ARGS:-} \
      > "${OUT}/train.log" 2>&1
  fi
  train_status=$?
  echo "train exit ${train_status} after ${SECONDS} s${STOPPED:+ (stopped)}" \
    >> "${OUT}/summary.txt"
  trap '' TERM INT  # the weights go to $OUT whatever comes now
  python3 benchmarks/swap_parts.py models/tarfuse_default.safetensors \
    "${work}/joint/tarfuse.safetensors" "${OUT}/tarfuse_joint.safetensors" --parts ir_common \
    ir_specific vi_common vi_specific registration reconstruction neck detect \
    >> "${OUT}/summary.txt" 2>&1
  status=$?
  trap 'STOPPED=1' TERM INT
  local evals=('roadscene|training/fuse_v1/roadscene_holdout.txt' 'msrs_train|val')
  for entry in "${evals[@]}"; do
    name=${entry%%|*}
    if [ "${status}" != 0 ] || [ -n "${STOPPED}" ]; then
      echo "eval ${name} skipped" >> "${OUT}/summary.txt"
      continue
    fi
    # shellcheck disable=SC2086
    stoppable python3 -m tarfuse_ros.tools.evaluate --data "${name}" --split "${entry#*|}" \
      --deform synthetic --weights "${OUT}/tarfuse_joint.safetensors" --device "${DEVICE}" \
      --out "${work}/eval/${name}" --figures 0 --no-progress ${EVAL_ARGS:-} \
      > "${work}/eval_${name}.log" 2>&1
    rc=$?
    (( rc == 0 )) || eval_status=${rc}
    echo "eval ${name} exit ${rc} after ${SECONDS} s${STOPPED:+ (stopped)}" \
      >> "${OUT}/summary.txt"
    grep -h '^pairs' "${work}/eval_${name}.log" >> "${OUT}/summary.txt"
    cat "${work}/eval_${name}.log" >> "${OUT}/eval.log"
  done
  trap '' TERM INT
  mkdir -p "${work}/joint" "${work}/eval"
  tar -czf "${OUT}/results.tar.gz" -C "${work}" --exclude=state --exclude='*.safetensors' \
    joint eval
  cat "${OUT}/summary.txt"
  if [ -n "${STOPPED}" ]; then
    return 124
  elif [ "${train_status}" != 0 ]; then
    return "${train_status}"
  fi
  [ "${status}" = 0 ] && return "${eval_status}"
  return "${status}"
}

if [ -n "${STOP_AT}" ]; then  # stop this script STOP_AT seconds after its start
  (
    trap 'kill "${nap:-}" 2>/dev/null; exit 0' TERM
    sleep "${STOP_AT}" &
    nap=$!
    wait "${nap}" && kill -TERM $$
  ) &
  WATCHDOG=$!
  trap 'kill "${WATCHDOG}" 2>/dev/null' EXIT
fi
case "${MODE}" in
  install) install ;;
  run) run ;;
  all) install && run ;;
  *) echo "unknown mode ${MODE}: install | run BUDGET_S [STOP_S] | all BUDGET_S [STOP_S]" >&2
    exit 2 ;;
esac
