"""Point-cloud construction per frame: ``python -m ovseg_dev.bench_points [--stride 2]``.

A 640x480 frame (labels, scores, colour, 16UC1 depth with 5% holes) through
:func:`ovseg_ros.engine.points.back_project` (the cloud's records), with the copy of the records
into a PointCloud2's bytes, and :func:`ovseg_ros.engine.points.class_summary`; prints the median and p95 wall ms, and the
median CPU ms of this thread (with ``--threads 1``: the wall time it would take on an idle
core, when other processes share the CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ovseg_ros.engine.points import PinholeIntrinsics, back_project, class_summary, points_of


def frame(height: int, width: int, num_classes: int, seed: int = 0):
    """Labels (uint8 blocks), scores, colour and 16UC1 depth (a slanted scene, 5% holes) as CPU tensors."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width]
    labels = ((u // 80 + v // 60) % num_classes).astype(np.uint8)
    confidence = rng.random((height, width), dtype=np.float32)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = (1000 + 3 * u + 2 * v).astype(np.uint16)
    depth[rng.random((height, width)) < 0.05] = 0
    return [torch.from_numpy(a) for a in (labels, confidence, rgb, depth)]


def timed_ms(function, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds of each call."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        function()
        wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.thread_time() - start_cpu) * 1000.0)
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    labels, confidence, rgb, depth = frame(args.height, args.width, args.classes)
    camera = PinholeIntrinsics(525.0, 525.0, (args.width - 1) / 2, (args.height - 1) / 2, args.width, args.height)

    def cloud():
        result = back_project(labels, confidence, rgb, depth, camera, args.classes, args.stride)
        return points_of(result.records.numpy(), int(result.count[0]))

    def cloud_bytes():
        cloud().tobytes()  # what point_cloud_msg copies into the message

    projected = back_project(labels, confidence, rgb, depth, camera, args.classes, args.stride)

    def summary():
        class_summary(projected)

    for function in (cloud, cloud_bytes, summary):
        function()  # warm-up
    points = cloud()
    print(f"{args.width}x{args.height}, stride {args.stride}, {args.classes} classes: {len(points)} points, torch threads {torch.get_num_threads()}")
    for name, function in (("point cloud (records)", cloud), ("  + PointCloud2 bytes", cloud_bytes), ("per-class 3D summary", summary)):
        wall, cpu = timed_ms(function, args.repeats)
        print(f"{name:28s} wall median {np.median(wall):6.2f} ms  p95 {np.percentile(wall, 95):6.2f} ms   this thread CPU {np.median(cpu):6.2f} ms")


if __name__ == "__main__":
    main()
