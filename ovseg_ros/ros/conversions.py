"""Camera messages in, a frame's outputs out as ROS messages: what the node publishes.

The node (:mod:`ovseg_ros.ros.node`) and offline bag labeling (:mod:`ovseg_ros.commands.label_bag`)
both build a frame's messages with :func:`frame_messages`, so a recorded frame and a live one
are the same bytes:

    image = image_data(msg)                                  # sensor_msgs/Image or CompressedImage
    outputs = pipeline.process(image, stamp_s, request)      # FramePipeline
    messages = frame_messages(msg.header, outputs, "san_vit_b_16")
    messages.label, messages.info, messages.color, messages.masks[2], messages.points
    class_map = class_map_msg(outputs.vocabulary, stamp)     # segmentation/label_info

Only what depends on the node's clock and threads is left to the node: ``queue_ms``,
``end_to_end_ms`` and the publishing time inside ``postprocess_ms``. The labeled point cloud
(:func:`point_cloud_msg`) and the intrinsics of a camera_info (:func:`intrinsics_from_camera_info`,
by image_geometry) are here too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from image_geometry import PinholeCameraModel
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from ovseg_ros.engine.frame_pipeline import CompressedImageData, DepthData, FrameOutputs, ImageData, RawImageData
from ovseg_ros.engine.image_codec import encode_image, message_bytes
from ovseg_ros.engine.points import POINT_DTYPE, PinholeIntrinsics
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.ros.detections import box_markers_msg, detections_2d_msg, detections_3d_msg
from ovseg_ros.ros.topic_names import mask_topic_names
from ovseg_ros.engine.vocabulary import Vocabulary


def stamp_ns(header) -> int:
    """A header's stamp in integer nanoseconds (exact, unlike float seconds)."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def image_data(msg: Image | CompressedImage) -> ImageData:
    """The pipeline's view of an image message (raw data is not copied)."""
    if isinstance(msg, CompressedImage):
        return CompressedImageData(msg.format, msg.data.tobytes() if hasattr(msg.data, "tobytes") else bytes(msg.data))
    return raw_image_data(msg)


def raw_image_data(msg: Image) -> RawImageData:
    """The fields of a ``sensor_msgs/Image`` (a camera frame or a depth image), data not copied."""
    return RawImageData(msg.encoding, msg.height, msg.width, msg.step, memoryview(msg.data), bool(msg.is_bigendian))


@dataclass
class FrameMessages:
    """The messages of one frame's outputs; None (or no mask) where an output was not computed."""

    label: Image  # segmentation/label
    info: SegmentationInfo  # segmentation/info
    color: Image | None = None
    overlay: Image | None = None
    confidence: Image | None = None
    masks: dict[int, Image] = field(default_factory=dict)  # class id -> segmentation/masks/<class>
    points: PointCloud2 | None = None  # segmentation/points
    detections: Detection2DArray | None = None  # segmentation/detections
    detections_3d: Detection3DArray | None = None  # segmentation/detections_3d: a frame with depth
    detection_markers: MarkerArray | None = None  # segmentation/detection_markers: their 3D boxes for rviz
    instances: Image | None = None  # segmentation/instances: mono16 track ids, 0 = none


def frame_messages(header, outputs: FrameOutputs, model: str) -> FrameMessages:
    """Every message of a frame's computed outputs, each with the input image's ``header``."""
    def optional(pixels: np.ndarray | None) -> Image | None:
        return None if pixels is None else image_msg(header, pixels)

    return FrameMessages(
        label=image_msg(header, outputs.labels),
        info=info_msg(header, outputs, model),
        color=optional(outputs.color),
        overlay=optional(outputs.overlay),
        confidence=optional(outputs.confidence),
        masks={class_id: image_msg(header, mask) for class_id, mask in outputs.masks.items()},
        points=None if outputs.points is None else point_cloud_msg(header, outputs.points),
        instances=optional(outputs.instances),
        **(detection_messages(header, outputs) if outputs.segments is not None else {}),
    )


def detection_messages(header, outputs: FrameOutputs) -> dict:
    """The detections of a frame's segments: 2D always, 3D and their markers for a frame with depth."""
    names = outputs.vocabulary.names
    messages = {"detections": detections_2d_msg(header, outputs.segments, names)}
    if outputs.class_points is not None:  # the frame had depth
        messages["detections_3d"] = detections_3d_msg(header, outputs.segments, names)
        messages["detection_markers"] = box_markers_msg(header, outputs.segments, names)
    return messages


def image_msg(header, pixels: np.ndarray) -> Image:
    """``sensor_msgs/Image`` of (H, W) uint8 / uint16 (mono8 / mono16) or (H, W, 3) uint8 RGB (rgb8)."""
    encoding, step, data = encode_image(pixels)
    msg = Image()
    msg.header = header
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding, msg.step, msg.is_bigendian = encoding, step, 0
    msg.data = message_bytes(data)
    return msg


def info_msg(header, outputs: FrameOutputs, model: str) -> SegmentationInfo:
    """``segmentation/info`` of a frame: classes, fractions, the per-class 3D summary (with
    depth), CER's K and the frame path's stage times. ``queue_ms`` and ``end_to_end_ms`` stay 0
    and ``postprocess_ms`` excludes publishing: only the node knows them."""
    timings = outputs.timings_ms
    info = SegmentationInfo()
    info.header = header
    info.vocabulary_version = outputs.vocabulary.version
    info.class_names = list(outputs.vocabulary.names)
    info.pixel_fractions = outputs.pixel_fractions.tolist()
    info.present_class_ids = outputs.present_class_ids.tolist()
    if outputs.class_points is not None:  # parallel to present_class_ids
        summary = outputs.class_points
        info.class_point_counts = summary.point_counts.tolist()
        info.class_centroids = summary.centroids.ravel().tolist()
        info.class_extent_min = summary.extent_min.ravel().tolist()
        info.class_extent_max = summary.extent_max.ravel().tolist()
    info.model = model
    info.cer_topk = outputs.cer_topk
    info.preprocess_ms = timings["decode"] + timings["preprocess"]
    info.model_ms = timings["model"]
    info.postprocess_ms = timings["postprocess"] + timings["download"]
    return info


def class_map_msg(vocabulary: Vocabulary, stamp) -> ClassMap:
    """``segmentation/label_info``: label id -> class name and mask topic, stamped ``stamp``
    (``builtin_interfaces/Time``)."""
    msg = ClassMap()
    msg.header.stamp = stamp
    msg.vocabulary_version = vocabulary.version
    msg.class_names = list(vocabulary.names)
    msg.mask_topics = [f"segmentation/masks/{topic}" for topic in mask_topic_names(list(vocabulary.names))]
    msg.unlabeled_id = vocabulary.unlabeled_id
    return msg


def depth_data(frame: Image | CompressedImage, depth: Image, camera_info: CameraInfo) -> DepthData:
    """A colour frame's registered depth image and its intrinsics, for the FramePipeline.

    A camera_info without a size describes the colour image (raw frames) or, registered, the
    depth image's grid (compressed frames, whose size is unknown before decoding). Raises
    :class:`ImageError` for an unusable camera_info.
    """
    width, height = (depth.width, depth.height) if isinstance(frame, CompressedImage) else (frame.width, frame.height)
    return DepthData(raw_image_data(depth), intrinsics_from_camera_info(camera_info, width, height))


# The labeled cloud: the fields of POINT_DTYPE (sensor_msgs_py's create_cloud layout, written here
# since sensor_msgs_py is not in every install), one unordered row (height 1), little-endian,
# is_dense (every point is valid).
_POINT_FIELD_TYPES = {np.dtype("<f4"): PointField.FLOAT32, np.dtype("<u2"): PointField.UINT16}

#: The PointFields of ``segmentation/points``: x, y, z, rgb, score (float32), label (uint16).
POINT_FIELDS = tuple(
    PointField(name=name, offset=offset, datatype=_POINT_FIELD_TYPES[dtype], count=1) for name, (dtype, offset) in POINT_DTYPE.fields.items()
)


def point_cloud_msg(header, points: np.ndarray) -> PointCloud2:
    """(N,) POINT_DTYPE records -> an unordered PointCloud2 (one row, every point valid); (H, W)
    records -> an organized one, pixel-aligned with the image (NaN where there is no point,
    ``is_dense`` false). With ``header`` (the colour image's)."""
    if points.dtype != POINT_DTYPE:
        raise ValueError(f"points must have the POINT_DTYPE layout, not {points.dtype}")
    if sys.byteorder != "little":  # the records are built in the host's word order
        raise RuntimeError("labeled point clouds are built on little-endian hosts only")
    msg = PointCloud2()
    msg.header = header
    organized = points.ndim == 2
    msg.height, msg.width = points.shape if organized else (1, len(points))
    msg.fields = list(POINT_FIELDS)
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * msg.width
    msg.is_dense = not organized
    msg.data = message_bytes(np.ascontiguousarray(points))
    return msg


def intrinsics_from_camera_info(camera_info: CameraInfo, image_width: int, image_height: int) -> PinholeIntrinsics:
    """The colour camera's pinhole intrinsics, by image_geometry's PinholeCameraModel.

    The projection matrix P (the rectified camera, as depth_image_proc uses) when set, else K;
    binning and ROI applied. A camera_info without a size describes the image it comes with
    (``image_width`` x ``image_height``). Raises :class:`ImageError` if unusable.
    """
    model = PinholeCameraModel()
    model.fromCameraInfo(camera_info)
    if model.fx() > 0 and model.fy() > 0:
        fx, fy, cx, cy = model.fx(), model.fy(), model.cx(), model.cy()
    else:  # no P: the camera matrix, adjusted the same way (PinholeCameraModel adjusts K too)
        k = model.intrinsicMatrix()
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    width, height = model.raw_roi.width // model.binning_x, model.raw_roi.height // model.binning_y
    if width == 0 or height == 0:
        width, height = image_width, image_height
    intrinsics = PinholeIntrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height))
    intrinsics.check()
    return intrinsics
