"""ROS side of the labeled point cloud: camera_info -> intrinsics, records -> sensor_msgs/PointCloud2.

The cloud's fields follow :data:`~ovseg_ros.points.POINT_DTYPE` (sensor_msgs_py's
``create_cloud`` layout, written here since sensor_msgs_py is not in every install): one
unordered row (``height`` 1), little-endian, ``is_dense`` (every point is valid).
"""

from __future__ import annotations

import sys

import numpy as np
from image_geometry import PinholeCameraModel
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField

from ovseg_ros.image_codec import message_bytes
from ovseg_ros.points import POINT_DTYPE, PinholeIntrinsics

_POINT_FIELD_TYPES = {np.dtype("<f4"): PointField.FLOAT32, np.dtype("<u2"): PointField.UINT16}

#: The PointFields of ``segmentation/points``: x, y, z, rgb, score (float32), label (uint16).
POINT_FIELDS = tuple(
    PointField(name=name, offset=offset, datatype=_POINT_FIELD_TYPES[dtype], count=1) for name, (dtype, offset) in POINT_DTYPE.fields.items()
)


def point_cloud_msg(header, points: np.ndarray) -> PointCloud2:
    """(N,) POINT_DTYPE records -> PointCloud2 with ``header`` (the colour image's)."""
    if points.dtype != POINT_DTYPE:
        raise ValueError(f"points must have the POINT_DTYPE layout, not {points.dtype}")
    if sys.byteorder != "little":  # the records are built in the host's word order
        raise RuntimeError("labeled point clouds are built on little-endian hosts only")
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(points)
    msg.fields = list(POINT_FIELDS)
    msg.is_bigendian = False
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * len(points)
    msg.is_dense = True
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
