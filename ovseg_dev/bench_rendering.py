"""Benchmark the output rendering: colour map, overlay, confidence, masks, class counts.

    python -m ovseg_dev.bench_rendering [--size 1280x720] [--classes 150] [--repeats 30]
                                              [--masks 4] [--threads 1] [--device cuda]

Measures, in one run, per operation and image size (default 640x480 and 1280x720):

* before: the previous numpy implementation (int64 fancy indexing for the colour map, a
  float32 blend for the overlay and confidence, ``np.where`` masks, ``np.bincount`` on the
  labels), kept here only as the baseline;
* cv2: :class:`~ovseg_ros.engine.rendering.Renderer` on the CPU (cv2 kernels on tensor views);
* with ``--device cuda``: the Renderer's torch path on that device (synchronized).

Labels are random class ids with 10% unlabeled pixels: uint8 up to 254 classes, else int32.
Times are the median over ``--repeats`` calls, in ms; "x" is before / cv2.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from ovseg_ros.engine.rendering import Renderer, palette

OVERLAY_ALPHA = 0.5


# -- the previous implementation (baseline only) ----------------------------------------


def before_colorize(labels: np.ndarray, table: np.ndarray, unlabeled_id: int) -> np.ndarray:
    index = labels.astype(np.int64)
    index[labels == unlabeled_id] = len(table) - 1
    return table[index]


def before_overlay(rgb: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def before_confidence(confidence: np.ndarray) -> np.ndarray:
    return np.clip(confidence * 255.0 + 0.5, 0, 255).astype(np.uint8)


def before_mask(labels: np.ndarray, class_id: int) -> np.ndarray:
    return np.where(labels == class_id, 255, 0).astype(np.uint8)


def before_class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]


# -- measurement ------------------------------------------------------------------------


def median_ms(run: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    run()  # warm-up: allocations, kernel selection
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0


def synthetic_frame(height: int, width: int, num_classes: int, seed: int = 0):
    """(labels (H, W), image (H, W, 3) uint8, confidence (H, W) float32 in -0.1..1.2) as numpy."""
    rng = np.random.default_rng(seed)
    label_dtype = np.uint8 if num_classes <= 254 else np.int32
    unlabeled = 255 if num_classes <= 254 else 65535
    labels = rng.integers(0, num_classes, (height, width)).astype(label_dtype)
    labels[rng.random((height, width)) < 0.1] = unlabeled
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    confidence = rng.uniform(-0.1, 1.2, (height, width)).astype(np.float32)
    return labels, image, confidence


def bench_size(height: int, width: int, num_classes: int, num_masks: int, repeats: int, device: torch.device | None) -> list[tuple[str, float, float, float | None]]:
    """Rows (operation, before ms, cv2 ms, device ms or None) for one image size."""
    names = [f"class {i}" for i in range(num_classes)]
    labels_np, image_np, confidence_np = synthetic_frame(height, width, num_classes)
    table = palette(names)
    unlabeled = 255 if num_classes <= 254 else 65535
    mask_ids = list(range(num_masks))
    color_np = before_colorize(labels_np, table, unlabeled)

    renderer = Renderer(names)
    labels, image, confidence, color = (torch.from_numpy(a) for a in (labels_np, image_np, confidence_np, color_np))
    before = {
        "colorize": lambda: before_colorize(labels_np, table, unlabeled),
        "overlay": lambda: before_overlay(image_np, color_np, OVERLAY_ALPHA),
        "confidence": lambda: before_confidence(confidence_np),
        f"masks x{num_masks}": lambda: [before_mask(labels_np, i) for i in mask_ids],
        "class_counts": lambda: before_class_counts(labels_np, num_classes),
    }
    after = {
        "colorize": lambda: renderer.colorize(labels),
        "overlay": lambda: renderer.overlay(image, color, OVERLAY_ALPHA),
        "confidence": lambda: renderer.confidence(confidence),
        f"masks x{num_masks}": lambda: renderer.masks(labels, mask_ids),
        "class_counts": lambda: renderer.class_counts(labels),
    }
    on_device = {}
    if device is not None:
        device_renderer = Renderer(names, device=device)
        d_labels, d_image, d_confidence, d_color = (t.to(device) for t in (labels, image, confidence, color))
        on_device = {
            "colorize": lambda: device_renderer.colorize(d_labels),
            "overlay": lambda: device_renderer.overlay(d_image, d_color, OVERLAY_ALPHA),
            "confidence": lambda: device_renderer.confidence(d_confidence),
            f"masks x{num_masks}": lambda: device_renderer.masks(d_labels, mask_ids),
            "class_counts": lambda: device_renderer.class_counts(d_labels),
        }
    sync = (lambda: torch.cuda.synchronize(device)) if device is not None and device.type == "cuda" else (lambda: None)
    rows = []
    for operation in before:
        device_ms = median_ms(on_device[operation], repeats, sync) if on_device else None
        rows.append((operation, median_ms(before[operation], repeats), median_ms(after[operation], repeats), device_ms))
    return rows


def parse_size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" -> (height, width)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", type=parse_size, help="WIDTHxHEIGHT, repeatable (default 640x480 and 1280x720)")
    parser.add_argument("--classes", type=int, default=150, help="vocabulary size (default 150; > 254 gives int32 labels)")
    parser.add_argument("--masks", type=int, default=4, help="mask images per frame (default 4)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per operation (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="cv2 and torch CPU threads (default 1)")
    parser.add_argument("--device", default=None, help="also time the torch path on this device, e.g. cuda")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else None
    sizes = args.size or [(480, 640), (720, 1280)]

    print(f"rendering, {args.classes} classes, median of {args.repeats}; cv2 {cv2.__version__}, threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
    device_header = f" {device.type + ' ms':>9}" if device is not None else ""
    for height, width in sizes:
        print(f"\n{width}x{height}")
        print(f"{'operation':<14} {'before ms':>9} {'cv2 ms':>9} {'x':>6}{device_header}")
        for operation, before_ms, after_ms, device_ms in bench_size(height, width, args.classes, args.masks, args.repeats, device):
            device_cell = f" {device_ms:9.3f}" if device_ms is not None else ""
            print(f"{operation:<14} {before_ms:9.3f} {after_ms:9.3f} {before_ms / after_ms:6.1f}{device_cell}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
