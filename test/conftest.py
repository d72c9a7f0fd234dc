"""Shared test set-up: an isolated ROS 2 environment, the team's fixtures, helpers."""

import importlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ovseg_ros.ros_env import isolated_ros_environment

# Before anything initialises rclpy: this run gets its own DDS domain and ROS_HOME, so
# concurrent runs and stray nodes on the machine cannot interfere.
_ROS_HOME = Path(tempfile.mkdtemp(prefix="ovseg_test_ros_home_"))
os.environ.update(isolated_ros_environment(_ROS_HOME, domain_id=1 + os.getpid() % 100))
# Text-embedding cache of the nodes under test: fresh per run.
os.environ["OVSEG_CACHE_DIR"] = str(_ROS_HOME / "cache")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
# The ROS 2 tools (launch, CLI verbs, message_filters...) that scripts/setup.sh installs from here.
SHARED_ROS2 = Path(__file__).resolve().parents[2] / "shared" / "ros2"
ROS2_TOOL_MODULES = ("launch", "launch_ros", "launch_testing", "message_filters", "vision_msgs.msg", "diagnostic_updater")
ROS2_TOOL_EXECUTABLES = ("ros2", "launch_test")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.fail(f"the team's parity fixtures are missing: expected {FIXTURES} (../shared/fixtures beside the checkout)")
    return FIXTURES


@pytest.fixture(scope="session")
def ros2_tools() -> str:
    """For tests that need the real ROS 2 tools; returns the ``ros2`` executable's path.

    Skips only where ../shared/ros2 is absent (a plain clone elsewhere); where it is there
    (CI, this workplace) the tools must work, so a broken set-up or activation fails.
    """
    if not SHARED_ROS2.is_dir():
        pytest.skip(f"ROS 2 tools not available: {SHARED_ROS2} is absent")
    missing = [name for name in ROS2_TOOL_EXECUTABLES if shutil.which(name) is None]
    for module in ROS2_TOOL_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module} ({error})")
    if missing:
        pytest.fail(f"{SHARED_ROS2} is there but these ROS 2 tools are not usable: {', '.join(missing)}; run scripts/setup.sh, then source scripts/activate.sh")
    return shutil.which("ros2")
