#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment with pinned versions
# (requirements/ + constraints/: the ROS 2 wheels of ROS_DISTRO, jazzy by default or kilted,
# torch + open_clip), a colcon build of this package (interfaces + Python modules) into
# ./install/<distro>, and, when
# ../shared/ros2 is beside the checkout, the ROS 2 tools a ROS install would bring from apt
# (launch, ros2cli, message_filters, vision_msgs, diagnostic_updater, image_geometry)
# into a prefix beside the virtual environment.
# Running it again only re-checks: pip is skipped while the pins are unchanged, and the
# ROS tools' install.sh does nothing while its sources and the venv are unchanged.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv_path.sh
source "$repo/scripts/venv_path.sh"
distro="$(ovseg_ros_distro)"
venv="$(ovseg_venv_path "$repo")"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv (ROS 2 $distro)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ovseg_installed"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing pinned packages (first time: several minutes, torch is large)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/requirements/$distro.txt" -c "$repo/constraints/$distro.txt"
  touch "$stamp"
else
  echo "[setup] packages up to date (ROS 2 $distro)"
fi

mkdir -p "$repo/log"
echo "[setup] colcon build into $(ovseg_install_path "$repo")"
build_log="$repo/log/colcon_build_$distro.txt"
# shellcheck disable=SC1091
source "$venv/bin/activate"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
cd "$repo"
colcon --log-base "$repo/log" build \
  --paths "$repo" --build-base "$(ovseg_build_path "$repo")" --install-base "$(ovseg_install_path "$repo")" \
  --symlink-install --event-handlers console_direct- \
  --cmake-args -DCMAKE_PROJECT_INCLUDE="$repo/cmake/pip_ros_wheels.cmake" -DPython3_EXECUTABLE="$venv/bin/python" \
  >"$build_log" 2>&1 || { cat "$build_log"; exit 1; }
ros2_tools="$(ovseg_ros2_tools_path "$repo")"
if [ -f "$repo/../shared/ros2/install.sh" ]; then
  echo "[setup] ROS 2 tools from ../shared/ros2 into $ros2_tools"
  tools_log="$repo/log/ros2_tools_install_$distro.txt"
  bash "$repo/../shared/ros2/install.sh" "$ros2_tools" >"$tools_log" 2>&1 || { cat "$tools_log"; exit 1; }
else
  echo "[setup] no ../shared/ros2 beside the checkout: the tests that need ros2 launch / message_filters / vision_msgs will skip"
fi
echo "[setup] done: run 'source scripts/activate.sh'${ROS_DISTRO:+ with ROS_DISTRO=$distro exported}"
