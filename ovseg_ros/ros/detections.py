"""A frame's segments as vision_msgs detections and rviz markers: the objects the node and
offline labeling publish.

    segments = find_segments(outputs.labels, scores, names, present_class_ids=..., depth=..., intrinsics=...)
    tracker.update(segments, stamp_s, outputs.labels.shape, source)
    detections_2d_msg(msg.header, segments, names)     # vision_msgs/Detection2DArray, every segment
    detections_3d_msg(msg.header, segments, names)     # vision_msgs/Detection3DArray, those with a 3D box
    box_markers_msg(msg.header, segments, names)       # visualization_msgs/MarkerArray of the 3D boxes

Every message carries the image's header (the 3D boxes are in its optical frame). Each
detection has one result: ``hypothesis.class_id`` the class name as in ``segmentation/label_info``
(``names[class_id]``), ``hypothesis.score`` the mean winning score of the segment's pixels; its
``id`` is the segment's track id as a string. The 2D ``bbox`` is the pixel box: its centre in
pixel coordinates (pixel centres at integers, as camera_info's cx, cy), its size in pixels.
The 3D ``bbox`` is the robust box (5th to 95th percentile of the points per axis, axis-aligned
in the optical frame, identity orientation); the result's ``pose`` is the segment's robust
centroid (the per-axis median), which need not be the box's centre.
"""

from __future__ import annotations

from geometry_msgs.msg import Point, Vector3
from vision_msgs.msg import BoundingBox2D, BoundingBox3D, Detection2D, Detection2DArray, Detection3D, Detection3DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from ovseg_ros.engine.rendering import class_color
from ovseg_ros.engine.segments import Segment

#: Marker namespaces of :func:`box_markers_msg`: the boxes and their captions.
BOX_NAMESPACE, CAPTION_NAMESPACE = "ovseg_boxes", "ovseg_captions"
#: Thinnest box edge drawn, metres: a flat face (a 3D box of zero depth) stays visible.
MIN_MARKER_SIZE = 0.01


def detections_2d_msg(header, segments: list[Segment], class_names: tuple[str, ...] | list[str]) -> Detection2DArray:
    """``vision_msgs/Detection2DArray`` of every segment of a frame, with the image's ``header``."""
    msg = Detection2DArray(header=header)
    for segment in segments:
        x, y, width, height = segment.box_px
        detection = Detection2D(header=header, results=[_result(segment, class_names)], id=str(segment.track_id))
        detection.bbox = BoundingBox2D(size_x=float(width), size_y=float(height))
        detection.bbox.center.position.x = x + (width - 1) / 2.0
        detection.bbox.center.position.y = y + (height - 1) / 2.0
        msg.detections.append(detection)
    return msg


def detections_3d_msg(header, segments: list[Segment], class_names: tuple[str, ...] | list[str]) -> Detection3DArray:
    """``vision_msgs/Detection3DArray`` of the segments of a frame that have a 3D box, with the
    image's ``header`` (coordinates in its optical frame, metres)."""
    msg = Detection3DArray(header=header)
    for segment in segments:
        if segment.box3d is None:
            continue
        result = _result(segment, class_names)
        result.pose.pose.position = Point(x=float(segment.box3d.centroid[0]), y=float(segment.box3d.centroid[1]), z=float(segment.box3d.centroid[2]))
        detection = Detection3D(header=header, results=[result], id=str(segment.track_id))
        center, size = segment.box3d.center, segment.box3d.size
        detection.bbox = BoundingBox3D(size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
        detection.bbox.center.position = Point(x=float(center[0]), y=float(center[1]), z=float(center[2]))
        msg.detections.append(detection)
    return msg


def box_markers_msg(header, segments: list[Segment], class_names: tuple[str, ...] | list[str], alpha: float = 0.4) -> MarkerArray:
    """``visualization_msgs/MarkerArray`` for rviz: a DELETEALL (the previous frame's boxes go),
    then per segment with a 3D box a translucent cube in its class colour (``alpha``) and a
    caption above it, ``<class> #<track id> <score>``; marker ids are the track ids."""
    delete_all = Marker(header=header, action=Marker.DELETEALL)
    markers = [delete_all]
    for segment in segments:
        if segment.box3d is None:
            continue
        name = class_names[segment.class_id]
        red, green, blue = (channel / 255.0 for channel in class_color(name))
        center, size = segment.box3d.center, segment.box3d.size
        marker_id = segment.track_id % 2**31  # int32
        box = Marker(header=header, ns=BOX_NAMESPACE, id=marker_id, type=Marker.CUBE, action=Marker.ADD)
        box.pose.position = Point(x=float(center[0]), y=float(center[1]), z=float(center[2]))
        box.pose.orientation.w = 1.0
        box.scale = Vector3(x=max(float(size[0]), MIN_MARKER_SIZE), y=max(float(size[1]), MIN_MARKER_SIZE), z=max(float(size[2]), MIN_MARKER_SIZE))
        box.color.r, box.color.g, box.color.b, box.color.a = red, green, blue, alpha
        caption = Marker(header=header, ns=CAPTION_NAMESPACE, id=marker_id, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        caption.pose.position = Point(x=float(center[0]), y=float(segment.box3d.minimum[1]) - 0.05, z=float(center[2]))  # above: y is down
        caption.pose.orientation.w = 1.0
        caption.scale.z = 0.1  # text height, metres
        caption.color.r, caption.color.g, caption.color.b, caption.color.a = red, green, blue, 1.0
        caption.text = f"{name} #{segment.track_id} {segment.mean_score:.2f}"
        markers += [box, caption]
    return MarkerArray(markers=markers)


def _result(segment: Segment, class_names: tuple[str, ...] | list[str]) -> ObjectHypothesisWithPose:
    result = ObjectHypothesisWithPose()
    result.hypothesis.class_id = class_names[segment.class_id]
    result.hypothesis.score = float(segment.mean_score)
    result.pose.pose.orientation.w = 1.0
    return result
