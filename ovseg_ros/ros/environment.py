"""A ROS 2 process's environment: isolation for tests (no rclpy needed to build it), and leaving nothing behind."""

from __future__ import annotations

import gc
import math
import random
import signal
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


# Deleting the DDS participant at exit takes milliseconds; past this it is deadlocked.
PARTICIPANT_DELETION_TIMEOUT_S = 5.0


def destroy_participant(context=None, timeout_s: float = PARTICIPANT_DELETION_TIMEOUT_S) -> None:
    """Delete this process's DDS participant now, after ``rclpy.try_shutdown()``: its
    shared-memory segments (``/dev/shm/fastdds_*``; ``fastrtps_*`` with Jazzy's Fast DDS 2) go
    with it, while a process that exits without deleting it (``os._exit``, a signal) leaves
    them behind for good.

    The participant lives as long as its rclpy ``context`` (given: destroyed as soon as its
    destroyed nodes release it, whoever still references the Python objects, e.g. a worker
    thread still encoding a vocabulary); the default context's objects hold each other in
    cycles, which the collector frees here rather than at some later point.

    Fast DDS's TCP transport (LARGE_DATA) can deadlock in that deletion while holding the GIL
    (eProsima/Fast-DDS#6066): an alarm left to its default action then ends the process after
    ``timeout_s`` whatever the GIL does (exit status 128 + SIGALRM, and the segments stay).
    """
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, math.ceil(timeout_s)))
    try:
        if context is not None:
            context.destroy()
        gc.collect()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
