"""Several cameras, one model, over DDS: real node processes (and ``ros2 launch``) fed by
simulated cameras at different rates and resolutions.

Each test starts its own node in a namespace of its own. The cameras are threads of the
test's peer publishing frames of one size at one rate, stamped with the wall clock when
sent; each remembers what it sent, so every output can be traced to its camera's frame.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.conversions import stamp_ns
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.srv import SetVocabulary
from ovseg_ros.commands.node_driver import NodeProcess, Peer

from node_settings import FRAME_COUNTERS, NODE_READY_TIMEOUT_S, Lifecycle, answer_timeout, counters_add_up, latest_diagnostics, matched_image_publisher, started_node, stopped, wait_until_serving
from node_settings import TEST_LAUNCH_ARGUMENTS, THREE_CAMERA_LAUNCH
from ros2_cli import LaunchProcess, in_graph, subscriptions_of, wait_until_active

# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here);
# the fixture also gives these DDS tests their reruns (conftest.py).
pytestmark = pytest.mark.usefixtures("ros2_tools")

#: The README's launch line for a 3-camera robot (test_readme_commands checks the README shows it).
VOCABULARY = ["wall", "floor", "box"]
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Distinct frames each camera cycles through (made once: the peer's CPU is the model's too).
FRAMES_PER_CAMERA = 4


class CameraFeed:
    """A simulated camera: publishes ``height`` x ``width`` rgb8 frames at ``rate_hz`` on
    ``topic`` from a thread, each stamped with the wall clock when sent, frame_id ``<name>_optical``."""

    def __init__(self, peer: Peer, name: str, topic: str, height: int, width: int, rate_hz: float) -> None:
        self.name, self.topic, self.height, self.width, self.rate_hz = name, topic, height, width, rate_hz
        self.frame_id = f"{name}_optical"
        self.publisher = matched_image_publisher(peer, topic)
        self._frames = [message_bytes(synthetic_frame(i * 7, height, width)) for i in range(FRAMES_PER_CAMERA)]
        self.sent: list[int] = []  # stamps (ns) in sending order; a stamp is its sending time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def frame(self, index: int, stamp: int) -> Image:
        msg = Image(height=self.height, width=self.width, encoding="rgb8", step=self.width * 3, data=self._frames[index % FRAMES_PER_CAMERA])
        msg.header.frame_id = self.frame_id
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return msg

    def publish_one(self) -> int:
        """Send one frame now; its stamp."""
        stamp = time.time_ns()
        self.publisher.publish(self.frame(len(self.sent), stamp))
        self.sent.append(stamp)
        return stamp

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        start, ticks = time.monotonic(), 0
        while not self._stop.wait(max(0.0, start + ticks / self.rate_hz - time.monotonic())):
            self.publish_one()
            ticks += 1

    def sent_between(self, start_ns: int, end_ns: int) -> set[int]:
        return {stamp for stamp in self.sent if start_ns <= stamp < end_ns}


class CameraOutputs:
    """A camera's recorded label images and infos."""

    def __init__(self, peer: Peer, prefix: str) -> None:
        self.labels = peer.record(f"{prefix}/segmentation/label", Image)
        self.infos = peer.record(f"{prefix}/segmentation/info", SegmentationInfo)

    def info_stamps(self) -> set[int]:
        return {stamp_ns(info.header) for info in self.infos.decoded()}


def start_cameras_node(namespace: str, cameras: list[str], log_dir: Path, extra_args: list[str] = (), env: dict[str, str] | None = None) -> NodeProcess:
    """The node with the test model on the CPU in ``namespace``, camera NAME on ``/<namespace>/NAME/image``
    (the ``cameras`` launch argument without ``image_topics``: no remapping)."""
    return started_node(log_dir, namespace, *extra_args, vocabulary=VOCABULARY, env=env, cameras=f"[{', '.join(cameras)}]")


def camera_statuses(array, node: str) -> dict[str, tuple[DiagnosticStatus, dict[str, str]]]:
    """Status name -> (status, values) of ``node``'s statuses in one DiagnosticArray."""
    statuses = {}
    for status in array.status:
        values = {kv.key: kv.value for kv in status.values}
        if values.get("node") == node:
            statuses[status.name] = (status, values)
    return statuses


def counters_of(values: dict[str, str]) -> dict[str, int]:
    return {name: int(values[f"frames_{name}"]) for name in FRAME_COUNTERS}


def settled_counters(peer: Peer, diagnostics, node: str, names: list[str], timeout: float = 20.0) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Once no frame is in flight: the totals' and each camera's counters, from one diagnostics array."""
    found = {}

    def settled() -> bool:
        for array in reversed(diagnostics.decoded(last=3)):
            statuses = camera_statuses(array, node)
            if all(f"ovseg: camera {name}" in statuses for name in names) and "ovseg: segmentation" in statuses:
                cameras = {name: counters_of(statuses[f"ovseg: camera {name}"][1]) for name in names}
                found["totals"], found["cameras"] = counters_of(statuses["ovseg: segmentation"][1]), cameras
                return found["totals"]["in_flight"] == 0 and all(c["in_flight"] == 0 for c in cameras.values())
        return False

    assert peer.wait_for(settled, timeout, poll=0.2), f"frames still in flight after {timeout} s: {found}"
    return found["totals"], found["cameras"]


def check_counters(totals: dict[str, int], cameras: dict[str, dict[str, int]]) -> None:
    for name, counters in cameras.items():
        assert counters_add_up(counters), f"camera {name}: {counters}"
    assert counters_add_up(totals), totals
    assert totals == {counter: sum(c[counter] for c in cameras.values()) for counter in FRAME_COUNTERS}, f"totals {totals} != the sum of {cameras}"


# -- three cameras, different rates and sizes, one stops ---------------------------------------

THREE_CAMERAS = {  # name -> (height, width, rate Hz); left's 16:9 is a model input size of its own
    "front": (120, 160, 15.0),
    "left": (90, 160, 5.0),
    "rear": (240, 320, 10.0),
}
STOPPED = "rear"
#: A slower model pass, so the three cameras (30 frames/s) overload the model: in each pass
#: the cameras compete for max_batch=2 places, and a scheduler unfair to one camera would starve it.
OVERLOAD_DELAY_S = 0.1
OVERLOAD_MAX_BATCH = 2


def test_three_cameras_own_headers_fair_shares_and_a_stopped_camera(peer, tmp_path):
    namespace = "cams_three"
    node_path = f"/{namespace}/ovseg"
    node = start_cameras_node(namespace, list(THREE_CAMERAS), tmp_path, ["-p", f"max_batch:={OVERLOAD_MAX_BATCH}"], env={"OVSEG_TEST_FRAME_DELAY_S": str(OVERLOAD_DELAY_S)})
    try:
        outputs = {name: CameraOutputs(peer, f"/{namespace}/{name}") for name in THREE_CAMERAS}
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        wait_until_serving(peer, node, [f"/{namespace}/{name}/image" for name in THREE_CAMERAS])
        feeds = {name: CameraFeed(peer, name, f"/{namespace}/{name}/image", h, w, rate) for name, (h, w, rate) in THREE_CAMERAS.items()}

        for feed in feeds.values():
            feed.start()
        assert peer.wait_for(lambda: all(o.infos.messages for o in outputs.values()), answer_timeout()), f"not every camera answered:\n{node.log_text()[-2000:]}"
        all_streaming_from = time.time_ns()  # every camera's first frame is through
        time.sleep(6.0)
        feeds[STOPPED].stop()
        stopped_at = time.time_ns()
        time.sleep(5.0)
        for name, feed in feeds.items():
            if name != STOPPED:
                feed.stop()
        all_stopped_at = time.time_ns()
        settled = settled_counters(peer, diagnostics, node_path, list(THREE_CAMERAS))
        time.sleep(0.5)  # the last outputs' delivery

        # Each camera's outputs carry its own headers: frame_id and a stamp it sent, its size, its name.
        for name, feed in feeds.items():
            sent = set(feed.sent)
            labels, infos = outputs[name].labels.decoded(), outputs[name].infos.decoded()
            assert labels and infos
            for label in labels:
                assert (label.header.frame_id, label.height, label.width) == (feed.frame_id, feed.height, feed.width), f"{name}: {label.header.frame_id} {label.height}x{label.width}"
                assert stamp_ns(label.header) in sent, f"{name}: a label stamped {stamp_ns(label.header)}, which {name} never sent"
            for info in infos:
                assert (info.header.frame_id, info.camera) == (feed.frame_id, name), f"{name}: info of {info.camera!r} with frame_id {info.header.frame_id}"
                assert stamp_ns(info.header) in sent
            assert {stamp_ns(label.header) for label in labels} == outputs[name].info_stamps(), f"{name}: labels and infos of different frames"

        # Fair shares while all three streamed: no camera gets less than half of the smaller of
        # what it sent and an equal share of what was processed. (Served only when the others
        # have nothing, "left" would get nothing: front and rear always have a frame waiting.)
        def shares(names: list[str], start: int, end: int) -> dict[str, tuple[int, int]]:
            return {name: (len(feeds[name].sent_between(start, end)), len(outputs[name].info_stamps() & feeds[name].sent_between(start, end))) for name in names}

        for names, start, end in ((list(THREE_CAMERAS), all_streaming_from, stopped_at), ([n for n in THREE_CAMERAS if n != STOPPED], stopped_at, all_stopped_at)):
            window = shares(names, start, end)
            processed_total = sum(processed for _, processed in window.values())
            print(f"sent, processed per camera: {window}")
            for name, (sent, processed) in window.items():
                assert processed >= 0.5 * min(sent, processed_total / len(names)), f"{name} starved: {window}"
                assert processed > 0, f"{name} got no frame processed: {window}"

        # The stopped camera goes WARN "no frames on <its topic>"; the others stay segmenting.
        def camera_status(array, name):
            return camera_statuses(array, node_path).get(f"ovseg: camera {name}")

        timed_arrays = list(zip((t for t, _ in diagnostics.messages), diagnostics.decoded()))
        before_stop = [array for t, array in timed_arrays if all_streaming_from + 1_500_000_000 < t < stopped_at and camera_status(array, STOPPED)]
        assert before_stop, "no diagnostics while all three streamed"
        status, values = camera_status(before_stop[-1], STOPPED)
        assert (status.level, status.message) == (DiagnosticStatus.OK, "segmenting") and float(values["input_rate_hz"]) > 0, (status, values)
        after_stop = [array for t, array in timed_arrays if stopped_at + 2_500_000_000 < t < all_stopped_at and camera_status(array, STOPPED)]
        assert after_stop, "no diagnostics after the stop"
        status, values = camera_status(after_stop[-1], STOPPED)
        assert status.level == DiagnosticStatus.WARN and status.message == f"no frames on /{namespace}/{STOPPED}/image", (status.level, status.message)
        assert values["image_topic"] == f"/{namespace}/{STOPPED}/image" and values["camera"] == STOPPED and float(values["input_rate_hz"]) == 0.0
        for name in THREE_CAMERAS:
            if name != STOPPED:
                status, values = camera_status(after_stop[-1], name)
                assert (status.level, status.message) == (DiagnosticStatus.OK, "segmenting"), (name, status.level, status.message)
                assert float(values["processed_rate_hz"]) > 0, (name, values)
                assert float(values["latency_p95_ms"]) >= float(values["latency_p50_ms"]) > 0, (name, values)

        # Counters: per camera they add up, the totals are their sum; the overloaded cameras dropped frames.
        totals, cameras = settled
        check_counters(totals, cameras)
        for name, counters in cameras.items():
            assert 0 < counters["received"] <= len(feeds[name].sent), (name, counters)
        assert cameras["front"]["dropped"] > 0 and cameras["rear"]["dropped"] > 0, f"the model was not overloaded: {cameras}"
        _, totals_values = latest_diagnostics(diagnostics, node=node_path)
        assert totals_values["cameras"] == ", ".join(repr(name) for name in THREE_CAMERAS)

        # Batches of several cameras, never more than max_batch frames.
        infos = [info for o in outputs.values() for info in o.infos.decoded()]
        assert max(info.batch_size for info in infos) == OVERLOAD_MAX_BATCH, sorted({info.batch_size for info in infos})
        cameras_by_pass = defaultdict(set)
        for info in infos:
            cameras_by_pass[info.model_pass].add(info.camera)
        assert any(len(names) > 1 for names in cameras_by_pass.values()), "no model pass had frames of two cameras"
        for info in infos:
            assert 1 <= info.batch_size <= OVERLOAD_MAX_BATCH and len(cameras_by_pass[info.model_pass]) <= info.batch_size
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]


# -- a vocabulary change while three cameras stream --------------------------------------------

#: Model passes of over half a second: full batches, and the change lands while one is in flight.
VOCABULARY_DELAY_S = 0.6
NEW_VOCABULARY = ["person", "table", "chair", "door"]


def test_vocabulary_change_applies_to_every_camera_from_one_model_pass_on(peer, tmp_path):
    namespace = "cams_vocabulary"
    node_path = f"/{namespace}/ovseg"
    cameras = {"front": (120, 160, 10.0), "left": (90, 120, 8.0), "rear": (120, 160, 12.0)}
    node = start_cameras_node(namespace, list(cameras), tmp_path, env={"OVSEG_TEST_FRAME_DELAY_S": str(VOCABULARY_DELAY_S)})
    try:
        outputs = {name: CameraOutputs(peer, f"/{namespace}/{name}") for name in cameras}
        class_maps = peer.record(f"/{namespace}/segmentation/label_info", ClassMap, LATCHED)
        wait_until_serving(peer, node, [f"/{namespace}/{name}/image" for name in cameras])
        assert peer.wait_for(lambda: class_maps.messages, 10.0), "the latched class map"
        service = peer.node.create_client(SetVocabulary, f"{node_path}/set_vocabulary")
        feeds = {name: CameraFeed(peer, name, f"/{namespace}/{name}/image", h, w, rate) for name, (h, w, rate) in cameras.items()}
        for feed in feeds.values():
            feed.start()
        assert peer.wait_for(lambda: all(len(o.infos.messages) >= 3 for o in outputs.values()), answer_timeout()), node.log_text()[-2000:]
        old_version = class_maps.decoded()[-1].vocabulary_version
        response = peer.call(service, SetVocabulary.Request(labels=NEW_VOCABULARY, mode=SetVocabulary.Request.MODE_REPLACE))
        answered_at = time.time_ns()
        assert response.success, response.message
        new_version = response.vocabulary_version
        assert new_version > old_version and list(response.class_names) == NEW_VOCABULARY
        assert peer.wait_for(lambda: all(any(info.vocabulary_version == new_version for info in o.infos.decoded()) for o in outputs.values()), answer_timeout())
        time.sleep(2.0)
        for feed in feeds.values():
            feed.stop()
        time.sleep(2.0 * VOCABULARY_DELAY_S + 1.0)  # the passes in flight come out

        timed_infos = [(t, info) for o in outputs.values() for t, info in zip((t for t, _ in o.infos.messages), o.infos.decoded())]
        versions_by_pass = defaultdict(set)
        cameras_by_pass = defaultdict(set)
        for _, info in timed_infos:
            versions_by_pass[info.model_pass].add(info.vocabulary_version)
            cameras_by_pass[info.model_pass].add(info.camera)
        assert all(len(versions) == 1 for versions in versions_by_pass.values()), {p: v for p, v in versions_by_pass.items() if len(v) > 1}
        passes = sorted(versions_by_pass)
        pass_versions = [next(iter(versions_by_pass[p])) for p in passes]
        assert pass_versions == sorted(pass_versions), f"a version went back: {list(zip(passes, pass_versions))}"
        assert set(pass_versions) == {old_version, new_version}, set(pass_versions)
        # One boundary for all cameras: every frame of a pass from the first new one on has the new version.
        first_new = min(p for p, v in zip(passes, pass_versions) if v == new_version)
        print(f"model passes {passes[0]}..{passes[-1]}, first with v{new_version}: {first_new}; cameras per pass: {[len(cameras_by_pass[p]) for p in passes]}")
        for _, info in timed_infos:
            expected = new_version if info.model_pass >= first_new else old_version
            assert info.vocabulary_version == expected, f"{info.camera} pass {info.model_pass}: v{info.vocabulary_version}, first new pass {first_new}"
            assert list(info.class_names) == (NEW_VOCABULARY if expected == new_version else VOCABULARY)
        for name in cameras:
            assert {info.vocabulary_version for _, info in timed_infos if info.camera == name} == {old_version, new_version}, name
        # The passes were batches of several cameras on both sides of the boundary ...
        last_old = max(p for p in passes if p < first_new)
        assert len(cameras_by_pass[last_old]) > 1 and len(cameras_by_pass[first_new]) > 1, (cameras_by_pass[last_old], cameras_by_pass[first_new])
        # ... and the change came while a pass was in flight: it came out with the old vocabulary after the answer.
        assert any(t > answered_at and info.vocabulary_version == old_version for t, info in timed_infos), "no old-vocabulary frame came after the answer"
        # Its class map was published before any frame labeled with it.
        new_map_at = min(t for (t, _), class_map in zip(class_maps.messages, class_maps.decoded()) if class_map.vocabulary_version == new_version)
        assert new_map_at <= min(t for t, info in timed_infos if info.vocabulary_version == new_version) + 50_000_000
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]


# -- the README's 3-camera launch line ---------------------------------------------------------


def test_readme_three_camera_launch_line(peer, tmp_path):

    class_maps = peer.record("/segmentation/label_info", ClassMap, LATCHED)
    left = CameraOutputs(peer, "/left")
    launch = LaunchProcess(shlex.split(THREE_CAMERA_LAUNCH) + TEST_LAUNCH_ARGUMENTS, tmp_path / "launch.log")
    try:
        wait_until_active(peer, launch, "/ovseg", NODE_READY_TIMEOUT_S)
        assert in_graph(peer, "ovseg", "/")  # the graph lags behind the node's services
        topics = [f"/{name}/color/image_raw" for name in ("front", "left", "rear")]
        subscribed = subscriptions_of(peer, "/", topics[-1])
        assert set(topics) <= subscribed, subscribed
        publisher = matched_image_publisher(peer, "/left/color/image_raw")
        frame = Image(height=90, width=120, encoding="rgb8", step=120 * 3, data=message_bytes(synthetic_frame(5, 90, 120)))
        frame.header.stamp.sec, frame.header.stamp.nanosec, frame.header.frame_id = 5, 123, "left_color_optical_frame"
        deadline = time.monotonic() + answer_timeout()
        while time.monotonic() < deadline and not left.labels.messages:
            publisher.publish(frame)
            peer.wait_for(lambda: left.labels.messages, 2.0)
        assert left.labels.messages, f"no /left/segmentation/label for a frame on /left/color/image_raw:\n{launch.log_text()[-2000:]}"
        label = left.labels.decoded()[0]
        assert (label.header, label.height, label.width) == (frame.header, 90, 120)
        assert left.infos.decoded()[0].camera == "left"
        # One class map for all cameras, in the node's namespace.
        published = {topic for topic, _ in peer.node.get_publisher_names_and_types_by_node("ovseg", "/")}
        assert {f"/{name}/segmentation/label" for name in ("front", "left", "rear")} <= published, published
        assert "/segmentation/label_info" in published and not any(topic.endswith("/segmentation/label_info") and topic != "/segmentation/label_info" for topic in published), published
        assert len(class_maps.messages) == 1 and list(class_maps.decoded()[0].class_names), class_maps.decoded()
    finally:
        launch.check_stopped("ctrl-c")


# -- a bad cameras parameter, then a good one ---------------------------------------------------


def test_bad_cameras_leave_the_node_unconfigured_until_good_ones_are_set(peer, tmp_path):
    namespace = "cams_bad"
    node_path = f"/{namespace}/ovseg"
    node = started_node(tmp_path, namespace, "-p", "cameras:=[front, front]", vocabulary=VOCABULARY, image_topic=f"/{namespace}/image_raw")
    try:
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        lifecycle = Lifecycle(peer, node_path)
        parameters = peer.node.create_client(SetParameters, f"{node_path}/set_parameters")

        def error_status(expected: str):
            def matches():
                status, _ = latest_diagnostics(diagnostics, node=node_path)
                return status is not None and status.level == DiagnosticStatus.ERROR and status.message.startswith(expected)

            assert peer.wait_for(matches, NODE_READY_TIMEOUT_S), f"{latest_diagnostics(diagnostics, node=node_path)[0]}\n{node.log_text()[-2000:]}"
            assert node.process.poll() is None and lifecycle.state() == "unconfigured"

        error_status("not configured: ValueError: cameras names a camera twice: 'front'")

        def set_cameras(names: list[str]):
            return peer.call(parameters, SetParameters.Request(parameters=[Parameter("cameras", value=names).to_parameter_msg()])).results[0]

        refused = set_cameras(["2cam"])
        assert not refused.successful and "not a relative topic name for a camera: '2cam'" in refused.reason, refused
        assert not lifecycle.change("configure"), "still [front, front]"
        error_status("not configured: ValueError: cameras names a camera twice: 'front'")

        assert set_cameras(["front", "rear"]).successful
        assert lifecycle.change("configure") and lifecycle.change("activate"), node.log_text()[-2000:]
        rear = CameraOutputs(peer, f"/{namespace}/rear")
        feed = CameraFeed(peer, "rear", f"/{namespace}/rear/image", 90, 120, 5.0)
        deadline = time.monotonic() + answer_timeout()
        while time.monotonic() < deadline and not rear.infos.messages:
            feed.publish_one()
            peer.wait_for(lambda: rear.infos.messages, 2.0)
        info = rear.infos.decoded()[0]
        assert (info.camera, info.header.frame_id) == ("rear", feed.frame_id) and stamp_ns(info.header) in feed.sent

        def serving() -> bool:
            status, values = latest_diagnostics(diagnostics, node=node_path)
            return status is not None and status.level != DiagnosticStatus.ERROR and values.get("cameras") == "'front', 'rear'"

        assert peer.wait_for(serving, 10.0), latest_diagnostics(diagnostics, node=node_path)
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]


# -- deactivate while a batch of two cameras is in flight ------------------------------------

RACE_DELAY_S = 0.3


def test_deactivate_during_a_batch_publishes_nothing_then_both_cameras_resume(peer, tmp_path):
    namespace = "cams_race"
    node_path = f"/{namespace}/ovseg"
    cameras = {"front": (120, 160, 10.0), "rear": (90, 120, 10.0)}
    node = start_cameras_node(namespace, list(cameras), tmp_path, env={"OVSEG_TEST_FRAME_DELAY_S": str(RACE_DELAY_S)})
    try:
        outputs = {name: CameraOutputs(peer, f"/{namespace}/{name}") for name in cameras}
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        lifecycle = Lifecycle(peer, node_path)
        wait_until_serving(peer, node, [f"/{namespace}/{name}/image" for name in cameras])
        feeds = {name: CameraFeed(peer, name, f"/{namespace}/{name}/image", h, w, rate) for name, (h, w, rate) in cameras.items()}
        for feed in feeds.values():
            feed.start()
        assert peer.wait_for(lambda: all(len(o.infos.messages) >= 3 for o in outputs.values()), answer_timeout()), node.log_text()[-2000:]

        def info_count() -> int:
            return sum(len(o.infos.messages) for o in outputs.values())

        # Right after a frame came out, the next pass (over RACE_DELAY_S long) is in flight.
        seen = info_count()
        assert peer.wait_for(lambda: info_count() > seen, 10.0, poll=0.001)
        assert lifecycle.change("deactivate")
        deactivated_at = time.time_ns()
        last_pass_before = max(info.model_pass for o in outputs.values() for info in o.infos.decoded())
        time.sleep(1.5)  # frames keep coming while inactive
        activating_at = time.time_ns()
        assert lifecycle.change("activate")
        assert peer.wait_for(lambda: all(any(stamp_ns(i.header) > activating_at for i in o.infos.decoded()) for o in outputs.values()), answer_timeout()), "a camera was not served after activate"
        time.sleep(1.0)
        for feed in feeds.values():
            feed.stop()
        totals, per_camera = settled_counters(peer, diagnostics, node_path, list(cameras))
        time.sleep(0.5)

        # Nothing came out while inactive (a message published just before deactivate returned may still be on its way).
        for name, o in outputs.items():
            for recording in (o.labels, o.infos):
                late = [t for t, _ in recording.messages if deactivated_at + 100_000_000 < t < activating_at]
                assert not late, f"{recording.topic}: {len(late)} messages while inactive"
            # No frame sent while inactive was published later.
            inactive_frames = feeds[name].sent_between(deactivated_at, activating_at - 300_000_000)
            assert inactive_frames and not (o.info_stamps() & inactive_frames), f"{name}: frames sent while inactive were published"
            assert not ({stamp_ns(label.header) for label in o.labels.decoded()} & inactive_frames)
        # The batch in flight at deactivate ran, and was not published.
        first_pass_after = min(info.model_pass for o in outputs.values() for info in o.infos.decoded() if stamp_ns(info.header) > deactivated_at)
        assert first_pass_after > last_pass_before + 1, f"passes {last_pass_before} -> {first_pass_after}: no pass was in flight at deactivate"
        check_counters(totals, per_camera)
        for name, counters in per_camera.items():
            assert counters["ignored"] > 0 and counters["processed"] == len(outputs[name].infos.messages), (name, counters, len(outputs[name].infos.messages))
        assert lifecycle.state() == "active" and node.process.poll() is None
        assert "Traceback" not in node.log_text()
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]
