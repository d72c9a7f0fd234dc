# The virtual environment's location, shared by scripts/setup.sh and scripts/activate.sh.
# It lives outside the checkout (CMake refuses exported include dirs inside the source
# tree, and numpy's would be) and is named by the hash of the pins, so clones with the
# same requirements.txt + constraints.txt share one, and changed pins get a new one.
# OVSEG_VENV overrides it.
ovseg_venv_path() {
  if [ -n "${OVSEG_VENV:-}" ]; then
    echo "$OVSEG_VENV"
    return
  fi
  local pins
  pins="$(cat "$1/requirements.txt" "$1/constraints.txt" | sha256sum | cut -c1-12)"
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/ovseg_ros/venv-$pins"
}

# The prefix holding the ROS 2 tools installed from ../shared/ros2 (beside the venv: the
# tools' install.sh refuses a prefix inside it). OVSEG_ROS2_TOOLS overrides it.
ovseg_ros2_tools_path() {
  if [ -n "${OVSEG_ROS2_TOOLS:-}" ]; then
    echo "$OVSEG_ROS2_TOOLS"
    return
  fi
  echo "$(ovseg_venv_path "$1")-ros2-tools"
}
