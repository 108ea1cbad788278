#!/usr/bin/env bash
# Pack what a GPU lease needs into two ignored folders, each small enough for one device call.
#
# The device tool sends the working tree (26 MB, 10 MB slimmed) plus the folders a call
# carries, 64 MiB (67,108,864 bytes) at most per call. The training data do not fit in one call
# (msrs_train 63 MB, RoadScene 10 MB, the wheels 9 MB), so they travel in two calls back to
# back (the machine stays warm for 30 s after a call and keeps ignored folders between calls):
#   .gpu_a  the three wheels the device machine lacks (Python 3.12: kornia-rs, kornia,
#           ultralytics; call 1 installs them and checks the package imports) + msrs_train/ir
#   .gpu_b  msrs_train/{vi,labels,splits} + roadscene/{ir,vi,labels,splits} + the README
#           that makes the tree a shared data folder + commit.txt
# (session 26 moved the two pure-Python wheels to .gpu_b when .gpu_a came to 66.8 of 67.1 MB;
# session 48's wider --slim made room for them in call 1 again.)
# Files are copied as they are (no re-encoding).
#
# --slim deletes, for the calls, the tracked files the job does not read (SLIM below: the tests,
# docs, the medical model and the training runs' logs, curves and states, about 24 MB; session
# 48: without it the tree was 26.1 MB and .gpu_a came to 65.8 of the 67.1 MB). Files with
# uncommitted edits are kept. Restore them afterwards with `bash benchmarks/gpu_pack.sh
# --restore` (git checkout of the tracked files missing from the tree; edits elsewhere stay).
# A part must leave HEADROOM (1.5 MB) under the limit: the tree grows between packing and the
# lease, and a call refused for size costs device time.
#
# Usage (repository root of the checkout the device tool sends; a clean clone of main does):
#   bash benchmarks/gpu_pack.sh [--slim]   pack (and slim); exit 1 if a part does not fit
#   bash benchmarks/gpu_pack.sh --list-slim   the files --slim deletes, one a line
#   bash benchmarks/gpu_pack.sh --restore   put back what --slim deleted
# Then, as training/README.md ("A GPU lease") says, two device runs:
#   1. carry [.gpu_a], timeout_s 90: bash benchmarks/gpu_joint.sh install
#   2. at once (the machine goes back 30 s after a call), carry [.gpu_b], timeout_s 540:
#      bash benchmarks/gpu_joint.sh run 360 510
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO}"
SHARED=${TARFUSE_SHARED:-${REPO}/../shared}/datasets
LIMIT=67108864
HEADROOM=1572864
# What the job (training/joint_v1.yaml, gpu_joint.sh) does not read; joint_v1.yaml and the
# held-out list stay (test/test_gpu_pack.py checks the job's inputs are not in it).
SLIM=(test docs models/tarfuse_medical.safetensors training ':!training/joint_v1.yaml'
  ':!training/fuse_v1/roadscene_holdout.txt')
slim_files() {  # tracked files under SLIM without uncommitted edits, NUL-separated
  local -A edited=()
  local path
  while IFS= read -r -d '' path; do edited[${path}]=1; done \
    < <(git ls-files -z -m -- "${SLIM[@]}")
  while IFS= read -r -d '' path; do
    [ -n "${edited[${path}]:-}" ] || printf '%s\0' "${path}"
  done < <(git ls-files -z -- "${SLIM[@]}")
}
case "${1:-}" in
  --list-slim) slim_files | tr '\0' '\n'; exit 0 ;;
  --restore) git ls-files -z -d | xargs -0 -r git checkout --; exit 0 ;;
  ''|--slim) ;;
  *) echo "unknown option ${1}: --slim | --list-slim | --restore" >&2; exit 2 ;;
esac
# .gitignore ignores both parts (so a device call carries them and does not send them twice
# with the tree); nothing is written to .git/info/exclude, which worktrees share.
for part in .gpu_a .gpu_b; do
  git check-ignore -q "${part}/" || { echo "${part} is not ignored (.gitignore)" >&2; exit 1; }
done
rm -rf .gpu_a .gpu_b
mkdir -p .gpu_a/whl .gpu_a/datasets/msrs_train .gpu_b/datasets/msrs_train \
  .gpu_b/datasets/roadscene
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
download .gpu_a/whl kornia-rs==0.2.0 ultralytics==8.4.190 kornia==0.9.0
cp -r "${SHARED}/msrs_train/ir" .gpu_a/datasets/msrs_train/
cp -r "${SHARED}/msrs_train/"{vi,labels,train.txt,val.txt,all.txt,classes.txt,README.md} \
  .gpu_b/datasets/msrs_train/
cp -r "${SHARED}/roadscene/"{ir,vi,labels,train.txt,test.txt,extra.txt,det_labelled.txt} \
  .gpu_b/datasets/roadscene/
cp "${SHARED}/roadscene/README.md" .gpu_b/datasets/roadscene/
# tarfuse_ros.core.paths takes a folder for the shared data sets only with this README.md.
cp "${SHARED}/README.md" .gpu_b/datasets/
# The commit packed (the device machine gets no .git): gpu_joint.sh writes it into summary.txt.
echo "$(git rev-parse HEAD), $(git diff --name-only --diff-filter=d HEAD | wc -l) files edited" \
  > .gpu_b/commit.txt
if [ "${1:-}" = "--slim" ]; then
  slim_files | xargs -0 -r rm -f
fi
# What travels: tracked files that are there and untracked ones not ignored (du skips, and
# fails on, the tracked files --slim deleted).
tree_bytes=$( (git ls-files -z -c -o --exclude-standard | xargs -0 du -cb 2>/dev/null || true) \
  | awk '$2 == "total" {sum += $1} END {print sum + 0}')
status=0
for part in .gpu_a .gpu_b; do
  part_bytes=$(du -sb "${part}" | cut -f1)
  total=$(( part_bytes + tree_bytes ))
  echo "${part}: ${part_bytes} bytes + working tree ${tree_bytes} = ${total} of ${LIMIT}" \
    "($(( LIMIT - total )) left)"
  if (( total > LIMIT - HEADROOM )); then
    echo "${part} does not fit one device call with ${HEADROOM} bytes to spare: use --slim," \
      "or move files between the parts" >&2
    status=1
  fi
done
exit "${status}"
