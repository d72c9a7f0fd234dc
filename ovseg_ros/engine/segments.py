"""Objects, not only pixels: the connected regions of a labeled frame, with scores and a 3D box, ROS-free.

    segments = find_segments(outputs.labels, scores, vocabulary.names, present_class_ids=outputs.present_class_ids,
                             depth=depth, intrinsics=intrinsics)          # depth: decode_depth's host array
    tracker.update(segments, stamp_s, outputs.labels.shape, source)   # track ids
    instances = instance_image(segments, *outputs.labels.shape)          # (H, W) uint16, 0 = none

A segment is a connected region (8-connectivity) of one class's pixels, found on the host
label image (which the frame path downloads anyway) with OpenCV's connected components on
each present class's bounding crop, over the classes present only (so 847 classes cost what
the few present ones cost); ``python -m ovseg_dev.bench_segments`` measures this against a
label propagation in torch, the device's way, which is far slower on the CPU. Each class is its own binary image, so touching regions of two classes stay
two segments, and a region cut in two by another class's pixels is two segments.
Classes whose name (or any of its synonyms, ``"floor, ground"``) is a *stuff* class
(:data:`DEFAULT_STUFF_CLASSES`: floor, wall, ...) are one segment per class, however many
pieces they are in. Regions smaller than ``min_area_px`` are dropped.

Scores come from a host image of the winning score per pixel: float32, or uint8 as
``FrameOutputs.confidence`` (score x 255, clipped to 1).

With the frame's registered depth image each segment gets a 3D box in the camera's optical
frame (x right, y down, z forward, metres), by the back-projection of
:mod:`ovseg_ros.engine.points` (same depth resampling, rays and validity) and the per-class
summary's robust rule: the centroid is the per-axis median of the segment's points, the box
spans their 5th to 95th percentiles per axis (``np.percentile``, linear), so flying pixels
at the edges and reflections do not move it. A segment of more than ``max_points`` pixels is
summarised from about ``max_points`` of them, those of every k-th pixel of its box in raster
order, k = area / ``max_points`` made coprime with the box's width (so that the samples
spread over all its rows and columns): at the default
1024 the percentiles of a 640x480 frame's wall, floor and boxes (21,000 to 190,000 pixels)
move by less than 0.5% of the box's extent (2.6 pixels' footprint on the wall, under one on
the boxes). A segment with fewer
than ``min_points`` valid depth pixels has no 3D box (``box3d`` None); so has every segment
of a frame without valid depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from ovseg_ros.engine.points import PinholeIntrinsics, SUMMARY_QUANTILES, depth_indices, depth_scale, pixel_rays

try:
    import cv2
except ImportError:  # the GPU check machine has no OpenCV (robots do)
    cv2 = None

#: Classes that are surfaces rather than objects: one segment per class, not one per region.
DEFAULT_STUFF_CLASSES = frozenset({"floor", "wall", "ceiling", "sky", "road", "grass"})
#: Neighbours that join pixels into one region: the 8 around a pixel.
CONNECTIVITY = 8
#: Above this many regions of a class, their boxes come from one pass over its crop.
_FEW_REGIONS = 8


@dataclass(frozen=True)
class SegmentSettings:
    """What makes a segment.

    Attributes:
        min_area_px: regions of fewer pixels are dropped (stuff classes too).
        stuff_classes: class names (lower case) that are one segment per class.
        min_points: a segment with fewer valid depth pixels has no 3D box.
        max_points: about how many of a segment's pixels its 3D box is computed from.
    """

    min_area_px: int = 50
    stuff_classes: frozenset[str] = DEFAULT_STUFF_CLASSES
    min_points: int = 10
    max_points: int = 1024

    def __post_init__(self) -> None:
        if self.min_area_px < 1 or self.min_points < 1 or self.max_points < 1:
            raise ValueError(f"min_area_px, min_points and max_points must be >= 1: {self}")


@dataclass
class Box3D:
    """A segment's points summarised, metres, camera optical frame.

    Attributes:
        centroid: (3,) float64 per-axis median x, y, z.
        minimum, maximum: (3,) float64 5th and 95th percentile per axis: the axis-aligned box.
    """

    centroid: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """(3,) the box's centre (not the centroid: the median need not be midway)."""
        return (self.minimum + self.maximum) / 2.0

    @property
    def size(self) -> np.ndarray:
        """(3,) the box's extent per axis."""
        return self.maximum - self.minimum


@dataclass
class Segment:
    """One connected region of one class (or all of a stuff class) in one frame.

    Attributes:
        class_id: its label id (index into the vocabulary's names).
        area_px: its pixels.
        box_px: (x, y, width, height): columns x .. x + width - 1, rows y .. y + height - 1.
        centroid_px: (u, v) mean pixel position (pixel centres at integer coordinates).
        mean_score, max_score: of its pixels' winning scores.
        mask: (height, width) bool, C-contiguous, its pixels within ``box_px``.
        point_count: its pixels with valid depth (0 without depth).
        box3d: its 3D summary, None without depth or with fewer than ``min_points`` points.
        track_id: > 0 once a :class:`~ovseg_ros.engine.tracking.SegmentTracker` has seen it.
    """

    class_id: int
    area_px: int
    box_px: tuple[int, int, int, int]
    centroid_px: tuple[float, float]
    mean_score: float
    max_score: float
    mask: np.ndarray
    point_count: int = 0
    box3d: Box3D | None = None
    track_id: int = 0


def find_segments(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    settings: SegmentSettings = SegmentSettings(),
    *,
    present_class_ids: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    intrinsics: PinholeIntrinsics | None = None,
) -> list[Segment]:
    """The segments of a labeled frame, ordered by class id, then by their first pixel (rows first).

    Args:
        labels: (H, W) uint8 or uint16 class ids; ids >= ``len(class_names)`` are unlabeled.
        scores: (H, W) float32 winning score, or uint8 score x 255.
        class_names: the vocabulary's names, label id i = ``class_names[i]``.
        settings: see :class:`SegmentSettings`.
        present_class_ids: the classes with pixels (``FrameOutputs.present_class_ids``);
            found from ``labels`` when None.
        depth: (H_d, W_d) uint16 millimetres or float32 metres registered to the colour
            camera (:func:`~ovseg_ros.engine.points.decode_depth`), or None for no 3D.
        intrinsics: of the colour camera, at any resolution; needed with ``depth``.

    Raises ValueError for arrays of the wrong shape or type, ImportError without OpenCV and
    :class:`~ovseg_ros.engine.image_codec.ImageError` for unusable intrinsics.
    """
    if cv2 is None:
        raise ImportError("segments need OpenCV (python3-opencv / opencv-python) for connected components, which is not installed")
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"labels must be (H, W) uint8 or uint16, not {labels.shape} {labels.dtype}")
    if scores.shape != labels.shape or scores.dtype not in (np.float32, np.uint8):
        raise ValueError(f"scores must be {labels.shape} float32 or uint8, not {scores.shape} {scores.dtype}")
    if depth is not None and intrinsics is None:
        raise ValueError("depth needs the colour camera's intrinsics")
    num_classes = len(class_names)
    if present_class_ids is None:
        present_class_ids = np.flatnonzero(np.bincount(labels.ravel(), minlength=num_classes)[:num_classes])
    stuff = _stuff_class_ids(tuple(class_names), settings.stuff_classes)
    score_scale = 1.0 / 255.0 if scores.dtype == np.uint8 else 1.0
    sampler = _DepthSampler(depth, intrinsics, labels.shape) if depth is not None else None
    segments = []
    for class_id in sorted(set(np.asarray(present_class_ids).tolist())):
        if class_id >= num_classes:
            continue
        class_mask = labels == class_id
        x, y, width, height = cv2.boundingRect(class_mask.view(np.uint8))
        if width == 0:  # listed as present, but not in these labels
            continue
        crop = class_mask[y : y + height, x : x + width]
        regions = [(x, y, crop, None)] if class_id in stuff else _regions(crop, x, y, settings.min_area_px)
        for left, top, mask, area in regions:
            area = int(np.count_nonzero(mask)) if area is None else area
            if area < settings.min_area_px:
                continue
            segment = _segment(class_id, left, top, mask, area, scores, score_scale)
            if sampler is not None:
                segment.point_count, segment.box3d = sampler.summary(segment, settings)
            segments.append(segment)
    return segments


def instance_image(segments: list[Segment], height: int, width: int) -> np.ndarray:
    """(H, W) uint16 image of the segments' track ids, 0 where there is none.

    Ids above 65535 wrap to 1..65535 (``(id - 1) % 65535 + 1``): an image id names the same
    object as the segment's id until 65535 newer tracks have begun.
    """
    image = np.zeros((height, width), np.uint16)
    for segment in segments:
        x, y, box_width, box_height = segment.box_px
        image[y : y + box_height, x : x + box_width][segment.mask] = (segment.track_id - 1) % 65535 + 1 if segment.track_id else 0
    return image


def stuff_classes(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The :attr:`SegmentSettings.stuff_classes` of a list of names as users type them (case and
    surrounding spaces ignored, as when a class name is matched against them)."""
    return frozenset(name.strip().lower() for name in names if name.strip())


@lru_cache(maxsize=16)
def _stuff_class_ids(class_names: tuple[str, ...], stuff_classes: frozenset[str]) -> frozenset[int]:
    """Ids of the classes of which the name or a synonym (``"floor, ground"``) is a stuff class."""
    return frozenset(
        class_id for class_id, name in enumerate(class_names) if any(synonym.strip().lower() in stuff_classes for synonym in name.split(","))
    )


def _regions(crop: np.ndarray, x: int, y: int, min_area_px: int) -> list[tuple[int, int, np.ndarray, int | None]]:
    """(left, top, mask, area) of each connected region of at least ``min_area_px`` pixels of
    the class mask ``crop`` at (x, y); an area None is left to count. One region (the
    commonest case) is ``crop`` itself."""
    count, components = cv2.connectedComponents(crop.view(np.uint8), connectivity=CONNECTIVITY, ltype=cv2.CV_32S)
    if count <= 2:
        return [(x, y, crop, None)]
    if count - 1 <= _FEW_REGIONS:  # a comparison of the crop and a bounding box each
        regions = []
        for k in range(1, count):
            region = components == k
            left, top, width, height = cv2.boundingRect(region.view(np.uint8))
            regions.append((x + left, y + top, region[top : top + height, left : left + width], None))
        return regions
    # Many (speckle): the areas first, then the boxes of the large enough ones, each in one pass.
    areas = np.bincount(components.ravel(), minlength=count)
    boxes = ndimage.find_objects(components)
    kept = (np.flatnonzero(areas[1:] >= min_area_px) + 1).tolist()
    return [(x + boxes[k - 1][1].start, y + boxes[k - 1][0].start, components[boxes[k - 1]] == k, int(areas[k])) for k in kept]


def _segment(class_id: int, x: int, y: int, mask: np.ndarray, area: int, scores: np.ndarray, score_scale: float) -> Segment:
    height, width = mask.shape
    own_scores = scores[y : y + height, x : x + width][mask]
    pixels = mask.view(np.uint8)
    centroid_u = np.add.reduce(pixels, axis=0, dtype=np.int32) @ np.arange(width) / area  # pixels per column
    centroid_v = np.add.reduce(pixels, axis=1, dtype=np.int32) @ np.arange(height) / area
    return Segment(
        class_id=class_id,
        area_px=area,
        box_px=(x, y, width, height),
        centroid_px=(x + float(centroid_u), y + float(centroid_v)),
        mean_score=float(own_scores.mean(dtype=np.float64)) * score_scale,
        max_score=float(own_scores.max()) * score_scale,
        mask=np.ascontiguousarray(mask),
    )


class _DepthSampler:
    """A frame's depth on the label grid: the 3D summary of its segments.

    Args:
        depth: (H_d, W_d) uint16 mm or float32 m, registered; resampled nearest-neighbour
            onto the (H, W) label grid as :func:`~ovseg_ros.engine.points.back_project` does.
        intrinsics: the colour camera's, scaled to (W, H).
        shape: (H, W) of the labels.
    """

    def __init__(self, depth: np.ndarray, intrinsics: PinholeIntrinsics, shape: tuple[int, int]) -> None:
        if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
            raise ValueError(f"depth must be (H, W) uint16 or float32, not {depth.shape} {depth.dtype}")
        intrinsics.check()
        self.ray_x, self.ray_y = _rays(intrinsics, shape)
        if depth.shape != shape:  # the depth pixel under each label pixel's centre
            height, width = shape
            rows = depth_indices(torch.arange(height), height, depth.shape[0]).numpy()
            depth = depth[rows[:, None], depth_indices(torch.arange(width), width, depth.shape[1]).numpy()]
        self.depth = np.ascontiguousarray(depth)  # (H, W) on the label grid, raw
        self.scale = np.float32(depth_scale(depth))
        self._valid: np.ndarray | None = None  # (H, W) bool, made by the first large segment

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool, where the frame has a depth measurement: once per frame, not once per
        segment box (the boxes of stuff classes span most of the frame)."""
        if self._valid is None:
            self._valid = _valid(self.depth)
        return self._valid

    def summary(self, segment: Segment, settings: SegmentSettings) -> tuple[int, Box3D | None]:
        """(valid depth pixels of ``segment``, its :class:`Box3D` or None below ``min_points``)."""
        x, y, width, height = segment.box_px
        mask = segment.mask
        step = math.ceil(segment.area_px / settings.max_points)
        if step == 1:
            pixels = np.flatnonzero(mask)  # in the box, raster order
        else:  # every step-th pixel of the box in raster order, those of the segment
            while math.gcd(step, width) > 1:  # else the samples would lie in the same few columns
                step += 1
            pixels = np.arange(step // 2, width * height, step)
            pixels = pixels[mask.ravel()[pixels]]
        v, u = np.divmod(pixels, width)
        v += y
        u += x
        z = self.depth[v, u]
        valid = _valid(z)
        # Every valid pixel counted, also where the summary sees a sample.
        point_count = int(np.count_nonzero(valid)) if step == 1 else int(np.count_nonzero(self.valid[y : y + height, x : x + width] & mask))
        if point_count < settings.min_points or not valid.any():
            return point_count, None
        z, v, u = z[valid], v[valid], u[valid]
        points = np.empty((3, len(z)), np.float32)
        if z.dtype == np.uint16:
            np.multiply(z, self.scale, out=points[2])  # points.back_project's metres: float32
        else:
            points[2] = z
        np.multiply(points[2], self.ray_x[u], out=points[0])
        np.multiply(points[2], self.ray_y[v], out=points[1])
        low, median, high = _percentiles(points)
        return point_count, Box3D(median, low, high)


@lru_cache(maxsize=8)
def _rays(intrinsics: PinholeIntrinsics, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(W,) and (H,) float32 ray factors of the label grid (:func:`~ovseg_ros.engine.points.pixel_rays`),
    kept for the cameras in use."""
    height, width = shape
    ray_x, ray_y = pixel_rays(intrinsics.scaled_to(width, height), torch.arange(height), torch.arange(width))
    return ray_x.numpy(), ray_y.numpy()


def _valid(depth: np.ndarray) -> np.ndarray:
    """Where raw depth (uint16 mm, float32 m) is a measurement: > 0, and finite (NaN > 0 is False)."""
    return depth > 0 if depth.dtype == np.uint16 else (depth > 0) & (depth < np.inf)


def _percentiles(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(3,) float64 5th, 50th and 95th percentile of each row of (3, N) ``points``: what
    ``np.percentile`` gives (linear interpolation) without its overhead, from numpy's
    vectorised sort (faster than a partition at the ~1000 points of a segment)."""
    last = points.shape[1] - 1
    positions = [q * last for q in SUMMARY_QUANTILES]
    low = [math.floor(position) for position in positions]
    high = [min(index + 1, last) for index in low]
    ordered = np.sort(points, axis=1)
    low_values = ordered[:, low].astype(np.float64)  # (3 axes, 3 quantiles)
    values = low_values + np.subtract(positions, low) * (ordered[:, high] - low_values)
    return values[:, 0], values[:, 1], values[:, 2]
