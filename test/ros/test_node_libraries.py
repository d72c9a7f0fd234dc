"""What the node takes from the ROS libraries, checked over DDS against the running node:
vision_msgs/LabelInfo, camera_info paired to each frame by message_filters, and
/diagnostics from diagnostic_updater (never held up by a cold text encoding)."""

import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import LabelInfo

from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import answer_timeout, latest_diagnostics
from node_settings import answered, raw_image, serving_node

pytestmark = pytest.mark.usefixtures("ros2_tools")

VOCABULARY = ["wall", "floor", "box"]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def peer():
    peer = Peer("test_libraries_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def paired_node(tmp_path_factory, peer):
    """use_camera_info with exact stamps (the default slop 0), min_score 0.25; one torch
    thread, so a big text encoding takes seconds on any machine."""
    args = ["use_camera_info:=true", "min_score:=0.25", "cpu_threads:=1"]
    with serving_node(peer, tmp_path_factory.mktemp("libs"), "libs", *(arg for value in args for arg in ("-p", value)), vocabulary=VOCABULARY) as node:
        yield node


def set_vocabulary(peer: Peer, namespace: str, labels: list[str]):
    client = peer.node.create_client(SetVocabulary, f"/{namespace}/ovseg/set_vocabulary")
    return peer.call(client, SetVocabulary.Request(labels=labels, mode=SetVocabulary.Request.MODE_REPLACE))


def classes_of(label_info: LabelInfo) -> list[tuple[int, str]]:
    return [(c.class_id, c.class_name) for c in label_info.class_map]


def test_vision_label_info_is_latched_and_follows_the_vocabulary(paired_node, peer):
    first_subscriber = peer.record("/libs/segmentation/vision_label_info", LabelInfo, LATCHED)
    assert peer.wait_for(lambda: first_subscriber.messages, 10.0), "a late subscriber gets the current LabelInfo"
    current = first_subscriber.decoded()[-1]
    assert classes_of(current) == list(enumerate(VOCABULARY))
    assert current.threshold == pytest.approx(0.25), "threshold is min_score"

    assert set_vocabulary(peer, "libs", ["spill on floor", "pallet"]).success
    assert peer.wait_for(lambda: classes_of(first_subscriber.decoded()[-1]) == [(0, "spill on floor"), (1, "pallet")], 10.0), "re-sent on a change"
    later_subscriber = peer.record("/libs/segmentation/vision_label_info", LabelInfo, LATCHED)
    assert peer.wait_for(lambda: later_subscriber.messages, 10.0)
    assert [classes_of(m) for m in later_subscriber.decoded()] == [[(0, "spill on floor"), (1, "pallet")]], "only the newest one is latched"
    assert set_vocabulary(peer, "libs", VOCABULARY).success

    set_parameters = peer.node.create_client(SetParameters, "/libs/ovseg/set_parameters")
    for min_score in (0.5, 0.25):
        request = SetParameters.Request(parameters=[Parameter("min_score", Parameter.Type.DOUBLE, min_score).to_parameter_msg()])
        assert peer.call(set_parameters, request).results[0].successful
        assert peer.wait_for(lambda: first_subscriber.decoded()[-1].threshold == pytest.approx(min_score), 10.0), "re-sent when min_score changes"
    assert classes_of(first_subscriber.decoded()[-1]) == list(enumerate(VOCABULARY))


def camera_info(frame: Image, offset_ns: int, fx: float) -> CameraInfo:
    """A camera_info stamped ``offset_ns`` from ``frame`` whose K[0] (fx) tells it apart."""
    stamp_ns = frame.header.stamp.sec * 10**9 + frame.header.stamp.nanosec + offset_ns
    msg = CameraInfo(width=frame.width, height=frame.height, distortion_model="plumb_bob")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = frame.header.frame_id
    msg.k = [fx, 0.0, frame.width / 2, 0.0, fx, frame.height / 2, 0.0, 0.0, 1.0]
    return msg


def check_each_frame_gets_its_own_camera_info(peer: Peer, namespace: str, offset_ns: int, near_decoys_ns: tuple[int, ...]) -> None:
    """Frames, each with its own camera_info (``offset_ns`` from its stamp, fx 100 + index)
    among decoys 0.3 s either side and ``near_decoys_ns`` away (fx >= 900), sent before or
    after the frame: every segmentation/camera_info is the frame's own, with its header."""
    outputs = peer.record(f"/{namespace}/segmentation/camera_info", CameraInfo)
    infos = peer.record(f"/{namespace}/segmentation/info", SegmentationInfo)
    images = peer.node.create_publisher(Image, f"/{namespace}/image_raw", RELIABLE)
    calibration = peer.node.create_publisher(CameraInfo, f"/{namespace}/camera_info", RELIABLE)
    assert peer.wait_for(lambda: images.get_subscription_count() and calibration.get_subscription_count(), 10.0)
    frames = {index: raw_image(index) for index in range(10, 16)}
    for index, frame in frames.items():
        own = camera_info(frame, offset_ns, 100.0 + index)
        decoys = [camera_info(frame, offset, 900.0 + n) for n, offset in enumerate((-3 * 10**8, *near_decoys_ns, 3 * 10**8))]
        # The camera_info comes before its frame, or after it, with decoys around it.
        messages = [(calibration, decoys[0]), (calibration, own), *((calibration, d) for d in decoys[1:])]
        messages = messages + [(images, frame)] if index % 2 else [(images, frame)] + messages
        deadline = time.monotonic() + answer_timeout()
        while not answered(infos, index) and time.monotonic() < deadline:
            for publisher, msg in messages:
                publisher.publish(msg)
                time.sleep(0.01)
            peer.wait_for(lambda: answered(infos, index), 2.0)
        assert answered(infos, index), f"frame {index} with its camera_info was not answered"
    assert peer.wait_for(lambda: {m.header.stamp.sec - 2000 for m in outputs.decoded()} >= set(frames), 5.0)
    for output in outputs.decoded():
        index = output.header.stamp.sec - 2000
        assert output.header == frames[index].header, "republished with the frame's header"
        assert output.k[0] == 100.0 + index, f"frame {index} went out with the camera_info of fx {output.k[0]}"


def test_camera_info_is_paired_with_its_frame_by_stamp(paired_node, peer):
    # Exact stamps (slop 0): a camera_info 1 ms off is another frame's.
    check_each_frame_gets_its_own_camera_info(peer, "libs", 0, near_decoys_ns=(10**6, -(10**6)))


def test_camera_info_pairs_within_the_slop(tmp_path, peer):
    with serving_node(peer, tmp_path, "libs_slop", "-p", "use_camera_info:=true", "-p", "camera_info_sync_slop_s:=0.02"):
        # 5 ms late, as a driver that stamps camera_info on its own; decoys 40 ms away.
        check_each_frame_gets_its_own_camera_info(peer, "libs_slop", 5 * 10**6, near_decoys_ns=(40 * 10**6, -40 * 10**6))


def test_frames_without_their_camera_info_are_not_processed_and_counted(paired_node, peer):
    diagnostics = peer.record("/diagnostics", DiagnosticArray)
    infos = peer.record("/libs/segmentation/info", SegmentationInfo)
    images = peer.node.create_publisher(Image, "/libs/image_raw", RELIABLE)
    calibration = peer.node.create_publisher(CameraInfo, "/libs/camera_info", RELIABLE)
    assert peer.wait_for(lambda: images.get_subscription_count() and calibration.get_subscription_count(), 10.0)
    assert peer.wait_for(lambda: latest_diagnostics(diagnostics, node="/libs/ovseg")[0] is not None, 5.0)
    before = int(latest_diagnostics(diagnostics, node="/libs/ovseg")[1]["frames_unsynchronized"])
    unpaired = range(100, 120)
    for index in unpaired:
        images.publish(raw_image(index))
        calibration.publish(camera_info(raw_image(index), 3 * 10**8, 900.0))  # a camera_info, but not this frame's
        time.sleep(0.05)
    # The synchronizer gives up on a frame once 10 newer ones wait (image_transport's queue).
    assert peer.wait_for(lambda: int(latest_diagnostics(diagnostics, node="/libs/ovseg")[1]["frames_unsynchronized"]) - before >= len(unpaired) - 10, 10.0), latest_diagnostics(diagnostics, node="/libs/ovseg")
    status, values = latest_diagnostics(diagnostics, node="/libs/ovseg")
    assert int(values["frames_unsynchronized"]) - before <= len(unpaired)
    assert status.level == DiagnosticStatus.WARN and "without a camera_info" in status.message
    assert not any(answered(infos, index) for index in unpaired)
    assert "no camera_info with its stamp" in paired_node.log_text()
    # A frame with its camera_info is still answered.
    frame = raw_image(130)
    deadline = time.monotonic() + answer_timeout()
    while not answered(infos, 130) and time.monotonic() < deadline:
        calibration.publish(camera_info(frame, 0, 130.0))
        images.publish(frame)
        peer.wait_for(lambda: answered(infos, 130), 2.0)
    assert answered(infos, 130)


def test_diagnostics_come_from_the_updater_and_keep_coming_during_a_cold_encoding(paired_node, peer):
    diagnostics = peer.record("/diagnostics", DiagnosticArray)
    assert peer.wait_for(lambda: latest_diagnostics(diagnostics, node="/libs/ovseg")[0] is not None, 5.0)
    status, values = latest_diagnostics(diagnostics, node="/libs/ovseg")
    assert status.hardware_id == "cpu" and values["device"] == "cpu" and values["model"]
    assert {"frames_received", "frames_processed", "frames_dropped", "frames_failed", "frames_unsynchronized", "vocabulary_version"} <= set(values)
    period = peer.call(peer.node.create_client(GetParameters, "/libs/ovseg/get_parameters"), GetParameters.Request(names=["diagnostic_updater.period"]))
    assert period.values[0].double_value == 1.0, "the Updater's own parameter"

    # Many classes of many synonyms, never seen before: a cold encoding of several seconds,
    # applied through the parameter service (the node's default callback group).
    # (The text-embedding cache is fresh per test run.)
    names = [", ".join(f"kind{i}sub{j}" for j in range(10)) for i in range(1500)]
    version_before = int(values["vocabulary_version"])
    client = peer.node.create_client(SetParameters, "/libs/ovseg/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    started = time.monotonic()
    future = client.call_async(SetParameters.Request(parameters=[Parameter("vocabulary", Parameter.Type.STRING_ARRAY, names).to_parameter_msg()]))

    def landed() -> bool:
        return int(latest_diagnostics(diagnostics, node="/libs/ovseg")[1]["vocabulary_version"]) > version_before

    assert peer.wait_for(lambda: landed() or (future.done() and not future.result().results[0].successful), 180.0), "the new vocabulary never landed"
    finished = time.monotonic()
    assert peer.wait_for(future.done, 60.0) and future.result().results[0].successful, future.result()
    wall_to_monotonic = time.monotonic() - time.time()
    arrivals = [received / 1e9 + wall_to_monotonic for received, _ in diagnostics.messages]
    during = [t for t in arrivals if started <= t <= finished]
    assert finished - started > 3.0, f"the encoding took only {finished - started:.1f} s: too fast to show anything"
    gaps = [b - a for a, b in zip([started, *during], [*during, finished])]
    assert max(gaps) < 2.5, f"/diagnostics stalled {max(gaps):.1f} s during a {finished - started:.1f} s encoding"
    assert set_vocabulary(peer, "libs", VOCABULARY).success
