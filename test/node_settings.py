"""Settings and helpers shared by the tests that start the node (one place: every node test imports them from here)."""

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.commands.node_driver import NodeProcess, Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.bags import synthetic_frame

#: A real model in a small configuration, so node tests run on a CPU in seconds per frame.
TEST_MODEL = "san_tiny_dev"
#: Building the model (and the first text encoding) on a slow shared CPU.
NODE_READY_TIMEOUT_S = 180.0


#: The nodes started by the running tests and not yet stopped: a failing test's report shows
#: their logs (conftest.pytest_runtest_makereport).
RUNNING_NODES: list[NodeProcess] = []


def started_node(log_dir: Path, namespace: str, *args: str, vocabulary: list[str] | None = None, image_topic: str | None = None,
                 env: dict[str, str] | None = None, **values: str) -> NodeProcess:
    """The node under test in its own process: the test model on the CPU in ``namespace``, its
    image on ``image_topic`` (default /<namespace>/image_raw), with ``vocabulary`` (default the
    node's), launch ``values`` and more ``--ros-args`` ``args``; log in ``log_dir``. Stop it
    with :func:`stopped`."""
    values = {"namespace": namespace, "model": TEST_MODEL, "device": "cpu", **values}
    if "cameras" not in values:  # one camera
        values["image_topic"] = image_topic or f"/{namespace}/image_raw"
    extra = ["-p", f"vocabulary:=[{', '.join(vocabulary)}]"] if vocabulary is not None else []
    node = NodeProcess(values, log_dir / f"{namespace}.log", extra_args=[*extra, *args], env=env)
    RUNNING_NODES.append(node)
    return node


def stopped(node: NodeProcess) -> int:
    """Stop ``node`` (SIGINT, as ros2 launch does); its exit code."""
    code = node.stop()
    if node in RUNNING_NODES:
        RUNNING_NODES.remove(node)
    return code


@contextmanager
def serving_node(peer: Peer, log_dir: Path, namespace: str, *args: str, ready_topic: str | None = None, class_map_topic: str | None = None,
                 **options) -> Iterator[NodeProcess]:
    """The one DDS node fixture of the tests: a :func:`started_node` (same arguments), waited for
    until it serves (:func:`wait_until_serving` on ``ready_topic``, default its image topic),
    stopped after, and its exit code 0 asserted. While it runs, a failing test shows its log."""
    node = started_node(log_dir, namespace, *args, **options)
    try:
        wait_until_serving(peer, node, ready_topic or options.get("image_topic") or f"/{namespace}/image_raw", class_map_topic)
        yield node
    finally:
        code = stopped(node)
    assert code == 0, f"{namespace} exited with {code}:\n{node.log_text()[-3000:]}"


def wait_until_serving(peer: Peer, node: NodeProcess, camera_topics: str | list[str], class_map_topic: str | None = None) -> None:
    """Until ``peer`` sees the node subscribed to ``camera_topics`` (one or a list; and, given a
    recorded ``class_map_topic``, its latched class map); fails with the node's log if it exits
    or never gets there."""
    topics = [camera_topics] if isinstance(camera_topics, str) else camera_topics

    def subscribed() -> bool:
        return all(peer.node.count_subscribers(topic) > 0 for topic in topics)

    ready = peer.wait_for(lambda: subscribed() or node.process.poll() is not None, NODE_READY_TIMEOUT_S)
    assert ready and node.process.poll() is None, f"ready {ready}, exit code {node.process.poll()}\n{node.log_text()[-3000:]}"
    if class_map_topic is not None:
        assert peer.wait_for(lambda: peer.recordings[class_map_topic].messages, 10.0), "the latched class map"


def matched_image_publisher(peer: Peer, topic: str):
    """A reliable Image publisher on ``topic``, once the node's subscription has matched it."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    publisher = peer.node.create_publisher(Image, topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert peer.wait_for(lambda: publisher.get_subscription_count() > 0, 10.0), f"the node never subscribed to {topic}"
    return publisher


def answer_timeout() -> float:
    """Seconds to wait for the node to answer one frame (CI machines can be slow)."""
    return float(os.environ.get("OVSEG_TEST_ANSWER_TIMEOUT", "60"))


def resend_until(publisher, msg, condition, peer, timeout: float = 20.0) -> bool:
    """Publish ``msg`` once a second until ``condition()``: a first message can be lost
    while discovery is still matching the subscription to a new publisher."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(msg)
        if peer.wait_for(condition, 1.0):
            return True
    return False


def latest_diagnostics(recording, name: str = "ovseg: segmentation", node: str | None = None):
    """The newest diagnostic status ``name`` in ``recording`` and its values ({} before the first);
    with ``node`` (e.g. /ns/ovseg), only that node's: every ovseg node's status has the same name."""
    for array in reversed(recording.decoded()):
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == name and node in (None, values.get("node")):
                return status, values
    return None, {}


FRAME_COUNTERS = ("received", "processed", "dropped", "failed", "ignored", "in_flight")


def fresh_counters(peer, recording, node: str, timeout: float = 10.0) -> dict[str, int]:
    """The frame counters and inference thread count of ``node``'s first diagnostics published from now on."""
    seen = len(recording.messages)

    def fresh() -> dict[str, str]:
        recording_after = type(recording)(recording.topic, recording.msg_type, recording.messages[seen:])
        return latest_diagnostics(recording_after, node=node)[1]

    assert peer.wait_for(fresh, timeout), f"no diagnostics from {node}"
    values = fresh()
    return {**{name: int(values[f"frames_{name}"]) for name in FRAME_COUNTERS}, "inference_threads": int(values["inference_threads"])}


def counters_add_up(counters: dict[str, int]) -> bool:
    """received = processed + dropped + failed + ignored + in_flight."""
    return counters["received"] == sum(counters[name] for name in FRAME_COUNTERS[1:])


class Lifecycle:
    """The lifecycle services of the node at ``node_path`` (e.g. /ns/ovseg), called from ``peer``."""

    def __init__(self, peer, node_path: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self._peer = peer
        self._change = peer.node.create_client(ChangeState, f"{node_path}/change_state")
        self._get = peer.node.create_client(GetState, f"{node_path}/get_state")

    def change(self, transition: str, timeout: float = NODE_READY_TIMEOUT_S) -> bool:
        """Trigger ``transition`` (configure, activate, deactivate, cleanup, shutdown); True on success."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        transition_id = getattr(Transition, f"TRANSITION_{transition.upper()}")
        return self._peer.call(self._change, ChangeState.Request(transition=Transition(id=transition_id)), timeout).success

    def state(self, timeout: float = 30.0) -> str:
        """unconfigured, inactive, active or finalized."""
        from lifecycle_msgs.srv import GetState

        return self._peer.call(self._get, GetState.Request(), timeout).current_state.label


RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def stamped(msg, index: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = 2000 + index, 0
    msg.header.frame_id = "cam"
    return msg


def raw_image(index: int, height: int = 120, width: int = 160) -> Image:
    msg = stamped(Image(), index)
    msg.height, msg.width, msg.encoding, msg.step = height, width, "rgb8", width * 3
    msg.data = message_bytes(synthetic_frame(index, height, width))
    return msg


def answered(recording, index: int) -> bool:
    return any(m.header.stamp.sec == 2000 + index for m in recording.decoded())

#: README's three-camera launch line (test_node_cameras runs it; test_readme_commands checks README has it).
THREE_CAMERA_LAUNCH = 'ros2 launch ovseg_ros segment.launch.py image_topics:="[/front/color/image_raw, /left/color/image_raw, /rear/color/image_raw]" cameras:="[front, left, rear]"'
#: The README's launch lines, run with the test model on the CPU.
TEST_LAUNCH_ARGUMENTS = [f"model:={TEST_MODEL}", "device:=cpu"]


# The lock file of a participant's own segment: fastdds_<id>_el (Fast DDS 3, Kilted) or
# fastrtps_<id>_el (Fast DDS 2, Jazzy); not the <prefix>_port<n>_el of the ports.
_PARTICIPANT_LOCK_FILE = re.compile(r"/dev/shm/(fastdds|fastrtps)_(?!port)\w+_el")


def participant_segments(pid: int) -> set[str]:
    """The Fast DDS shared-memory segment of process ``pid``'s own participant and its lock file
    (``/dev/shm/fastdds_<id>`` and ``..._el``, ``fastrtps_`` on Jazzy; not the ``..._port*``
    ones that every participant on a port shares): the owner keeps the lock file open, while it
    maps the segments of the participants it sends to as well."""
    segments = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if _PARTICIPANT_LOCK_FILE.fullmatch(target):
            segments |= {target, target.removesuffix("_el")}
    return segments
