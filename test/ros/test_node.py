"""The ovseg node in its own process, driven over real DDS from this process.

The node is started with the launch file's command line (launch_config.node_command) in a
namespace and with its image topic remapped, so these tests also cover the launch
arguments.
"""

import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import TEST_MODEL, answer_timeout, latest_diagnostics, resend_until, serving_node

# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools", "node")

NAMESPACE = "robot1"
CAMERA_TOPIC = "/cam/front/image_raw"
VOCABULARY = ["wall", "floor", "box"]
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def node(tmp_path_factory, peer):
    with serving_node(peer, tmp_path_factory.mktemp("node"), NAMESPACE, vocabulary=VOCABULARY, image_topic=CAMERA_TOPIC) as process:
        yield process


@pytest.fixture(scope="module")
def peer():
    peer = Peer("test_peer")
    for topic, kind in (("label", Image), ("color", Image), ("info", SegmentationInfo)):
        peer.record(f"/{NAMESPACE}/segmentation/{topic}", kind)
    yield peer
    peer.close()


def image_msg(index: int, encoding: str = "rgb8", frame_id: str = "cam_front") -> Image:
    rgb = synthetic_frame(index, 120, 160)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 123456789
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = 120, 160, encoding, 160 * 3
    msg.data = message_bytes(rgb)
    return msg


def send_and_wait(peer: Peer, publisher, msg: Image, timeout: float | None = None) -> SegmentationInfo:
    """Publish ``msg`` (re-sending while unanswered: best effort may drop it) and return its info."""
    info_topic = f"/{NAMESPACE}/segmentation/info"
    deadline = time.monotonic() + (timeout or answer_timeout())
    while time.monotonic() < deadline:
        publisher.publish(msg)
        if peer.wait_for(lambda: any(_same_header(i.header, msg.header) for i in peer.recordings[info_topic].decoded()), 2.0, poll=0.1):
            return next(i for i in peer.recordings[info_topic].decoded() if _same_header(i.header, msg.header))
    raise AssertionError(f"no answer to frame {msg.header.stamp.sec}")


def _same_header(a, b) -> bool:
    return (a.stamp.sec, a.stamp.nanosec, a.frame_id) == (b.stamp.sec, b.stamp.nanosec, b.frame_id)


def outputs_for(peer: Peer, topic: str, header) -> list:
    return [m for m in peer.recordings[f"/{NAMESPACE}/segmentation/{topic}"].decoded() if _same_header(m.header, header)]


@pytest.mark.parametrize("reliability", [ReliabilityPolicy.BEST_EFFORT, ReliabilityPolicy.RELIABLE])
def test_every_output_carries_the_input_header(peer, reliability):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, QoSProfile(depth=1, reliability=reliability))
    msg = image_msg(int(reliability))
    info = send_and_wait(peer, publisher, msg)
    assert peer.wait_for(lambda: outputs_for(peer, "label", msg.header) and outputs_for(peer, "color", msg.header), 5.0)
    label = outputs_for(peer, "label", msg.header)[0]
    color = outputs_for(peer, "color", msg.header)[0]
    assert (label.encoding, label.height, label.width) == ("mono8", 120, 160)
    assert (color.encoding, color.height, color.width) == ("rgb8", 120, 160)
    labels = np.frombuffer(bytes(label.data), np.uint8).reshape(120, 160)
    assert set(np.unique(labels)) <= set(range(len(VOCABULARY))) | {255}
    assert list(info.class_names) == VOCABULARY and info.vocabulary_version >= 1
    assert info.model == TEST_MODEL
    assert sum(info.pixel_fractions) == pytest.approx(np.mean(labels != 255), abs=1e-5)
    assert list(info.present_class_ids) == sorted(set(np.unique(labels)) - {255})
    assert info.model_ms > 0 and info.end_to_end_ms > 0


def test_san_models_smooth_with_optical_flow_by_default(peer, node):
    assert "temporal smoothing: flow" in node.log_text()


def test_set_vocabulary_service_changes_classes_and_parameter(peer):
    client = peer.node.create_client(SetVocabulary, f"/{NAMESPACE}/ovseg/set_vocabulary")
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
    before = send_and_wait(peer, publisher, image_msg(10))

    request = SetVocabulary.Request(labels=["person", "sofa, couch"], mode=SetVocabulary.Request.MODE_REPLACE)
    response = peer.call(client, request)
    assert response.success, response.message
    assert list(response.class_names) == ["person", "sofa, couch"]
    assert response.vocabulary_version == before.vocabulary_version + 1

    after = send_and_wait(peer, publisher, image_msg(11))
    assert list(after.class_names) == ["person", "sofa, couch"] and after.vocabulary_version == response.vocabulary_version

    params = peer.node.create_client(GetParameters, f"/{NAMESPACE}/ovseg/get_parameters")
    value = peer.call(params, GetParameters.Request(names=["vocabulary"])).values[0]
    assert value.type == ParameterType.PARAMETER_STRING_ARRAY and list(value.string_array_value) == ["person", "sofa, couch"]

    refused = peer.call(client, SetVocabulary.Request(labels=["person"], mode=SetVocabulary.Request.MODE_ADD))
    assert not refused.success and "duplicates" in refused.message
    assert list(refused.class_names) == ["person", "sofa, couch"] and refused.vocabulary_version == response.vocabulary_version

    restored = peer.call(client, SetVocabulary.Request(labels=VOCABULARY, mode=SetVocabulary.Request.MODE_REPLACE))
    assert restored.success


def mask_topic(name: str) -> str:
    return f"/{NAMESPACE}/segmentation/masks/{name}"


def set_vocabulary(peer: Peer, labels: list[str], mode: int = SetVocabulary.Request.MODE_REPLACE):
    client = peer.node.create_client(SetVocabulary, f"/{NAMESPACE}/ovseg/set_vocabulary")
    return peer.call(client, SetVocabulary.Request(labels=labels, mode=mode))


def test_class_map_is_latched_and_follows_the_vocabulary(peer):
    late = peer.record(f"/{NAMESPACE}/segmentation/label_info", ClassMap, LATCHED)
    assert peer.wait_for(lambda: late.messages, 10.0), "a late subscriber gets the current class map"
    first = late.decoded()[-1]
    assert list(first.class_names) == VOCABULARY and first.unlabeled_id == 255
    assert list(first.mask_topics) == [f"segmentation/masks/{name}" for name in VOCABULARY]
    response = set_vocabulary(peer, ["spill on floor", "Pallet"])
    assert peer.wait_for(lambda: late.decoded()[-1].vocabulary_version == response.vocabulary_version, 10.0)
    assert list(late.decoded()[-1].mask_topics) == ["segmentation/masks/spill_on_floor", "segmentation/masks/pallet"]
    assert set_vocabulary(peer, VOCABULARY).success


def test_mask_topics_appear_and_disappear_with_classes(peer):
    assert peer.wait_for(lambda: peer.node.count_publishers(mask_topic("box")) == 1, 10.0)
    assert set_vocabulary(peer, ["forklift"], SetVocabulary.Request.MODE_ADD).success
    assert peer.wait_for(lambda: peer.node.count_publishers(mask_topic("forklift")) == 1, 10.0)
    assert set_vocabulary(peer, ["box", "forklift"], SetVocabulary.Request.MODE_REMOVE).success
    assert peer.wait_for(lambda: peer.node.count_publishers(mask_topic("box")) == 0 and peer.node.count_publishers(mask_topic("forklift")) == 0, 10.0)
    assert peer.node.count_publishers(mask_topic("wall")) == 1
    assert set_vocabulary(peer, VOCABULARY).success


def test_masks_overlay_and_confidence_match_the_labels(peer):
    for topic in ("masks/floor", "overlay", "confidence"):
        peer.record(f"/{NAMESPACE}/segmentation/{topic}", Image)
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    time.sleep(1.0)  # let the node see the new subscribers
    msg = image_msg(30)
    send_and_wait(peer, publisher, msg)
    assert peer.wait_for(lambda: all(outputs_for(peer, t, msg.header) for t in ("masks/floor", "overlay", "confidence", "label")), 5.0)
    labels = as_array(outputs_for(peer, "label", msg.header)[0])
    mask = as_array(outputs_for(peer, "masks/floor", msg.header)[0])
    assert np.array_equal(mask, np.where(labels == VOCABULARY.index("floor"), 255, 0))
    overlay = outputs_for(peer, "overlay", msg.header)[0]
    confidence = outputs_for(peer, "confidence", msg.header)[0]
    assert (overlay.encoding, confidence.encoding) == ("rgb8", "mono8")
    assert as_array(overlay).shape == (120, 160, 3) and as_array(confidence).shape == (120, 160)


def test_labels_switch_to_mono16_above_254_classes(peer):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    many = [f"object {i}" for i in range(255)]
    response = set_vocabulary(peer, many)
    assert response.success and len(response.class_names) == 255
    msg = image_msg(40)
    info = send_and_wait(peer, publisher, msg)
    assert peer.wait_for(lambda: outputs_for(peer, "label", msg.header), 5.0)
    label = outputs_for(peer, "label", msg.header)[0]
    assert label.encoding == "mono16" and info.vocabulary_version == response.vocabulary_version
    assert as_array(label).max() < 255
    assert set_vocabulary(peer, many[:254]).success
    msg = image_msg(41)
    send_and_wait(peer, publisher, msg)
    assert peer.wait_for(lambda: outputs_for(peer, "label", msg.header), 5.0)
    assert outputs_for(peer, "label", msg.header)[0].encoding == "mono8"
    assert set_vocabulary(peer, VOCABULARY).success


def test_vocabulary_changes_while_streaming_never_mix_within_a_frame(peer):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    vocabularies = (["wall", "floor"], ["sky", "tree", "road", "car", "person"])
    names_by_version = {}
    stop = threading.Event()

    def stream():
        index = 100
        while not stop.is_set():
            publisher.publish(image_msg(index))
            index += 1
            time.sleep(0.05)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        for round_ in range(6):
            response = set_vocabulary(peer, vocabularies[round_ % 2])
            assert response.success
            names_by_version[response.vocabulary_version] = list(response.class_names)
            time.sleep(0.4)
    finally:
        stop.set()
        streamer.join()
    time.sleep(1.0)
    infos = [i for i in peer.recordings[f"/{NAMESPACE}/segmentation/info"].decoded() if i.header.stamp.sec >= 1100]
    labels = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in outputs_for_all(peer, "label") if m.header.stamp.sec >= 1100}
    seen_versions = {i.vocabulary_version for i in infos}
    assert len(seen_versions & set(names_by_version)) >= 3, "frames were labeled by several vocabularies"
    for info in infos:
        if info.vocabulary_version in names_by_version:
            assert list(info.class_names) == names_by_version[info.vocabulary_version]
        label = labels.get((info.header.stamp.sec, info.header.stamp.nanosec))
        if label is not None:
            assert as_array(label).max() < len(info.class_names)
    versions = [i.vocabulary_version for i in infos]
    assert versions == sorted(versions), "a frame is never labeled by an older vocabulary than the one before it"
    assert set_vocabulary(peer, VOCABULARY).success


def test_vocabulary_parameter_validates_and_applies(peer):
    client = peer.node.create_client(SetParameters, f"/{NAMESPACE}/ovseg/set_parameters")
    bad = Parameter("vocabulary", Parameter.Type.STRING_ARRAY, ["cat", "Cat"]).to_parameter_msg()
    result = peer.call(client, SetParameters.Request(parameters=[bad])).results[0]
    assert not result.successful and "duplicates" in result.reason
    good = Parameter("vocabulary", Parameter.Type.STRING_ARRAY, ["cat", "dog"]).to_parameter_msg()
    assert peer.call(client, SetParameters.Request(parameters=[good])).results[0].successful
    # Accepted at once, encoded after: the class map says when it is in effect.
    class_map = peer.record(f"/{NAMESPACE}/segmentation/label_info", ClassMap, LATCHED)
    assert peer.wait_for(lambda: class_map.messages and list(class_map.decoded()[-1].class_names) == ["cat", "dog"], 20.0)
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    assert list(send_and_wait(peer, publisher, image_msg(50)).class_names) == ["cat", "dog"]
    read_only = Parameter("model", Parameter.Type.STRING, "san_vit_b_16").to_parameter_msg()
    assert not peer.call(client, SetParameters.Request(parameters=[read_only])).results[0].successful
    assert set_vocabulary(peer, VOCABULARY).success


@pytest.fixture(scope="module")
def diagnostics(peer):
    return peer.record("/diagnostics", DiagnosticArray)


def test_diagnostics_report_rates_drops_latency_and_model(peer, diagnostics):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    send_and_wait(peer, publisher, image_msg(60))
    assert peer.wait_for(lambda: int(latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")[1].get("frames_processed", 0)) >= 1, 5.0)
    status, values = latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")
    assert values["model"] == TEST_MODEL and values["device"] == "cpu" and values["vocabulary_size"] == "3"
    assert int(values["frames_processed"]) >= 1 and int(values["frames_received"]) >= int(values["frames_processed"])
    assert {"input_rate_hz", "processed_rate_hz", "frames_dropped", "latency_p50_ms", "latency_p95_ms"} <= set(values)
    assert status.level == DiagnosticStatus.WARN and "RANDOM weights" in status.message


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda m: setattr(m, "data", bytes(100)), "expected step x height"),
        (lambda m: setattr(m, "encoding", "nv24"), "unsupported encoding"),
        (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "zero size"),
        (lambda m: (setattr(m, "width", 10000), setattr(m, "height", 10000), setattr(m, "step", 30000)), "pixel limit"),
        (lambda m: setattr(m, "step", 10), "less than width"),
    ],
)
def test_each_bad_image_is_reported_and_the_next_good_one_answered(peer, node, diagnostics, mangle, reason):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    bad = image_msg(70)
    mangle(bad)
    assert resend_until(publisher, bad, lambda: reason in latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")[1].get("last_frame_error", ""), peer)
    good = image_msg(71)
    send_and_wait(peer, publisher, good)
    assert not outputs_for(peer, "info", bad.header)
    assert "dropped frame, bad image" in node.log_text()
    assert node.process.poll() is None


def outputs_for_all(peer: Peer, topic: str) -> list:
    return peer.recordings[f"/{NAMESPACE}/segmentation/{topic}"].decoded()


def as_array(msg: Image) -> np.ndarray:
    dtype = {"mono8": np.uint8, "mono16": np.uint16, "rgb8": np.uint8}[msg.encoding]
    channels = 3 if msg.encoding == "rgb8" else 1
    pixels = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, channels)
    return pixels[..., 0] if channels == 1 else pixels


@pytest.mark.parametrize(
    "labels, reason",
    [
        ([], "empty"),
        (["person", " "], "class 1 is empty"),
        (["person", "PERSON"], "duplicates"),
        (["x" * 200], "200 characters"),
        ([f"c{i}" for i in range(65536)], "at most 65535"),
    ],
)
def test_bad_vocabularies_are_refused_and_the_old_one_kept(peer, labels, reason):
    before = set_vocabulary(peer, VOCABULARY)
    response = set_vocabulary(peer, labels)
    assert not response.success and reason in response.message
    assert list(response.class_names) == VOCABULARY and response.vocabulary_version == before.vocabulary_version


def test_non_ascii_names_work_and_get_valid_topic_names(peer):
    response = set_vocabulary(peer, ["café table", "Straße", "日本"])
    assert response.success
    for topic in ("cafe_table", "strae", "class_2"):
        assert peer.wait_for(lambda topic=topic: peer.node.count_publishers(mask_topic(topic)) == 1, 10.0), topic
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
    assert list(send_and_wait(peer, publisher, image_msg(80)).class_names) == ["café table", "Straße", "日本"]
    assert set_vocabulary(peer, VOCABULARY).success
