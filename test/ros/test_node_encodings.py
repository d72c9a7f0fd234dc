"""The node over DDS, in its own process, with a frame of each encoding family: YUV 4:2:2
(yuv422, yuyv), YUV 4:2:0 (nv12, padded rows), Bayer 8-bit (odd size) and 16-bit
(big-endian, 12-bit data) and 8UC3 each come back as a label image with the frame's header
and size; a 16UC1 frame is counted failed with the depth-encoding error in /diagnostics and
the log, and the node keeps serving.

The decoding itself is checked pixel by pixel in test_image_codec.py. Every wait is bounded
(node start NODE_READY_TIMEOUT_S, each frame answer_timeout()).
"""

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.bags import synthetic_frame

from node_settings import answer_timeout, counters_add_up, fresh_counters, latest_diagnostics, matched_image_publisher, resend_until, serving_node

# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools", "node")

NAMESPACE = "enc"
CAMERA_TOPIC = f"/{NAMESPACE}/image_raw"
NODE = f"/{NAMESPACE}/ovseg"
DEPTH_ERROR = "16UC1 is a depth encoding: send it on the depth topic"


@pytest.fixture(scope="module")
def peer():
    peer = Peer("test_encodings_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, peer):
    with serving_node(peer, tmp_path_factory.mktemp("encodings"), NAMESPACE, vocabulary=["wall", "floor", "box"]) as process:
        yield process


@pytest.fixture(scope="module")
def io(node, peer):
    labels = peer.record(f"/{NAMESPACE}/segmentation/label", Image)
    diagnostics = peer.record("/diagnostics", DiagnosticArray)
    return matched_image_publisher(peer, CAMERA_TOPIC), labels, diagnostics


def frame(index: int, encoding: str, height: int, width: int, step: int, rows: np.ndarray, bigendian: bool = False) -> Image:
    """An Image of ``rows`` (uint8, one row of data per row, padded to ``step`` with 0xAB), stamped 3000 + index."""
    padded = np.full((rows.shape[0], step), 0xAB, np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=int(bigendian))
    msg.header.stamp.sec, msg.header.stamp.nanosec = 3000 + index, 1234
    msg.header.frame_id = f"cam_{encoding}"
    msg.data = message_bytes(padded)
    return msg


def as_rows(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)


def yuv422(index: int, encoding: str) -> Image:
    code = cv2.COLOR_RGB2YUV_UYVY if encoding in ("yuv422", "uyvy") else cv2.COLOR_RGB2YUV_YUY2
    return frame(index, encoding, 120, 160, 320, as_rows(cv2.cvtColor(synthetic_frame(index, 120, 160), code)))


def nv12(index: int) -> Image:
    height, width = 120, 160
    i420 = cv2.cvtColor(synthetic_frame(index, height, width), cv2.COLOR_RGB2YUV_I420)
    chroma = i420[height:].ravel()
    u, v = (plane.reshape(height // 2, width // 2) for plane in np.split(chroma, 2))
    semi_planar = np.vstack([i420[:height], np.dstack([u, v]).reshape(height // 2, width)])
    return frame(index, "nv12", height, width, width + 32, semi_planar)


def bayer(index: int, pattern: str, bits: int, height: int, width: int) -> Image:
    rgb = synthetic_frame(index, height, width)
    values = rgb.astype(np.uint16) * 16 if bits == 16 else rgb  # 16-bit: 12-bit data, sent big-endian
    mosaic = np.empty((height, width), values.dtype)
    for position, colour in enumerate(pattern):
        dy, dx = divmod(position, 2)
        mosaic[dy::2, dx::2] = values[dy::2, dx::2, "rgb".index(colour)]
    if bits == 16:
        return frame(index, f"bayer_{pattern}16", height, width, width * 2, as_rows(mosaic.astype(">u2")), bigendian=True)
    return frame(index, f"bayer_{pattern}8", height, width, width + 3, mosaic)


def cv_8uc3(index: int) -> Image:
    return frame(index, "8UC3", 120, 160, 480, as_rows(synthetic_frame(index, 120, 160)[..., ::-1]))


def depth_16uc1(index: int) -> Image:
    return frame(index, "16UC1", 120, 160, 320, as_rows(np.full((120, 160), 1500, "<u2")))


def label_for(labels, msg: Image):
    return next((m for m in labels.decoded() if (m.header.stamp.sec, m.header.stamp.nanosec) == (msg.header.stamp.sec, msg.header.stamp.nanosec)), None)


@pytest.mark.parametrize("make", [
    lambda: yuv422(1, "yuv422"),
    lambda: yuv422(2, "yuyv"),
    lambda: nv12(3),
    lambda: bayer(4, "rggb", 8, 121, 161),
    lambda: bayer(5, "gbrg", 16, 120, 160),
    lambda: cv_8uc3(6),
], ids=["yuv422", "yuyv", "nv12", "bayer_rggb8", "bayer_gbrg16", "8UC3"])
def test_each_encoding_family_is_labeled_with_the_frames_header_and_size(peer, io, make):
    publisher, labels, _ = io
    msg = make()
    assert resend_until(publisher, msg, lambda: label_for(labels, msg) is not None, peer, answer_timeout()), f"no label for {msg.encoding}"
    label = label_for(labels, msg)
    assert label.header.frame_id == msg.header.frame_id
    assert (label.height, label.width) == (msg.height, msg.width) and label.encoding == "mono8"


def test_a_depth_frame_is_counted_failed_with_a_clear_error_and_the_node_keeps_serving(peer, node, io):
    publisher, labels, diagnostics = io
    before = fresh_counters(peer, diagnostics, NODE)
    depth = depth_16uc1(10)
    assert resend_until(publisher, depth, lambda: DEPTH_ERROR in latest_diagnostics(diagnostics, node=NODE)[1].get("last_frame_error", ""), peer, answer_timeout())
    after = fresh_counters(peer, diagnostics, NODE)
    assert after["failed"] > before["failed"] and counters_add_up(after), after
    assert f"dropped frame, bad image: {DEPTH_ERROR}" in node.log_text()
    assert label_for(labels, depth) is None
    good = cv_8uc3(11)
    assert resend_until(publisher, good, lambda: label_for(labels, good) is not None, peer, answer_timeout()), "a frame after the failed one"
    assert node.process.poll() is None
