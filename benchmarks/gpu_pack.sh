#!/usr/bin/env bash
# Pack what a GPU lease needs into two ignored folders, each small enough for one device call.
#
# The device tool sends the working tree (about 28 MB) plus the folders a call carries, 64 MiB
# (67,108,864 bytes) at most per call. The training data do not fit in one call (msrs_train
# 63 MB, RoadScene 10 MB, the wheels 9 MB), so they travel in two calls back to back (the
# machine stays warm for 30 s after a call and keeps ignored folders between calls):
#   .gpu_a  the kornia-rs wheel (Python 3.12) + msrs_train/ir
#   .gpu_b  the ultralytics and kornia wheels + msrs_train/{vi,labels,splits} +
#           roadscene/{ir,vi,labels,splits}
# (session 26: with all three wheels in .gpu_a it came to 66.8 of 67.1 MB with the tree
# grown to 31.5 MB; the two pure-Python wheels, 3.4 MB, moved to the half with room.)
# Files are copied as they are (no re-encoding). The working tree's two largest tracked files
# that the job does not need (the medical model and the shipped run's resumable state, 9 MB)
# are removed for the calls by `--slim`; restore them afterwards with
# `git checkout -- models/tarfuse_medical.safetensors training/fuse_v4c/state` (name the paths:
# a bare `git checkout -- training` would also drop uncommitted edits there).
#
# Usage (repository root): bash benchmarks/gpu_pack.sh [--slim]
# Then, as training/README.md ("A GPU lease") says, two device runs:
#   1. carry [.gpu_a]: bash benchmarks/gpu_joint.sh install
#   2. carry [.gpu_b], within 30 s: OUT=$OUT bash benchmarks/gpu_joint.sh run BUDGET_S
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
SHARED=${TARFUSE_SHARED:-${REPO}/../shared}/datasets
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "${EXCLUDE}")"
for path in /.gpu_a/ /.gpu_b/; do
  grep -qxF "${path}" "${EXCLUDE}" 2>/dev/null || echo "${path}" >> "${EXCLUDE}"
done
rm -rf .gpu_a .gpu_b
mkdir -p .gpu_a/whl .gpu_b/whl .gpu_a/datasets/msrs_train .gpu_b/datasets/msrs_train \
  .gpu_b/datasets/roadscene
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
download .gpu_a/whl kornia-rs==0.2.0
download .gpu_b/whl ultralytics==8.4.190 kornia==0.9.0
cp -r "${SHARED}/msrs_train/ir" .gpu_a/datasets/msrs_train/
cp -r "${SHARED}/msrs_train/"{vi,labels,train.txt,val.txt,all.txt,classes.txt,README.md} \
  .gpu_b/datasets/msrs_train/
cp -r "${SHARED}/roadscene/"{ir,vi,labels,train.txt,test.txt,extra.txt,det_labelled.txt} \
  .gpu_b/datasets/roadscene/
cp "${SHARED}/roadscene/README.md" .gpu_b/datasets/roadscene/
if [ "${1:-}" = "--slim" ]; then
  rm -f models/tarfuse_medical.safetensors training/fuse_v4c/state/*
fi
# du skips (and fails on) the tracked files --slim removed: count what is there.
tree_bytes=$( (git ls-files -z | xargs -0 du -cb 2>/dev/null || true) | tail -n 1 | cut -f1)
status=0
for part in .gpu_a .gpu_b; do
  part_bytes=$(du -sb "${part}" | cut -f1)
  echo "${part}: ${part_bytes} bytes + working tree ${tree_bytes} = $(( part_bytes + tree_bytes ))" \
    "of 67108864"
  if (( part_bytes + tree_bytes > 67108864 )); then
    echo "${part} does not fit one device call: move files between the parts" >&2
    status=1
  fi
done
exit "${status}"
