"""Stable ids for segments across a camera's frames, ROS-free.

    tracker = SegmentTracker()
    tracker.update(segments, stamp_s, labels.shape, source="front")
    [segment.track_id for segment in segments]          # > 0, stable while the object stays in view

A light tracker: each camera (``source``) has tracks of its own, and a segment continues a
track of its own class only. Each frame, the segments and the camera's tracks are paired by
the overlap (IoU) of their 2D boxes with an optimal assignment
(``scipy.optimize.linear_sum_assignment``, the largest total IoU, pairs below ``min_iou``
left apart); a paired segment takes its track's id and moves the track's box, every other
segment begins a new track. A track without a segment is kept ``max_missed_frames`` frames
(its last box waits for the object to come back from behind an occluder), then dropped.

Ids come from one counter per tracker and are never given twice, whichever camera, class
or reset: an id names one object. A camera's tracks restart (its next segments all get new
ids) when the image size changes, when the stamp goes backwards, after a gap longer than
``max_gap_s`` and after :meth:`SegmentTracker.reset` (the frame path calls it once on a
vocabulary change), as temporal smoothing restarts;
:attr:`SegmentTracker.last_reset_reason` says why. One thread at a time may call
:meth:`SegmentTracker.update`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ovseg_ros.engine.smoothing import stamp_gap_reason

from ovseg_ros.engine.segments import Segment


@dataclass
class _Tracks:
    """One camera's tracks, parallel arrays."""

    ids: np.ndarray  # (N,) int64
    class_ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64 x0, y0, x1, y1 (x1, y1 exclusive)
    missed: np.ndarray  # (N,) int64 frames since the track last had a segment
    stamp_s: float
    key: tuple  # the image size: what must not change between frames


class SegmentTracker:
    """Track ids for the segments of each camera's frames; see the module docstring.

    Args:
        min_iou: the least box IoU at which a segment continues a track, 0 < min_iou <= 1.
        max_missed_frames: frames a track without a segment is kept before it is dropped.
        max_gap_s: a larger gap between a camera's consecutive stamps restarts its tracks.
    """

    def __init__(self, min_iou: float = 0.3, max_missed_frames: int = 5, max_gap_s: float = 1.0) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if max_missed_frames < 0:
            raise ValueError(f"max_missed_frames must be >= 0, got {max_missed_frames}")
        if max_gap_s <= 0.0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        self.min_iou = min_iou
        self.max_missed_frames = max_missed_frames
        self.max_gap_s = max_gap_s
        #: Why the latest :meth:`update` restarted its camera's tracks, or None if it continued them.
        self.last_reset_reason: str | None = None
        self._sources: dict[str, _Tracks] = {}
        self._forgotten: dict[str, str] = {}  # camera -> why reset() dropped its tracks
        self._last_id = 0

    def reset(self, reason: str | None = None) -> None:
        """Forget every camera's tracks (ids already given are still never given again); the next
        :meth:`update` of each camera has ``reason`` as its :attr:`last_reset_reason` (None: "no previous tracks")."""
        if reason is not None:
            self._forgotten.update(dict.fromkeys(self._sources, reason))
        self._sources.clear()

    def update(self, segments: list[Segment], stamp_s: float, image_size: tuple[int, int], source: str = "") -> None:
        """Set the ``track_id`` of each of ``segments``, one frame of camera ``source``.

        Args:
            segments: the frame's segments (:func:`~ovseg_ros.engine.segments.find_segments`).
            stamp_s: the frame's stamp, seconds.
            image_size: (H, W) of its labels.
            source: the camera; each has tracks of its own.
        """
        key = tuple(image_size)
        past = self._sources.get(source)
        self.last_reset_reason = self._forgotten.pop(source, None) or self._reset_reason(past, key, stamp_s)
        if self.last_reset_reason is not None:
            past = _Tracks(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), stamp_s, key)
        boxes = np.array([_corners(segment) for segment in segments], dtype=np.float64).reshape(-1, 4)
        class_ids = np.array([segment.class_id for segment in segments], dtype=np.int64)
        ids = np.zeros(len(segments), dtype=np.int64)
        continued = np.zeros(len(past.ids), dtype=bool)
        if len(segments) and len(past.ids):
            overlap = _box_iou(boxes, past.boxes)
            overlap[(class_ids[:, None] != past.class_ids[None, :]) | (overlap < self.min_iou)] = 0.0
            rows, cols = linear_sum_assignment(overlap, maximize=True)
            paired = overlap[rows, cols] > 0.0
            ids[rows[paired]] = past.ids[cols[paired]]
            continued[cols[paired]] = True
        new = ids == 0
        ids[new] = self._last_id + 1 + np.arange(np.count_nonzero(new))
        self._last_id += int(np.count_nonzero(new))
        for segment, track_id in zip(segments, ids.tolist()):
            segment.track_id = track_id
        # The frame's segments, and the tracks that lost theirs while they may still come back.
        lost = ~continued & (past.missed < self.max_missed_frames)
        self._sources[source] = _Tracks(
            ids=np.concatenate([ids, past.ids[lost]]),
            class_ids=np.concatenate([class_ids, past.class_ids[lost]]),
            boxes=np.concatenate([boxes, past.boxes[lost]]),
            missed=np.concatenate([np.zeros(len(ids), np.int64), past.missed[lost] + 1]),
            stamp_s=stamp_s,
            key=key,
        )

    def _reset_reason(self, past: _Tracks | None, key: tuple, stamp_s: float) -> str | None:
        """Why ``past`` cannot be continued into a frame with ``key`` at ``stamp_s``, or None."""
        if past is None:
            return "no previous tracks"
        if key != past.key:
            return f"image size changed ({past.key} -> {key})"
        return stamp_gap_reason(past.stamp_s, stamp_s, self.max_gap_s)


def _corners(segment: Segment) -> tuple[int, int, int, int]:
    x, y, width, height = segment.box_px
    return x, y, x + width, y + height


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of (A, 4) and (B, 4) boxes x0, y0, x1, y1 (pixel counts: x1, y1 exclusive)."""
    width = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(min=0)
    height = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(min=0)
    intersection = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return intersection / (area_a[:, None] + area_b[None, :] - intersection)
