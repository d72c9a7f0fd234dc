"""What the node does differently on the rclpy of ROS 2 Jazzy (7.1) and of Kilted (9.1).

Every such difference is bridged here, told apart by the feature itself rather than by a
version number (a ROS install's rclpy has no package metadata to read one from).
"""

from __future__ import annotations

import inspect

from rclpy.executors import MultiThreadedExecutor

# Kilted's MultiThreadedExecutor.shutdown joins its thread pool (wait_for_threads, True by
# default); Jazzy's has no such argument and leaves the pool's threads running.
_SHUTDOWN_JOINS_THREADS = "wait_for_threads" in inspect.signature(MultiThreadedExecutor.shutdown).parameters


def shutdown_executor(executor: MultiThreadedExecutor) -> None:
    """Stop ``executor`` and wait until the callbacks running on its threads have finished,
    so that their answers go out before the node is destroyed."""
    if _SHUTDOWN_JOINS_THREADS:
        executor.shutdown(wait_for_threads=True)
    else:
        executor.shutdown()
        executor._executor.shutdown(wait=True)  # the pool rclpy 9's shutdown joins
