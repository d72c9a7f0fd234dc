"""Segments as vision_msgs detections and rviz markers (ovseg_ros.ros.detections): every field,
on a synthetic scene of exact depth (test/object_scenes.py) with tracked ids."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import Marker, MarkerArray

from ovseg_ros.engine.rendering import class_color
from ovseg_ros.engine.segments import find_segments
from ovseg_ros.engine.tracking import SegmentTracker
from ovseg_ros.ros.detections import BOX_NAMESPACE, CAPTION_NAMESPACE, box_markers_msg, detections_2d_msg, detections_3d_msg
from object_scenes import BOX, CAMERA, CHAIR, NAMES, Face, render, scores_of

pytestmark = pytest.mark.usefixtures("ros2_tools")  # vision_msgs comes from ../shared/ros2
NEAR_BOX = Face(BOX, (-0.9, -0.3), (-0.2, 0.4), 1.5)
CHAIR_FACE = Face(CHAIR, (0.2, 0.8), (-0.5, 0.3), 2.5)


@pytest.fixture
def frame():
    """(header, segments, scores) of a frame with the wall, floor, a box and a chair; the
    chair has too few valid depth pixels for a 3D box."""
    labels, depth = render([NEAR_BOX, CHAIR_FACE])
    depth[labels == CHAIR] = 0.0
    depth.flat[np.flatnonzero(labels == CHAIR)[:5]] = CHAIR_FACE.z
    scores = scores_of(labels)
    segments = find_segments(labels, scores, NAMES, depth=depth, intrinsics=CAMERA)
    tracker = SegmentTracker()
    tracker.update(segments, 12.5, labels.shape)
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 500_000_000
    return header, segments, scores


def roundtrip(msg):
    """The message through serialization: every field has its declared type."""
    return deserialize_message(serialize_message(msg), type(msg))


def test_2d_detections_of_every_segment(frame):
    header, segments, scores = frame
    msg = roundtrip(detections_2d_msg(header, segments, NAMES))
    assert isinstance(msg, Detection2DArray) and msg.header == header
    assert len(msg.detections) == len(segments) == 4
    for detection, segment in zip(msg.detections, segments):
        assert detection.header == header
        assert detection.id == str(segment.track_id) and segment.track_id > 0
        (result,) = detection.results
        assert result.hypothesis.class_id == NAMES[segment.class_id]
        assert result.hypothesis.score == pytest.approx(segment.mean_score)
        x, y, width, height = segment.box_px
        assert (detection.bbox.size_x, detection.bbox.size_y) == (width, height)
        assert (detection.bbox.center.position.x, detection.bbox.center.position.y) == (x + (width - 1) / 2, y + (height - 1) / 2)
        assert detection.bbox.center.theta == 0.0
    assert [d.results[0].hypothesis.class_id for d in msg.detections] == ["wall", "floor", "box", "chair"]
    assert len({d.id for d in msg.detections}) == 4


def test_3d_detections_of_the_segments_with_a_3d_box(frame):
    header, segments, _ = frame
    msg = roundtrip(detections_3d_msg(header, segments, NAMES))
    assert isinstance(msg, Detection3DArray) and msg.header == header
    with_box = [s for s in segments if s.box3d is not None]
    assert [NAMES[s.class_id] for s in with_box] == ["wall", "floor", "box"], "the chair's 5 points give no box"
    assert len(msg.detections) == 3
    for detection, segment in zip(msg.detections, with_box):
        assert detection.id == str(segment.track_id) and detection.header == header
        (result,) = detection.results
        assert result.hypothesis.class_id == NAMES[segment.class_id] and result.hypothesis.score == pytest.approx(segment.mean_score)
        position = result.pose.pose.position
        assert np.allclose([position.x, position.y, position.z], segment.box3d.centroid)
        center, size = detection.bbox.center, detection.bbox.size
        assert np.allclose([center.position.x, center.position.y, center.position.z], segment.box3d.center)
        assert (center.orientation.x, center.orientation.y, center.orientation.z, center.orientation.w) == (0.0, 0.0, 0.0, 1.0)
        assert np.allclose([size.x, size.y, size.z], segment.box3d.size)
    box = msg.detections[2]
    footprint = NEAR_BOX.z / CAMERA.fx
    assert np.allclose([box.bbox.center.position.x, box.bbox.center.position.y, box.bbox.center.position.z], NEAR_BOX.center, atol=footprint)
    assert np.allclose([box.bbox.size.x, box.bbox.size.y, box.bbox.size.z], [0.54, 0.54, 0.0], atol=2 * footprint), "5-95% of the 0.6 m face"


def test_markers_draw_the_3d_boxes(frame):
    header, segments, _ = frame
    msg = roundtrip(box_markers_msg(header, segments, NAMES))
    assert isinstance(msg, MarkerArray)
    clear, *markers = msg.markers
    assert clear.action == Marker.DELETEALL and clear.header == header
    with_box = [s for s in segments if s.box3d is not None]
    boxes = [m for m in markers if m.ns == BOX_NAMESPACE]
    captions = [m for m in markers if m.ns == CAPTION_NAMESPACE]
    assert len(boxes) == len(captions) == len(with_box) == 3
    for box, caption, segment in zip(boxes, captions, with_box):
        assert box.type == Marker.CUBE and box.action == Marker.ADD and box.header == header and box.id == segment.track_id
        assert np.allclose([box.pose.position.x, box.pose.position.y, box.pose.position.z], segment.box3d.center)
        assert np.allclose([box.scale.x, box.scale.y, box.scale.z], np.maximum(segment.box3d.size, 0.01)), "a flat face drawn 1 cm thick"
        assert np.allclose([box.color.r, box.color.g, box.color.b], np.array(class_color(NAMES[segment.class_id])) / 255.0)
        assert caption.type == Marker.TEXT_VIEW_FACING and caption.text == f"{NAMES[segment.class_id]} #{segment.track_id} {segment.mean_score:.2f}"


def test_an_empty_frame_gives_empty_arrays(frame):
    header, _, _ = frame
    assert roundtrip(detections_2d_msg(header, [], NAMES)).detections == []
    assert roundtrip(detections_3d_msg(header, [], NAMES)).detections == []
    assert [m.action for m in roundtrip(box_markers_msg(header, [], NAMES)).markers] == [Marker.DELETEALL]


def test_rviz_layout_shows_the_markers():
    layout = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "detections.rviz").read_text())
    displays = {display["Class"]: display for display in layout["Visualization Manager"]["Displays"]}
    markers = displays["rviz_default_plugins/MarkerArray"]
    assert markers["Topic"]["Value"] == "segmentation/detection_markers"
    assert set(markers["Namespaces"]) == {BOX_NAMESPACE, CAPTION_NAMESPACE}
