"""Shared test set-up: an isolated ROS 2 environment, the team's fixtures, helpers."""

import os
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


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.fail(f"the team's parity fixtures are missing: expected {FIXTURES} (../shared/fixtures beside the checkout)")
    return FIXTURES
