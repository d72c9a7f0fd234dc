# Where the set-up of one ROS 2 distribution lives, shared by scripts/setup.sh and
# scripts/activate.sh. The one place that picks the distribution: ROS_DISTRO (as a ROS
# install's setup.bash sets it), jazzy when unset; kilted is the second tested set.
ovseg_ros_distro() {
  echo "${ROS_DISTRO:-jazzy}"
}

# The pin files of the distribution, after checking there are some for it.
ovseg_pin_files() {
  local distro
  distro="$(ovseg_ros_distro)"
  if [ ! -f "$1/requirements/$distro.txt" ] || [ ! -f "$1/constraints/$distro.txt" ]; then
    echo "ovseg_ros: no pinned set for ROS_DISTRO=$distro (requirements/, constraints/: jazzy, kilted)" >&2
    return 1
  fi
  echo "$1/requirements/common.txt $1/requirements/$distro.txt $1/constraints/common.txt $1/constraints/$distro.txt"
}

# The virtual environment lives outside the checkout (CMake refuses exported include dirs
# inside the source tree, and numpy's would be) and is named by the distribution and the
# hash of its pins, so clones with the same pins share one, and changed pins get a new
# one. OVSEG_VENV overrides it.
ovseg_venv_path() {
  if [ -n "${OVSEG_VENV:-}" ]; then
    echo "$OVSEG_VENV"
    return
  fi
  local files pins
  files="$(ovseg_pin_files "$1")" || return 1
  # shellcheck disable=SC2086
  pins="$(cat $files | sha256sum | cut -c1-12)"
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/ovseg_ros/venv-$(ovseg_ros_distro)-$pins"
}

# The prefix holding the ROS 2 tools installed from ../shared/ros2 (beside the venv: the
# tools' install.sh refuses a prefix inside it). OVSEG_ROS2_TOOLS overrides it.
ovseg_ros2_tools_path() {
  if [ -n "${OVSEG_ROS2_TOOLS:-}" ]; then
    echo "$OVSEG_ROS2_TOOLS"
    return
  fi
  local venv
  venv="$(ovseg_venv_path "$1")" || return 1
  echo "$venv-ros2-tools"
}

# The colcon build and install folders of the distribution (the interfaces are built
# against its rosidl and libraries): build/<distro>, install/<distro>.
ovseg_build_path() {
  echo "$1/build/$(ovseg_ros_distro)"
}
ovseg_install_path() {
  echo "$1/install/$(ovseg_ros_distro)"
}
