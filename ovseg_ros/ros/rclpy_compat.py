"""What the node does differently on the rclpy of ROS 2 Jazzy (7.1) and of Kilted (9.1).

Every such difference is bridged here, told apart by the feature itself rather than by a
version number (a ROS install's rclpy need not have package metadata to read one from).
"""

from __future__ import annotations

import inspect

from rclpy.executors import MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode

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


def refuse_unknown_transitions(node: LifecycleNode) -> None:
    """Have ``node``'s change_state service answer ``success=False`` to a transition its
    current state does not have (a lifecycle manager's request out of turn), as rclpy 9 does.

    rclpy 7 raises RCLError out of the service callback instead, which stops the executor and
    with it the node; rclpy 9 catches it itself, so there this guard never sees one.
    """
    service = node._service_change_state
    change_state = service.callback

    def guarded(request, response):
        try:
            return change_state(request, response)
        except _rclpy.RCLError as exc:
            node.get_logger().error(f"transition {request.transition.id} {request.transition.label!r} refused: {exc}")
            response.success = False
            return response

    service.callback = guarded
