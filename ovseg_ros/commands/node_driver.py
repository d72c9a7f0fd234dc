"""Drive the ovseg node from outside, over DDS: used by the demo and the tests.

:class:`NodeProcess` starts the installed node in its own process with the command line
``segment.launch.py`` would use; :class:`Peer` is an rclpy node that publishes camera
frames to it, records what it publishes (raw CDR, ready for a bag) and calls its services.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message

from ovseg_ros.ros.launch_config import EXECUTABLE, PACKAGE, node_command


def package_share() -> Path:
    """The installed package's share directory (config/, launch/, msg/)."""
    return Path(get_package_share_directory(PACKAGE))


#: prctl(PR_SET_PDEATHSIG): the kernel signals a child when the process that started it dies.
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the node's process before exec: SIGTERM it (an orderly stop) if whoever started it dies
    without stopping it (a test run killed at its time limit), so no node outlives its driver."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        pass


class NodeProcess:
    """The installed ``ovseg_node`` running as a separate process.

    Args:
        launch_values: launch argument values (see ``launch_config.LAUNCH_ARGUMENTS``).
        extra_args: more ``--ros-args`` arguments, e.g. ``["-p", "vocabulary:=[a, b]"]``.
        log_path: where the node's stdout and stderr go.
    """

    def __init__(self, launch_values: dict[str, str], log_path: Path, extra_args: list[str] = (), env: dict[str, str] | None = None) -> None:
        executable = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / EXECUTABLE
        self.argv = node_command(executable, launch_values, package_share()) + list(extra_args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, preexec_fn=_end_with_parent
        )

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (what ros2 launch sends), then SIGKILL if it does not exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@dataclass
class Recording:
    """Messages received on one topic: (receive time ns, raw CDR bytes) in arrival order."""

    topic: str
    msg_type: type
    messages: list[tuple[int, bytes]] = field(default_factory=list)

    def decoded(self, last: int | None = None) -> list:
        """The messages deserialised (only the ``last`` newest ones when given)."""
        messages = self.messages if last is None else self.messages[-last:]
        return [deserialize_message(data, self.msg_type) for _, data in messages]


class Peer:
    """An rclpy node in this process that talks to the node under test, spun on a thread."""

    def __init__(self, name: str = "ovseg_peer") -> None:
        if not rclpy.ok():
            rclpy.init(args=[])  # this process's command line is not for ROS
        self.node = Node(name)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._lock = threading.Lock()
        self.recordings: dict[str, Recording] = {}
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def record(self, topic: str, msg_type: type, qos: QoSProfile | int = 10) -> Recording:
        """Start recording ``topic`` (raw, so it can be written to a bag unchanged)."""
        recording = Recording(topic, msg_type)

        def on_message(data: bytes) -> None:
            with self._lock:
                recording.messages.append((time.time_ns(), data))

        self.node.create_subscription(msg_type, topic, on_message, qos, raw=True)
        self.recordings[topic] = recording
        return recording

    def wait_for(self, condition, timeout: float, poll: float = 0.05) -> bool:
        """Poll ``condition()`` until true or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(poll)
        return bool(condition())

    def call(self, client, request, timeout: float = 60.0):
        """Call a service and wait for the response (raises TimeoutError)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available")
        future = client.call_async(request)
        if not self.wait_for(future.done, timeout, poll=0.002):
            raise TimeoutError(f"service {client.srv_name} did not answer within {timeout} s")
        return future.result()

    def close(self) -> None:
        """Stop spinning and destroy the node; the references go too, so that once rclpy is shut
        down the participant can be deleted (:func:`~ovseg_ros.ros.environment.destroy_participant`)."""
        self._executor.shutdown()
        self.node.destroy_node()
        self._thread.join(timeout=5.0)
        self._executor = self.node = self._thread = None
