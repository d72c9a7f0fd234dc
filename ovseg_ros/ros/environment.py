"""Environment for running ROS 2 processes in isolation (no rclpy needed to build it)."""

from __future__ import annotations

import random
from pathlib import Path


def isolated_ros_environment(ros_home: Path, domain_id: int | None = None) -> dict[str, str]:
    """Variables giving a run its own DDS domain, ROS_HOME and logs.

    Fast DDS's LARGE_DATA transport is selected: the default one drops most large
    best-effort messages (images) on this kind of machine. Discovery is deliberately not
    limited to localhost (ROS_AUTOMATIC_DISCOVERY_RANGE): with LARGE_DATA that made
    Fast DDS lose almost every 640x480 frame here.
    """
    ros_home.mkdir(parents=True, exist_ok=True)
    return {
        "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.randint(1, 100)),
        "ROS_HOME": str(ros_home),
        "ROS_LOG_DIR": str(ros_home / "log"),
        "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
    }
