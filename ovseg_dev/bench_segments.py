"""Segments, 3D boxes and track ids per frame: ``python -m ovseg_dev.bench_segments [--threads 1]``.

A 640x480 frame of 20 segments (:func:`frame`): a wall and a floor (stuff classes), 16
rectangles of 6 object classes at 1-3.25 m, one of them cut in two by a pole; labels uint8,
scores float32, 16UC1 depth with 3 mm noise, 5% holes and 1% flying pixels. The objects drift a few
pixels a frame, so the tracker continues every track. Prints the median, p95 and minimum
wall ms and the median thread-CPU ms of (the minimum is the cost on a quiet CPU; the median
includes what other processes sharing the CPU cost it):

* ``segments``: :func:`~ovseg_ros.engine.segments.find_segments` without depth;
* ``segments + 3D``: with the depth image;
* ``tracking``: :meth:`~ovseg_ros.engine.tracking.SegmentTracker.update` alone;
* ``total``: segments + 3D + tracking, the per-frame cost of publishing detections;

and the connected-components choice, the regions of every present class of the frame:

* ``cv2 per class`` (used): ``cv2.connectedComponents`` on each class's bounding crop, then
  each region's box (``segments._regions``: a bounding box per region, or
  ``scipy.ndimage.find_objects`` for many);
* ``cv2 with stats``: ``cv2.connectedComponentsWithStats`` on the same crops;
* ``torch propagation``: a device equivalent, all classes at once: each pixel takes the
  smallest pixel index among its 8 neighbours of the same class, with pointer jumping,
  until nothing changes (on the device of ``--device``; one host sync per iteration).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from ovseg_dev.bench_points import timed_ms
from ovseg_ros.engine.points import PinholeIntrinsics
from ovseg_ros.engine.segments import _regions, find_segments
from ovseg_ros.engine.tracking import SegmentTracker

NAMES = ("wall", "floor", "box", "person", "chair", "bottle", "monitor", "bag")
WALL, FLOOR = 0, 1


def frame(height: int, width: int, index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (H, W) uint8, scores (H, W) float32, depth (H, W) uint16 mm) of frame ``index``:
    the wall, the floor, 16 rectangles in the cells of a 6 x 3 grid (classes 2..7 in turn, 1 to
    3.25 m), the one of cell 8 cut in two by a pole of class 7 (18 object segments)."""
    rng = np.random.default_rng(seed)
    labels = np.full((height, width), WALL, np.uint8)
    horizon = int(height * 0.65)
    labels[horizon:] = FLOOR
    rows = np.arange(height, dtype=np.float64)[:, None]
    depth = np.where(rows >= horizon, 1200.0 * 525.0 / np.maximum(rows - height / 2, 1.0), 4000.0) * np.ones((1, width))
    cell_w, cell_h = width // 6, horizon // 3
    drift = 3 * index % 12  # pixels: the objects move a little from frame to frame
    for k in range(16):
        x0 = (k % 6) * cell_w + 8 + drift + int(rng.integers(0, 6))
        y0 = (k // 6) * cell_h + 8 + int(rng.integers(0, 6))
        box = (slice(y0, y0 + cell_h - 20), slice(x0, x0 + cell_w - 30))
        labels[box], depth[box] = 2 + k % 6, 1000.0 + 150.0 * k
        if k == 8:
            pole = (box[0], slice(x0 + cell_w // 2 - 20, x0 + cell_w // 2 - 12))
            labels[pole], depth[pole] = 7, 800.0
    scores = (0.5 + 0.5 * rng.random((height, width))).astype(np.float32)
    depth += rng.normal(0.0, 3.0, depth.shape)  # sensor noise, mm
    depth[rng.random((height, width)) < 0.05] = 0.0  # holes
    depth[rng.random((height, width)) < 0.01] = 30000.0  # flying pixels
    return labels, scores, np.rint(depth).astype(np.uint16)


def cv2_regions(labels: np.ndarray, with_stats: bool) -> int:
    """Regions (boxes and areas) of every present class by OpenCV on its bounding crop, as
    :func:`~ovseg_ros.engine.segments.find_segments` finds them or with the stats OpenCV
    computes; their number."""
    regions = 0
    for class_id in np.flatnonzero(np.bincount(labels.ravel())).tolist():
        mask = labels == class_id
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        crop = mask[y : y + h, x : x + w]
        if with_stats:
            count, _, _, _ = cv2.connectedComponentsWithStats(crop.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            regions += count - 1
        else:
            regions += len(_regions(crop, x, y, 1))
    return regions


def torch_regions(labels: torch.Tensor) -> int:
    """Regions of every class at once by label propagation on ``labels``' device; their number."""
    height, width = labels.shape
    big = height * width
    index = torch.arange(big, device=labels.device).view(height, width)
    padded_labels = torch.nn.functional.pad(labels.to(torch.int32)[None, None], (1, 1, 1, 1), value=-1)[0, 0]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    same = [padded_labels[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] == labels for dy, dx in shifts]
    root = index.clone()
    while True:
        padded = torch.nn.functional.pad(root[None, None].float(), (1, 1, 1, 1), value=float(big))[0, 0].long()
        smallest = root
        for (dy, dx), neighbour_same in zip(shifts, same):
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            smallest = torch.where(neighbour_same, torch.minimum(smallest, neighbour), smallest)
        flat = smallest.view(-1)
        smallest = flat[flat].view(height, width)  # pointer jumping
        if torch.equal(smallest, root):
            break
        root = smallest
    return int((root.view(-1) == index.view(-1)).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch and OpenCV threads (0: their defaults)")
    parser.add_argument("--device", default="cpu", help="device of the torch propagation")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    camera = PinholeIntrinsics(525.0, 525.0, (args.width - 1) / 2, (args.height - 1) / 2, args.width, args.height)
    frames = [frame(args.height, args.width, index) for index in range(8)]
    labels, scores, depth = frames[0]
    present = np.arange(len(NAMES), dtype=np.uint16)  # FrameOutputs.present_class_ids: every class is in every frame
    segments = find_segments(labels, scores, NAMES, depth=depth, intrinsics=camera)
    print(f"{args.width}x{args.height}: {len(segments)} segments ({sum(s.box3d is not None for s in segments)} with a 3D box), "
          f"{cv2_regions(labels, False)} regions before min_area_px")

    tracker = SegmentTracker()
    counter = iter(range(10**9))

    def total():
        index = next(counter)
        labels, scores, depth = frames[index % len(frames)]
        found = find_segments(labels, scores, NAMES, present_class_ids=present, depth=depth, intrinsics=camera)
        tracker.update(found, 0.05 * index, labels.shape)

    tracked = find_segments(labels, scores, NAMES, depth=depth, intrinsics=camera)
    tracking_clock = iter(range(10**9))

    def tracking():
        tracker.update(tracked, 0.05 * next(tracking_clock), labels.shape, source="tracking alone")

    device_labels = torch.from_numpy(labels).to(args.device)
    rows = {
        "segments (classes from the labels)": lambda: find_segments(labels, scores, NAMES),
        "segments": lambda: find_segments(labels, scores, NAMES, present_class_ids=present),
        "segments + 3D": lambda: find_segments(labels, scores, NAMES, present_class_ids=present, depth=depth, intrinsics=camera),
        "tracking": tracking,
        "total (segments + 3D + tracking)": total,
        "CC: cv2 per class (used)": lambda: cv2_regions(labels, False),
        "CC: cv2 with stats": lambda: cv2_regions(labels, True),
        f"CC: torch propagation ({args.device})": lambda: torch_regions(device_labels),
    }
    print(f"{'':38s} {'median ms':>10s} {'p95 ms':>8s} {'min ms':>8s} {'CPU ms':>8s}")
    for name, function in rows.items():
        repeats = args.repeats if "torch" not in name else min(3, args.repeats)  # up to seconds a call on the CPU
        function()  # warm-up
        wall, cpu = timed_ms(function, repeats)
        print(f"{name:38s} {np.median(wall):10.2f} {np.percentile(wall, 95):8.2f} {min(wall):8.2f} {np.median(cpu):8.2f}")
    assert torch_regions(device_labels) == cv2_regions(labels, False), "both count the same regions"


if __name__ == "__main__":
    main()
