"""Labels in 3D: back-projection of a labeled frame with its registered depth image, ROS-free.

    depth = decode_depth("16UC1", 480, 640, 1280, data)                 # host (H_d, W_d) view
    cloud = back_project(labels, confidence, rgb, depth_on_device, PinholeIntrinsics(...), stride=2)
    cloud.records[: int(cloud.count)]      # (N, 6) float32 rows, byte-for-byte POINT_DTYPE
    organized = organized_points(labels, confidence, rgb, depth_on_device, PinholeIntrinsics(...))
    organized.numpy().view(POINT_DTYPE)[..., 0]   # host (H, W) records, pixel-aligned, x y z NaN = no point

The depth image must be registered to the colour camera (RealSense ``aligned_depth_to_color``,
``depth_image_proc/register``): its pixel (u, v) sees what the colour pixel (u, v) sees.
Depth of another size than the colour image is resampled nearest-neighbour onto the colour
grid (each colour pixel takes the depth pixel under its centre) and the intrinsics are
scaled to the colour grid; a registered depth image covers the colour camera's field of
view, so only the resolution differs.

Points are in the camera's optical frame (x right, y down, z forward, metres), one per
``stride``-th pixel of each ``stride``-th row whose depth is valid (finite, > 0; 16UC1 0 and
32FC1 0 / NaN / inf are "no measurement") and whose winning score is at least ``min_score``.
Each point is a 24-byte record, the layout of the ``segmentation/points`` PointCloud2
(:data:`POINT_DTYPE`): x, y, z, rgb (PCL's packed 0x00RRGGBB uint32 in a float32 field),
score, label (uint16, then 2 padding bytes). The records are built on the labels' device,
compacted there without a host sync, so the host reads one count and copies one compact
block. Host byte order is little-endian (x86-64, ARM64), which the layout assumes.

The per-class summary (:class:`ClassPoints`) is robust to depth outliers (flying pixels at
object edges, reflections): the centroid is the per-axis median of the class's points and
the extent their 5th-95th percentiles per axis, interpolated linearly as ``np.percentile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ovseg_ros.engine.image_codec import MAX_PIXELS, ImageError

#: One point of ``segmentation/points``: 24 bytes, little-endian.
POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "score", "label"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<f4", "<u2"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 24,
    }
)
#: float32 words per record (POINT_DTYPE.itemsize / 4): the device builds (N, 6) float32 rows.
RECORD_WORDS = 6
#: Percentiles of the summary: extent low, centroid (median), extent high.
SUMMARY_QUANTILES = (0.05, 0.5, 0.95)

#: depth encoding -> (numpy dtype, metres per unit)
DEPTH_ENCODINGS = {"16UC1": (np.uint16, 0.001), "mono16": (np.uint16, 0.001), "32FC1": (np.float32, 1.0)}


@dataclass(frozen=True)
class PinholeIntrinsics:
    """A pinhole camera's intrinsics for images of ``width`` x ``height`` pixels (no distortion:
    the colour image is rectified, or its distortion is negligible, as depth_image_proc assumes)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled_to(self, width: int, height: int) -> PinholeIntrinsics:
        """The same camera seen at another resolution (pixel centres map to pixel centres)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return PinholeIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height)

    def check(self) -> None:
        """Raise :class:`ImageError` for intrinsics no projection can use."""
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0 or self.width <= 0 or self.height <= 0:
            raise ImageError(f"camera intrinsics unusable: fx {self.fx}, fy {self.fy}, cx {self.cx}, cy {self.cy} for {self.width}x{self.height}")


def decode_depth(encoding: str, height: int, width: int, step: int, data: bytes | memoryview, is_bigendian: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` depth fields -> (H, W) uint16 millimetres (16UC1, mono16) or float32 metres (32FC1).

    A view of ``data`` (no copy) unless big-endian; row padding (``step``) is honoured.
    Raises :class:`ImageError` for anything else.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ImageError(f"unsupported depth encoding {encoding!r} (supported: {', '.join(DEPTH_ENCODINGS)})")
    if height <= 0 or width <= 0 or height * width > MAX_PIXELS:
        raise ImageError(f"depth image is {width}x{height}: empty or larger than the {MAX_PIXELS} pixel limit")
    dtype = np.dtype(DEPTH_ENCODINGS[encoding][0])
    row_bytes = width * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f"depth {encoding} step {step} is less than width x pixel size = {row_bytes}")
    if len(data) != step * height:
        raise ImageError(f"depth data is {len(data)} bytes, expected step x height = {step * height}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    depth = rows.view(dtype.newbyteorder(">" if is_bigendian else "<"))
    return depth.astype(dtype) if is_bigendian else depth  # torch takes native byte order only


def depth_scale(depth: np.ndarray | torch.Tensor) -> float:
    """Metres per unit of a decoded depth image: 0.001 for uint16 millimetres, 1 for float32 metres."""
    return 0.001 if depth.dtype in (np.uint16, torch.uint16) else 1.0


@dataclass
class DeviceCloud:
    """Output of :func:`back_project`, on the labels' device.

    Attributes:
        records: (M + 1, 6) float32; the first ``count`` rows are the points (POINT_DTYPE bytes),
            the rest is scratch. M = the number of sampled pixels.
        count: (1,) int64, the number of points.
        group: (M,) int64 class of each sampled pixel's point; ``num_classes`` for none
            (invalid depth, low score, unlabeled).
        xyz: (M, 3) float32 each sampled pixel's point (a view of the uncompacted rows).
        num_classes: T.
    """

    records: torch.Tensor
    count: torch.Tensor
    group: torch.Tensor
    xyz: torch.Tensor
    num_classes: int


@dataclass
class ClassPoints:
    """The 3D summary of the classes present in a frame, parallel to its ``present_class_ids``.

    Attributes:
        point_counts: (P,) int32 points of each class in the cloud (stride and valid depth applied).
        centroids: (P, 3) float32 per-axis median, metres, optical frame; NaN without points.
        extent_min, extent_max: (P, 3) float32 5th and 95th percentile per axis; NaN without points.
    """

    point_counts: np.ndarray
    centroids: np.ndarray
    extent_min: np.ndarray
    extent_max: np.ndarray

    @classmethod
    def from_summary(cls, summary: np.ndarray, class_ids: np.ndarray) -> ClassPoints:
        """Rows ``class_ids`` of a host copy of :func:`class_summary`'s output."""
        rows = summary[class_ids.astype(np.int64)]
        return cls(np.ascontiguousarray(rows[:, 0]).view(np.int32), rows[:, 1:4], rows[:, 4:7], rows[:, 7:10])


def points_of(records: np.ndarray, count: int) -> np.ndarray:
    """(N,) POINT_DTYPE view of the first ``count`` rows of a host copy of :attr:`DeviceCloud.records`."""
    return records[:count].view(POINT_DTYPE).reshape(count)


@torch.inference_mode()
def back_project(
    labels: torch.Tensor,
    confidence: torch.Tensor,
    rgb: torch.Tensor,
    depth: torch.Tensor,
    intrinsics: PinholeIntrinsics,
    num_classes: int,
    stride: int = 1,
    min_score: float = 0.0,
) -> DeviceCloud:
    """The labeled points of a frame, on the labels' device (:func:`class_summary` summarises them).

    Args:
        labels: (H, W) uint8 or int32 class ids; ids >= ``num_classes`` (unlabeled) become
            points but are in no class's summary.
        confidence: (H, W) float32 winning score.
        rgb: (H, W, 3) uint8 colour image.
        depth: (H_d, W_d) uint16 millimetres or float32 metres, registered to the colour camera.
        intrinsics: of the colour camera, at any resolution (scaled to (W, H)).
        num_classes: T, rows of the summary.
        stride: every ``stride``-th pixel of every ``stride``-th row.
        min_score: pixels scoring below this give no point.
    """
    fields, valid, label = _pixel_records(labels, confidence, rgb, depth, intrinsics, stride, min_score)
    device = labels.device
    fields = fields.view(-1, RECORD_WORDS)

    # Compaction without a host sync: valid rows go to their rank, the others to the scratch row M.
    flat_valid = valid.reshape(-1)
    rank = torch.cumsum(flat_valid, 0) - 1
    samples = flat_valid.numel()
    records = torch.empty((samples + 1, RECORD_WORDS), dtype=torch.float32, device=device)
    records.index_copy_(0, torch.where(flat_valid, rank, samples), fields)
    count = (rank[-1:] + 1) if samples else torch.zeros(1, dtype=torch.int64, device=device)

    flat_label = label.reshape(-1).to(torch.int64)
    group = torch.where(flat_valid & (flat_label < num_classes), flat_label, num_classes)  # T: in no class
    return DeviceCloud(records, count, group, fields[:, :3], num_classes)


@torch.inference_mode()
def organized_points(
    labels: torch.Tensor, confidence: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, intrinsics: PinholeIntrinsics, min_score: float = 0.0
) -> torch.Tensor:
    """The pixel-aligned cloud of a frame (an organized PointCloud2 of ``height`` x ``width``), on the labels' device.

    Arguments as :func:`back_project` at stride 1. Returns (H, W, 6) float32 records (their
    bytes are :data:`POINT_DTYPE`: ``.numpy().view(POINT_DTYPE)[..., 0]`` is the host's (H, W)
    structured array), one per pixel: the point of pixel (u, v) at ``[v, u]``, with x, y and z
    NaN where it has none (invalid depth, score below ``min_score``); its rgb, score and label
    are the pixel's either way.
    """
    fields, valid, _ = _pixel_records(labels, confidence, rgb, depth, intrinsics, 1, min_score)
    fields[..., :3].masked_fill_(~valid[..., None], float("nan"))
    return fields


def pixel_rays(camera: PinholeIntrinsics, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ray factors of ``camera`` (at the labels' resolution): a point of depth z at
    pixel (u, v) is ``(z * ray_x[u], z * ray_y[v], z)``, ``ray_x = (u - cx) / fx`` for each
    column of ``cols`` and ``ray_y = (v - cy) / fy`` for each row of ``rows``."""
    return (cols.to(torch.float32) - camera.cx) / camera.fx, (rows.to(torch.float32) - camera.cy) / camera.fy


def depth_indices(colour_indices: torch.Tensor, colour_size: int, depth_size: int) -> torch.Tensor:
    """The depth row (column) under the centre of each colour row (column) of ``colour_indices``,
    for a depth image of ``depth_size`` rows (columns) registered to ``colour_size``: nearest neighbour."""
    return ((colour_indices + 0.5) * (depth_size / colour_size)).long().clamp_max_(depth_size - 1)


def _pixel_records(
    labels: torch.Tensor, confidence: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor, intrinsics: PinholeIntrinsics, stride: int, min_score: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H', W', 6) float32 records of every ``stride``-th pixel of every ``stride``-th row, their
    (H', W') validity (depth measured, score at least ``min_score``) and (H', W') labels."""
    if stride < 1:
        raise ValueError(f"points stride must be >= 1, not {stride}")
    intrinsics.check()
    height, width = labels.shape
    camera = intrinsics.scaled_to(width, height)
    device = labels.device
    rows = torch.arange(0, height, stride, device=device)
    cols = torch.arange(0, width, stride, device=device)
    if tuple(depth.shape) == (height, width):
        z = depth[::stride, ::stride]
    else:  # nearest-neighbour: the depth pixel under each sampled colour pixel's centre
        z = depth.index_select(0, depth_indices(rows, height, depth.shape[0])).index_select(1, depth_indices(cols, width, depth.shape[1]))
    z = z.to(torch.float32) * depth_scale(depth) if depth.dtype == torch.uint16 else z.to(torch.float32)
    score = confidence[::stride, ::stride]
    label = labels[::stride, ::stride]
    valid = z > 0  # NaN > 0 is False; millimetres are never inf
    if depth.dtype != torch.uint16:
        valid &= z < float("inf")
    if min_score > 0:
        valid &= score >= min_score

    # The records, written in place: x = z ray_x, y = z ray_y (one ray factor per column and
    # per row), z, then rgb, score and label as bytes.
    ray_x, ray_y = pixel_rays(camera, rows, cols)
    fields = torch.empty((len(rows), len(cols), RECORD_WORDS), dtype=torch.float32, device=device)
    torch.mul(z, ray_x, out=fields[..., 0])
    torch.mul(z, ray_y[:, None], out=fields[..., 1])
    fields[..., 2] = z
    fields[..., 4] = score
    record_bytes = fields.view(torch.uint8)  # (H', W', 24)
    colour = rgb[::stride, ::stride]
    for byte, channel in ((12, 2), (13, 1), (14, 0)):  # B, G, R, 0: 0x00RRGGBB little-endian
        record_bytes[..., byte] = colour[..., channel]
    record_bytes[..., 15] = 0
    record_bytes[..., 20:22] = label.to(torch.int16).view(torch.uint8).view(len(rows), len(cols), 2)  # ids >= 32768 wrap to uint16
    record_bytes[..., 22:24] = 0  # padding
    return fields, valid, label


#: Coordinates and class ids share one float64 sort key: class x 2**20 m + coordinate
#: (metres, far below 2**19), exact to 15 um even at 65535 classes.
_CLASS_SPAN = float(1 << 20)


@torch.inference_mode()
def class_summary(cloud: DeviceCloud) -> torch.Tensor:
    """Per class of ``cloud``, on its device: (T, 10) float32, the point count (int32 bits),
    then median x, y, z, 5th percentile x, y, z, 95th percentile x, y, z (NaN without points)."""
    group, xyz, num_classes = cloud.group, cloud.xyz, cloud.num_classes
    device = group.device
    counts = torch.zeros(num_classes + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, group, torch.ones_like(group))
    # One sort per axis of (class, coordinate) keys orders each class's coordinates in a
    # segment of its own; points in no class (and invalid ones, NaN) sort last.
    keys = _sort_rows(xyz.t().to(torch.float64) + group.to(torch.float64) * _CLASS_SPAN)  # (3, M)
    counts = counts[:num_classes]
    starts = torch.cumsum(counts, 0) - counts
    n = counts.to(torch.float64)
    offsets = torch.arange(num_classes, device=device, dtype=torch.float64) * _CLASS_SPAN
    last = max(group.numel() - 1, 0)
    statistics = []
    for q in (0.5, SUMMARY_QUANTILES[0], SUMMARY_QUANTILES[2]):  # centroid first, then the extent
        position = q * (n - 1).clamp_min(0)
        low = position.floor()
        low_index = (starts + low.long()).clamp(0, last)
        high_index = (starts + torch.minimum(low + 1, (n - 1).clamp_min(0)).long()).clamp(0, last)
        low_value, high_value = keys[:, low_index] - offsets, keys[:, high_index] - offsets  # (3, T)
        statistics.append((low_value + (position - low) * (high_value - low_value)).t())
    values = torch.cat(statistics, dim=1).to(torch.float32).masked_fill((counts == 0)[:, None], float("nan"))
    return torch.cat([counts.to(torch.int32).view(torch.float32)[:, None], values], dim=1)


def _sort_rows(keys: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending: torch on CUDA; on the CPU numpy's SIMD sort on a view, 5-10x
    faster than torch's here, and the same values (only the values are used; NaN last in both)."""
    if keys.device.type != "cpu":
        return torch.sort(keys, dim=1).values
    return torch.from_numpy(np.sort(keys.numpy(), axis=1))
