"""The node with use_depth, in its own process, over DDS: segmentation/points and the per-class
3D summary from a depth image of known geometry and its camera_info, paired by stamp.

The test model's labels are random, so geometry is checked through xyz against the depth
image sent and the camera_info's intrinsics, and the label field against segmentation/label
of the same frame.
"""

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.commands.node_driver import Peer

from node_settings import answer_timeout, latest_diagnostics
from node_settings import RELIABLE, answered, raw_image, serving_node

pytestmark = pytest.mark.usefixtures("ros2_tools")

NAMESPACE = "pts"
HEIGHT, WIDTH = 120, 160
FX, FY, CX, CY = 100.0, 110.0, 79.5, 59.5
SLOP_S = 0.02


@pytest.fixture(scope="module")
def peer():
    peer = Peer("test_points_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory, peer):
    args = ["use_depth:=true", f"depth_sync_slop_s:={SLOP_S}", "points_stride:=2"]
    with serving_node(peer, tmp_path_factory.mktemp("points"), NAMESPACE, *(arg for value in args for arg in ("-p", value)), vocabulary=["wall", "floor", "box"]) as process:
        yield process


@pytest.fixture(scope="module")
def topics(node, peer):
    """Recordings of the outputs and publishers of the inputs, matched."""
    recordings = {
        "points": peer.record(f"/{NAMESPACE}/segmentation/points", PointCloud2),
        "label": peer.record(f"/{NAMESPACE}/segmentation/label", Image),
        "info": peer.record(f"/{NAMESPACE}/segmentation/info", SegmentationInfo),
        "diagnostics": peer.record("/diagnostics", DiagnosticArray),
    }
    publishers = {
        "image": peer.node.create_publisher(Image, f"/{NAMESPACE}/image_raw", RELIABLE),
        "camera_info": peer.node.create_publisher(CameraInfo, f"/{NAMESPACE}/camera_info", RELIABLE),
        "depth": peer.node.create_publisher(Image, f"/{NAMESPACE}/depth", RELIABLE),
    }
    assert peer.wait_for(lambda: all(p.get_subscription_count() for p in publishers.values()), 10.0), "the node subscribes image, camera_info, depth"
    assert peer.wait_for(lambda: peer.node.count_publishers(f"/{NAMESPACE}/segmentation/points") > 0, 10.0)
    return recordings, publishers


def stamped_like(msg, frame: Image, offset_ns: int = 0):
    stamp_ns = frame.header.stamp.sec * 10**9 + frame.header.stamp.nanosec + offset_ns
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = frame.header.frame_id
    return msg


def camera_info(frame: Image, offset_ns: int = 0) -> CameraInfo:
    msg = stamped_like(CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob"), frame, offset_ns)
    msg.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    msg.p = [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def depth_image(frame: Image, depth: np.ndarray, offset_ns: int = 0) -> Image:
    """16UC1 for uint16 millimetres, 32FC1 for float32 metres."""
    msg = stamped_like(Image(), frame, offset_ns)
    msg.height, msg.width = depth.shape
    msg.encoding = "16UC1" if depth.dtype == np.uint16 else "32FC1"
    msg.step = depth.shape[1] * depth.itemsize
    msg.data = message_bytes(np.ascontiguousarray(depth, depth.dtype.newbyteorder("<")))
    return msg


def scene_mm() -> np.ndarray:
    """A slanted wall (1 m at the top left, deeper to the right and down), a box at 0.8 m,
    and no measurement (0) in the top 10 rows."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    depth = (1000 + 8 * u + 4 * v).astype(np.uint16)
    depth[40:80, 60:100] = 800
    depth[:10] = 0
    return depth


def send_frame(peer, publishers, recordings, index: int, depth: np.ndarray, depth_offset_ns: int = 0, content: int | None = None):
    """Frame ``index`` (the image of frame ``content``, default its own) with its camera_info and
    depth (``depth_offset_ns`` from its stamp) until answered."""
    frame = raw_image(index)
    if content is not None:
        frame.data = raw_image(content).data
    messages = [("camera_info", camera_info(frame)), ("depth", depth_image(frame, depth, depth_offset_ns)), ("image", frame)]
    deadline = time.monotonic() + answer_timeout()
    while not answered(recordings["info"], index) and time.monotonic() < deadline:
        for name, msg in messages:
            publishers[name].publish(msg)
        peer.wait_for(lambda: answered(recordings["info"], index), 2.0)
    return frame


def output_of(peer, recording, frame: Image, timeout: float = 5.0):
    """The message of ``recording`` with ``frame``'s header (None if none comes)."""
    def find():
        return next((m for m in recording.decoded() if m.header == frame.header), None)

    peer.wait_for(lambda: find() is not None, timeout)
    return find()


def cloud_points(cloud: PointCloud2) -> dict[str, np.ndarray]:
    """The fields of a PointCloud2, read by its PointField offsets and types."""
    types = {PointField.FLOAT32: "<f4", PointField.UINT16: "<u2"}
    rows = np.frombuffer(bytes(cloud.data), np.uint8).reshape(cloud.width, cloud.point_step)
    return {f.name: rows[:, f.offset : f.offset + np.dtype(types[f.datatype]).itemsize].copy().view(types[f.datatype]).ravel() for f in cloud.fields}


def test_points_lie_where_the_depth_and_intrinsics_put_them(node, peer, topics):
    recordings, publishers = topics
    depth = scene_mm()
    frame = send_frame(peer, publishers, recordings, 1, depth)
    cloud, label_msg, info = (output_of(peer, recordings[name], frame) for name in ("points", "label", "info"))
    assert cloud is not None, node.log_text()[-2000:]
    assert cloud.header == frame.header, "the cloud carries the colour image's header"
    assert (cloud.height, cloud.point_step, cloud.is_dense) == (1, 24, True)
    points = cloud_points(cloud)
    sampled = np.zeros(depth.shape, bool)
    sampled[::2, ::2] = True
    assert cloud.width == int((sampled & (depth > 0)).sum()), "one point per valid depth pixel of every 2nd row and column"
    u = np.rint(points["x"] / points["z"] * FX + CX).astype(int)
    v = np.rint(points["y"] / points["z"] * FY + CY).astype(int)
    assert (u % 2 == 0).all() and (v % 2 == 0).all() and v.min() == 10
    assert np.allclose(points["z"], depth[v, u] / 1000.0, atol=1e-6), "z is the depth sent, in metres"
    assert np.allclose(points["x"], (u - CX) * points["z"] / FX, atol=1e-5)
    labels = np.frombuffer(bytes(label_msg.data), np.uint8).reshape(HEIGHT, WIDTH)
    assert np.array_equal(points["label"], labels[v, u]), "the label of each point is segmentation/label's at its pixel"
    rgb = np.frombuffer(bytes(frame.data), np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert np.array_equal(points["rgb"].view(np.uint32) & 0xFF, rgb[v, u, 2])
    assert (points["score"] >= 0).all()

    # The summary: parallel to present_class_ids, from the cloud's points.
    assert len(info.class_point_counts) == len(info.present_class_ids) and len(info.class_centroids) == 3 * len(info.present_class_ids)
    assert len(info.present_class_ids) and sum(info.class_point_counts) == (points["label"] < 3).sum() > 0
    for row, class_id in enumerate(info.present_class_ids):
        own = points["label"] == class_id
        assert info.class_point_counts[row] == own.sum()
        if own.any():
            centroid = info.class_centroids[3 * row : 3 * row + 3]
            assert np.allclose(centroid, [np.median(points[axis][own]) for axis in "xyz"], atol=1e-5)
            low, high = info.class_extent_min[3 * row + 2], info.class_extent_max[3 * row + 2]
            assert np.isclose(low, np.percentile(points["z"][own], 5), atol=1e-5) and np.isclose(high, np.percentile(points["z"][own], 95), atol=1e-5)


def test_invalid_depth_gives_an_empty_cloud(node, peer, topics):
    recordings, publishers = topics
    depth = np.full((HEIGHT, WIDTH), np.nan, np.float32)
    depth[:, : WIDTH // 2] = 0.0
    frame = send_frame(peer, publishers, recordings, 2, depth)
    cloud, info = output_of(peer, recordings["points"], frame), output_of(peer, recordings["info"], frame)
    assert cloud is not None and cloud.width == 0 and len(cloud.data) == 0
    assert list(info.class_point_counts) == [0] * len(info.present_class_ids) and np.isnan(info.class_centroids).all()


def test_depth_beyond_the_slop_gives_no_cloud_and_a_diagnostic(node, peer, topics):
    recordings, publishers = topics
    diagnostics = recordings["diagnostics"]
    assert peer.wait_for(lambda: latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")[0] is not None, 5.0)
    before = int(latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")[1]["frames_unsynchronized"])
    late = range(100, 120)
    for index in late:
        frame = raw_image(index)
        publishers["camera_info"].publish(camera_info(frame))
        publishers["depth"].publish(depth_image(frame, scene_mm(), int(5 * SLOP_S * 1e9)))  # 0.1 s late: another frame's
        publishers["image"].publish(frame)
        time.sleep(0.05)

    def unsynchronized() -> int:
        return int(latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")[1]["frames_unsynchronized"]) - before

    # The synchronizer gives up on a frame once 10 newer ones wait.
    assert peer.wait_for(lambda: unsynchronized() >= len(late) - 10, 10.0), latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")
    status, _ = latest_diagnostics(diagnostics, node=f"/{NAMESPACE}/ovseg")
    assert status.level == DiagnosticStatus.WARN and "without a depth image and camera_info" in status.message
    assert "no depth image and camera_info with its stamp (depth_sync_slop_s)" in node.log_text()
    late_stamps = {2000 + index for index in late}
    assert not any(m.header.stamp.sec in late_stamps for m in recordings["points"].decoded()), "no cloud for them"
    assert not any(answered(recordings["info"], index) for index in late)
    # Within the slop (5 ms late), the node still serves.
    frame = send_frame(peer, publishers, recordings, 130, scene_mm(), 5 * 10**6)
    assert output_of(peer, recordings["points"], frame) is not None and node.process.poll() is None


def test_bad_depth_is_logged_and_skipped(node, peer, topics):
    recordings, publishers = topics
    frame = raw_image(140)
    bad = depth_image(frame, scene_mm())
    bad.encoding = "bgr8"
    for _ in range(3):
        publishers["camera_info"].publish(camera_info(frame))
        publishers["depth"].publish(bad)
        publishers["image"].publish(frame)
        if peer.wait_for(lambda: "unsupported depth encoding 'bgr8'" in node.log_text(), 5.0):
            break
    assert "unsupported depth encoding 'bgr8'" in node.log_text()
    assert not answered(recordings["info"], 140)
    frame = send_frame(peer, publishers, recordings, 141, scene_mm())
    assert output_of(peer, recordings["points"], frame) is not None and node.process.poll() is None


# -- objects: segments as detections, 3D boxes, instance ids, the organized cloud -----------------


def set_parameter(peer, name: str, value) -> None:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = peer.node.create_client(SetParameters, f"/{NAMESPACE}/ovseg/set_parameters")
    result = peer.call(client, SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])).results[0]
    assert result.successful, result.reason


@pytest.fixture(scope="module")
def objects(node, peer, topics):
    """Recordings of the segment topics (subscribing to them is what makes the node compute segments)."""
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    recordings = {
        "detections": peer.record(f"/{NAMESPACE}/segmentation/detections", Detection2DArray),
        "detections_3d": peer.record(f"/{NAMESPACE}/segmentation/detections_3d", Detection3DArray),
        "instances": peer.record(f"/{NAMESPACE}/segmentation/instances", Image),
        "confidence": peer.record(f"/{NAMESPACE}/segmentation/confidence", Image),
    }
    for topic in ("detections", "detections_3d", "instances", "confidence"):
        assert peer.wait_for(lambda topic=topic: peer.node.count_publishers(f"/{NAMESPACE}/segmentation/{topic}") > 0, 10.0)
    time.sleep(1.0)  # the node looks up subscribers per frame: let discovery reach it
    return recordings


def test_detections_are_the_segments_of_the_published_labels_with_3d_boxes_and_stable_ids(node, peer, topics, objects):
    """The node's detections equal the engine's segments of the label and confidence images it
    published for the same frame, with the depth sent; a repeated frame keeps every id, and the
    instance image holds those ids where the segments are."""
    from ovseg_ros.engine.points import PinholeIntrinsics
    from ovseg_ros.engine.segments import SegmentSettings, find_segments

    recordings, publishers = topics
    depth = scene_mm()
    first = send_frame(peer, publishers, recordings, 150, depth)
    second = send_frame(peer, publishers, recordings, 151, depth, content=150)
    detections = [output_of(peer, objects["detections"], frame) for frame in (first, second)]
    detections_3d = output_of(peer, objects["detections_3d"], first)
    instances = output_of(peer, objects["instances"], first)
    label_msg, confidence_msg = output_of(peer, recordings["label"], first), output_of(peer, objects["confidence"], first)
    assert None not in (*detections, detections_3d, instances, label_msg, confidence_msg), node.log_text()[-2000:]
    labels = np.frombuffer(bytes(label_msg.data), np.uint8).reshape(HEIGHT, WIDTH)
    scores = np.frombuffer(bytes(confidence_msg.data), np.uint8).reshape(HEIGHT, WIDTH)
    names = ("wall", "floor", "box")
    expected = find_segments(labels, scores, names, SegmentSettings(), depth=depth, intrinsics=PinholeIntrinsics(FX, FY, CX, CY, WIDTH, HEIGHT))
    assert expected, "the random model labels something"

    got = detections[0].detections
    assert detections[0].header == first.header and len(got) == len(expected)
    for detection, segment in zip(got, expected):
        hypothesis = detection.results[0].hypothesis
        assert hypothesis.class_id == names[segment.class_id]
        assert hypothesis.score == pytest.approx(segment.mean_score, abs=1e-6)
        x, y, w, h = segment.box_px
        assert (detection.bbox.size_x, detection.bbox.size_y) == (w, h)
        assert (detection.bbox.center.position.x, detection.bbox.center.position.y) == pytest.approx((x + (w - 1) / 2, y + (h - 1) / 2))
    ids = [detection.id for detection in got]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [detection.id for detection in detections[1].detections] == ids, "the same frame again keeps every id"

    boxed = [segment for segment in expected if segment.box3d is not None]
    assert detections_3d.header == first.header and len(detections_3d.detections) == len(boxed) > 0
    for detection, segment in zip(detections_3d.detections, boxed):
        assert detection.results[0].hypothesis.class_id == names[segment.class_id]
        center = detection.bbox.center.position
        assert (center.x, center.y, center.z) == pytest.approx(tuple(segment.box3d.center), abs=1e-4)
        assert (detection.bbox.size.x, detection.bbox.size.y, detection.bbox.size.z) == pytest.approx(tuple(segment.box3d.size), abs=1e-4)
        assert 0.8 - 1e-3 <= center.z <= 2.5, "inside the scene's depth range (metres)"

    instance_ids = np.frombuffer(bytes(instances.data), np.uint16).reshape(HEIGHT, WIDTH)
    assert instances.encoding == "mono16" and set(np.unique(instance_ids)) - {0} == {int(i) for i in ids}


def test_points_organized_is_pixel_aligned_with_nan_where_there_is_no_depth(node, peer, topics):
    recordings, publishers = topics
    set_parameter(peer, "points_organized", True)
    try:
        frame = send_frame(peer, publishers, recordings, 160, scene_mm())
        cloud = output_of(peer, recordings["points"], frame)
    finally:
        set_parameter(peer, "points_organized", False)
    assert cloud is not None and (cloud.height, cloud.width, cloud.is_dense, cloud.row_step) == (HEIGHT, WIDTH, False, WIDTH * 24)
    records = np.frombuffer(bytes(cloud.data), np.float32).reshape(HEIGHT, WIDTH, 6)
    z = records[..., 2]
    assert np.isnan(z[:10]).all(), "no measurement in the top rows: NaN, at their pixels"
    assert np.allclose(z[10:], scene_mm()[10:] / 1000.0, atol=1e-6), "stride 1: every pixel with depth, where it is"
    v, u = 70, 120
    assert records[v, u, 0] == pytest.approx((u - CX) * z[v, u] / FX, abs=1e-5)
