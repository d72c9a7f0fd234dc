"""A ROS 2 process's environment: isolation for tests (no rclpy needed to build it), and leaving nothing behind."""

from __future__ import annotations

import gc
import math
import random
import signal
from pathlib import Path


#: Fast DDS's transports (FASTDDS_BUILTIN_TRANSPORTS; scripts/activate.sh has the same default):
#: LARGE_DATA, as the default ones drop most large best-effort messages (images) on this kind
#: of machine. Its shared-memory segment holds a message whole; Jazzy's Fast DDS 2.14 sizes it
#: at twice the socket buffers, the system's default unless set (then a 1080p rgb8 frame, 6.2
#: MB, went over TCP instead: 6 of 60 best-effort frames at 30 Hz arrived), Kilted's Fast DDS 3
#: at 8500 KiB. These socket buffers give that segment on both.
FASTDDS_TRANSPORTS = "LARGE_DATA?sockets_size=4250KB"


def isolated_ros_environment(ros_home: Path, domain_id: int | None = None) -> dict[str, str]:
    """Variables giving a run its own DDS domain, ROS_HOME and logs, on :data:`FASTDDS_TRANSPORTS`.

    Discovery is deliberately not limited to localhost (ROS_AUTOMATIC_DISCOVERY_RANGE): with
    LARGE_DATA that made Fast DDS lose almost every 640x480 frame here.
    """
    ros_home.mkdir(parents=True, exist_ok=True)
    return {
        "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.randint(1, 100)),
        "ROS_HOME": str(ros_home),
        "ROS_LOG_DIR": str(ros_home / "log"),
        "FASTDDS_BUILTIN_TRANSPORTS": FASTDDS_TRANSPORTS,
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
