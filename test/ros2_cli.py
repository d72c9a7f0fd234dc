"""The real ``ros2`` command line from tests: ``ros2 launch`` as a process group, verbs with retries."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from lifecycle_msgs.srv import GetState

from ovseg_ros.commands.node_driver import Peer

#: launch's SIGINT -> SIGTERM escalation: the node can need more than the default 5 s here.
SIGTERM_TIMEOUT_ARG = "sigterm_timeout:=30"
#: How long ``ros2 launch`` may take to end after one SIGINT (node shutdown included).
LAUNCH_STOP_TIMEOUT_S = 30.0


class LaunchProcess:
    """A ``ros2 launch ...`` command line in a session of its own, its output in ``log_path``.

    Its process group holds the launch process and everything it starts, so :meth:`stop`
    can tell whether anything outlived it and kill what did.
    """

    def __init__(self, argv: list[str], log_path: Path) -> None:
        assert argv[:2] == ["ros2", "launch"], argv
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.group = self.process.pid

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for ``ros2 launch`` to end by itself; its exit code."""
        return self.process.wait(timeout)

    def stop(self, how: str = "sigint") -> tuple[int | None, list[str]]:
        """Stop ``ros2 launch``, then SIGKILL whatever is left of its group.

        ``how``: "sigint" to the launch process, or "ctrl-c": SIGINT to the whole group, as a
        terminal does, so the node gets one from the terminal and one from launch. (SIGTERM
        makes launch exit at once and orphan its processes, by design.) Returns launch's exit code (None if it did
        not end within LAUNCH_STOP_TIMEOUT_S) and the command lines still running in its
        group after launch ended.
        """
        returncode = self.process.poll()
        if returncode is None:
            assert how in ("sigint", "ctrl-c"), how
            if how == "ctrl-c":
                os.killpg(self.group, signal.SIGINT)
            else:
                self.process.send_signal(signal.SIGINT)
            try:
                returncode = self.process.wait(LAUNCH_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                returncode = None
        left = group_members(self.group)
        kill_group(self.group)
        self.process.wait()
        self._log.close()
        return returncode, left

    def check_stopped(self, how: str = "sigint") -> None:
        """:meth:`stop`, asserting that launch and its node ended cleanly and left nothing."""
        returncode, left = self.stop(how)
        log = self.log_text()
        assert returncode == 0, f"ros2 launch exit code {returncode} after {how}:\n{log[-3000:]}"
        assert re.search(r"\[ovseg_node-\d+\]: process has finished cleanly", log), f"the node did not exit with 0 after {how}:\n{log[-3000:]}"
        assert not left, f"left running after ros2 launch ended: {left}"


def group_members(group: int) -> list[str]:
    """Command lines of the live processes in process group ``group`` (from /proc)."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            # fields after the parenthesised command: state, ppid, pgrp
            state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == group and state != "Z":
                members.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return members


def kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ros2(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``ros2 ARGS...``; its result (stdout and stderr as text)."""
    return subprocess.run(["ros2", *args], capture_output=True, text=True, timeout=timeout)


def stop_daemon(timeout: float = 20.0) -> None:
    """``ros2 daemon stop``; a daemon that does not answer in ``timeout`` s (seen on Kilted: its
    Fast DDS teardown can hang, as eProsima/Fast-DDS#6066 in the node) is killed, so that no
    process of the test run outlives it."""
    try:
        ros2("daemon", "stop", timeout=timeout)
    except subprocess.TimeoutExpired:
        domain = f"--ros-domain-id {os.environ.get('ROS_DOMAIN_ID', '0')}"
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # not a process, or gone meanwhile
                continue
            if "_ros2_daemon" in command and domain in command:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(proc.name), signal.SIGKILL)


def shell(command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run one command line exactly as written (quotes, comments), as a user's shell would."""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)


def param_get(node: str, name: str, attempts: int = 4) -> str:
    """``ros2 param get`` value text (e.g. ``String value is: cpu``). Retried: here its first
    call after a node came up sometimes gets no answer (../shared/ros2/README.md, known limits)."""
    outputs = []
    for _ in range(attempts):
        try:
            result = ros2("param", "get", "--no-daemon", "--spin-time", "5", "--timeout", "10", node, name, timeout=40.0)
        except subprocess.TimeoutExpired:
            outputs.append("(no answer in 40 s)")
            continue
        if result.returncode == 0 and re.match(r"\w+ (value is|values are):", result.stdout):
            return result.stdout.strip()
        outputs.append((result.stdout + result.stderr).strip())
    raise AssertionError(f"ros2 param get {node} {name}: {outputs}")


def lifecycle_state(peer: Peer, node: str, timeout: float) -> str:
    """The node's lifecycle state label (``active``...) from its ``get_state`` service."""
    client = peer.node.create_client(GetState, f"{node}/get_state")
    try:
        return peer.call(client, GetState.Request(), timeout=timeout).current_state.label
    finally:
        peer.node.destroy_client(client)


def wait_until_active(peer: Peer, launch: LaunchProcess, node: str, timeout: float) -> None:
    """Wait for ``node`` to reach the active state, failing early if ``ros2 launch`` ends."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline and launch.process.poll() is None:
        try:
            state = lifecycle_state(peer, node, timeout=min(10.0, max(1.0, deadline - time.monotonic())))
        except TimeoutError:
            continue
        if state == "active":
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} not active (last state {state}, launch exit code {launch.process.poll()}):\n{launch.log_text()[-3000:]}")


def in_graph(peer: Peer, name: str, namespace: str) -> bool:
    """Whether node ``name`` is in ``namespace``, waiting up to 10 s for the graph to show it."""
    return peer.wait_for(lambda: (name, namespace) in peer.node.get_node_names_and_namespaces(), 10.0, poll=0.2)


def subscriptions_of(peer: Peer, namespace: str, expected: str) -> set[str]:
    """The topics the node ``ovseg`` in ``namespace`` subscribes to, once ``expected`` is
    among them or 10 s have passed (the graph lags behind the node's state)."""
    def topics():
        return {topic for topic, _ in peer.node.get_subscriber_names_and_types_by_node("ovseg", namespace)}

    peer.wait_for(lambda: expected in topics(), 10.0, poll=0.2)
    return topics()


def show_args(text: str) -> dict[str, tuple[str, str]]:
    """``ros2 launch ... --show-args`` output as {argument: (description, default)}."""
    entries = re.findall(r"^    '([^']+)':\n((?:        .*\n)+)", text, flags=re.MULTILINE)
    parsed = {}
    for name, body in entries:
        lines = [line.strip() for line in body.splitlines()]
        default = re.fullmatch(r"\(default: '(.*)'\)", lines[-1])
        parsed[name] = (" ".join(lines[:-1]) if default else " ".join(lines), default.group(1) if default else None)
    return parsed
