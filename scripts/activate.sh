# Source this file (bash/zsh) after scripts/setup.sh: a shell where the node, the tests
# and `python -m ovseg_dev...` run against the built package, on the ROS 2 distribution that
# ROS_DISTRO names (jazzy when unset; export it first to choose kilted).
_ovseg_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
# shellcheck source=scripts/venv_path.sh
source "$_ovseg_repo/scripts/venv_path.sh"
_ovseg_venv="$(ovseg_venv_path "$_ovseg_repo")" || return 1
# As a ROS install's setup.bash does; the processes started from this shell see the same.
ROS_DISTRO="$(ovseg_ros_distro)"
export ROS_DISTRO
# shellcheck disable=SC1091
source "$_ovseg_venv/bin/activate"
export AMENT_PREFIX_PATH="$_ovseg_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_ovseg_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$(ovseg_install_path "$_ovseg_repo")/local_setup.sh"
# Import ovseg_ros from install/<distro>/ (which has ovseg_ros.msg) even when the current
# directory is the repository root, whose ovseg_ros/ folder would otherwise shadow it.
export PYTHONSAFEPATH=1
# Fast DDS's default transports drop most large best-effort messages (images) here; the
# socket size makes Jazzy's shared-memory segment hold a 1080p frame, as Kilted's does
# (ovseg_ros.ros.environment.FASTDDS_TRANSPORTS says more).
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA?sockets_size=4250KB}"
# The ROS 2 tools from ../shared/ros2 (ros2 launch, ros2 param, message_filters, ...), when
# scripts/setup.sh installed them; on a ROS install they are already on the paths.
_ovseg_ros2_tools="$(ovseg_ros2_tools_path "$_ovseg_repo")"
if [ -f "$_ovseg_ros2_tools/.ros2_extra_stamp" ] && [ -f "$_ovseg_repo/../shared/ros2/env.sh" ]; then
  # shellcheck disable=SC1091
  OVSEG_ROS2_EXTRA="$_ovseg_ros2_tools" source "$_ovseg_repo/../shared/ros2/env.sh"
fi
unset _ovseg_repo _ovseg_venv _ovseg_ros2_tools
