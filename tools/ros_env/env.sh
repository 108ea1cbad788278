# Source this file (bash) to use the project's ROS 2 Jazzy virtualenv: `source tools/ros_env/env.sh`.
# It changes only environment variables of the current shell; tools/ros_env/setup_env.sh builds the venv.
_tarfuse_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export TARFUSE_ROOT="${_tarfuse_root}"
export TARFUSE_VENV="${TARFUSE_VENV:-${_tarfuse_root}/.venv}"
export VIRTUAL_ENV="${TARFUSE_VENV}"
case ":${PATH}:" in *":${TARFUSE_VENV}/bin:"*) ;; *) export PATH="${TARFUSE_VENV}/bin:${PATH}" ;; esac
case ":${PYTHONPATH:-}:" in
  *":${_tarfuse_root}:"*) ;;
  *) export PYTHONPATH="${_tarfuse_root}${PYTHONPATH:+:${PYTHONPATH}}" ;;
esac
# The ROS wheels install into the venv as an ament prefix (share/ament_index, lib/).
export AMENT_PREFIX_PATH="${TARFUSE_VENV}${AMENT_PREFIX_PATH:+:${AMENT_PREFIX_PATH}}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Keep DDS discovery on this machine and ROS logs inside the project.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-${_tarfuse_root}/.cache/ros_log}"
# Large images over DDS: shared memory with a big segment + loopback UDP (see README).
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-${_tarfuse_root}/config/fastdds_profile.xml}"
# Ultralytics: never touch the network, keep its settings in the project.
export YOLO_OFFLINE=1
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-${_tarfuse_root}/.cache/ultralytics}"
export MPLCONFIGDIR="${MPLCONFIGDIR:-${_tarfuse_root}/.cache/matplotlib}"
# glibc malloc tunables: keep large tensor buffers mapped (much faster CPU inference).
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
export MALLOC_TOP_PAD_="${MALLOC_TOP_PAD_:-536870912}"
mkdir -p "${ROS_LOG_DIR}" "${YOLO_CONFIG_DIR}" "${MPLCONFIGDIR}"
unset _tarfuse_root
