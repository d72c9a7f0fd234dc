"""The ovseg node in its own process, driven over real DDS from this process.

The node is started with the launch file's command line (launch_config.node_command) in a
namespace and with its image topic remapped, so these tests also cover the launch
arguments.
"""

import time

import numpy as np
import pytest
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from ovseg_ros.bag import synthetic_frame
from ovseg_ros.harness import NodeProcess, Peer
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import NODE_READY_TIMEOUT_S, TEST_MODEL, answer_timeout

NAMESPACE = "robot1"
CAMERA_TOPIC = "/cam/front/image_raw"
VOCABULARY = ["wall", "floor", "box"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    process = NodeProcess(
        {"namespace": NAMESPACE, "image_topic": CAMERA_TOPIC, "model": TEST_MODEL, "device": "cpu"},
        tmp_path_factory.mktemp("node") / "node.log",
        extra_args=["-p", f"vocabulary:=[{', '.join(VOCABULARY)}]"],
    )
    yield process
    assert process.stop() == 0, process.log_text()[-2000:]


@pytest.fixture(scope="module")
def peer(node):
    peer = Peer("test_peer")
    for topic, kind in (("label", Image), ("color", Image), ("info", SegmentationInfo)):
        peer.record(f"/{NAMESPACE}/segmentation/{topic}", kind)
    ready = peer.wait_for(lambda: peer.node.count_subscribers(CAMERA_TOPIC) > 0 or node.process.poll() is not None, NODE_READY_TIMEOUT_S)
    assert ready and node.process.poll() is None, node.log_text()[-3000:]
    yield peer
    peer.close()


def image_msg(index: int, encoding: str = "rgb8", frame_id: str = "cam_front") -> Image:
    rgb = synthetic_frame(index, 120, 160)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 123456789
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = 120, 160, encoding, 160 * 3
    msg.data = rgb.tobytes()
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


def test_bad_image_is_dropped_and_the_next_good_one_answered(peer, node):
    publisher = peer.node.create_publisher(Image, CAMERA_TOPIC, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    bad = image_msg(20)
    bad.data = bytes(100)  # wrong length for 160x120 rgb8
    publisher.publish(bad)
    unknown = image_msg(21, encoding="yuv422")
    publisher.publish(unknown)
    time.sleep(1.0)
    good = image_msg(22)
    send_and_wait(peer, publisher, good)
    assert not outputs_for(peer, "info", bad.header) and not outputs_for(peer, "info", unknown.header)
    assert node.process.poll() is None
    log = node.log_text()
    assert "expected step x height" in log or "unsupported encoding" in log
