"""Benchmark temporal smoothing on a synthetic video with ground truth.

    python -m ovseg_dev.bench_smoothing [--frames 72] [--seed 0] [--threads 1]

The video (:func:`synthetic_video`): textured shapes of four classes move (bouncing,
overlapping) over a textured background that pans back and forth, with sensor noise;
every motion is an integer translation, so ground-truth labels and the ground-truth
backward motion of every pixel are exact. The model is simulated
(:func:`simulated_scores`): SED-like probabilities ``sigmoid(±signal + noise * blobs)``
per class, ``+`` for the ground-truth class, where ``blobs`` are fresh smooth random
fields for every class and frame (spatially correlated, independent over time). Eight
classes are scored, three of which never appear, as in an open vocabulary.

For each mode the same video and scores are replayed and reported:

* flips: fraction of pixels whose label differs from the previous frame's
  (the ground truth's own rate, from motion, is given for reference);
* consistency: mIoU between a frame's labels and the previous frame's labels warped into
  it with the ground-truth motion, over pixels visible in both frames, averaged over
  the classes in view;
* mIoU against the ground truth over the whole video (classes that appear in it);
* median and minimum ms per frame of ``TemporalSmoother.update`` on the CPU, scores
  at the video's size.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ovseg_ros.engine.smoothing import MODES, TemporalSmoother

N_CLASSES = 8  # background 0, objects 1..4, classes 5..7 never present
FPS = 30.0


@dataclass
class SyntheticFrame:
    """One frame of :func:`synthetic_video`.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int64 ground-truth class per pixel.
        layers: (H, W) int64 which layer is visible (0 background, 1.. objects).
        motion: (H, W, 2) int64 (dx, dy) from each pixel to where its content was in the
            previous frame (zeros in the first frame).
        stamp_s: timestamp in seconds.
    """

    image: np.ndarray
    labels: np.ndarray
    layers: np.ndarray
    motion: np.ndarray
    stamp_s: float


def _texture(rng: np.random.Generator, height: int, width: int, color: np.ndarray) -> np.ndarray:
    """(height, width, 3) float32 RGB texture: multi-scale noise tinted by ``color`` (0..255)."""
    shade = np.zeros((height, width), np.float32)
    for cell in (4, 12, 32):
        grid = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
        shade += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    shade = shade / shade.std()
    rgb = color[None, None, :] * (1.0 + 0.35 * shade[..., None]) + 20.0 * rng.standard_normal(3)
    return rgb.astype(np.float32)


def _shape_mask(kind: int, size: int) -> np.ndarray:
    """(size, size) bool mask of a disc, square, triangle or ellipse."""
    mask = np.zeros((size, size), np.uint8)
    half = size // 2
    if kind == 0:
        cv2.circle(mask, (half, half), half - 1, 1, -1)
    elif kind == 1:
        mask[size // 8 : size - size // 8, :] = 1
    elif kind == 2:
        cv2.fillPoly(mask, [np.array([[half, 0], [size - 1, size - 1], [0, size - 1]], np.int32)], 1)
    else:
        cv2.ellipse(mask, (half, half), (half - 1, size // 3), 30, 0, 360, 1, -1)
    return mask.astype(bool)


def synthetic_video(n_frames: int = 72, height: int = 480, width: int = 640, seed: int = 0) -> Iterator[SyntheticFrame]:
    """Yield ``n_frames`` frames of the benchmark video (see the module docstring).

    Deterministic for a given ``seed``; sizes and speeds scale with ``width / 640``.
    """
    rng = np.random.default_rng(seed)
    scale = width / 640
    pan = round(24 * scale)  # background pans +-pan px around its centre
    background = _texture(rng, height + 2 * pan, width + 2 * pan, rng.uniform(60, 200, 3))
    objects = []
    for index, cls in enumerate((1, 2, 3, 4, 1, 3)):
        size = int(rng.integers(70, 150) * scale)
        objects.append({
            "cls": cls,
            "mask": _shape_mask(index % 4, size),
            "texture": _texture(rng, size, size, rng.uniform(40, 230, 3)),
            "pos": np.array([rng.integers(0, width - size), rng.integers(0, height - size)]),
            "vel": np.array([rng.choice([-1, 1]) * rng.integers(2, 8), rng.choice([-1, 1]) * rng.integers(1, 6)])
            * scale,
        })

    prev_offset = prev_positions = None
    for t in range(n_frames):
        # Integer offsets keep every motion an exact pixel shift.
        offset = np.rint(pan + pan * np.array([np.sin(t / 15), 0.5 * np.sin(t / 23)])).astype(int)
        for obj in objects:
            if t > 0:
                obj["pos"] = obj["pos"] + np.rint(obj["vel"]).astype(int)
                for axis, limit in ((0, width), (1, height)):
                    if not 0 <= obj["pos"][axis] <= limit - len(obj["mask"]):
                        obj["vel"][axis] *= -1
                        obj["pos"][axis] = np.clip(obj["pos"][axis], 0, limit - len(obj["mask"]))
        image = background[offset[1] : offset[1] + height, offset[0] : offset[0] + width].copy()
        labels = np.zeros((height, width), np.int64)
        layers = np.zeros((height, width), np.int64)
        motion = np.zeros((height, width, 2), np.int64)
        if t > 0:
            motion[:] = offset - prev_offset
        for layer, obj in enumerate(objects, start=1):
            (x, y), size = obj["pos"], len(obj["mask"])
            window = (slice(y, y + size), slice(x, x + size))
            image[window][obj["mask"]] = obj["texture"][obj["mask"]]
            labels[window][obj["mask"]] = obj["cls"]
            layers[window][obj["mask"]] = layer
            if t > 0:
                motion[window][obj["mask"]] = prev_positions[layer - 1] - obj["pos"]
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        yield SyntheticFrame(np.clip(image, 0, 255).astype(np.uint8), labels, layers, motion, t / FPS)
        prev_offset, prev_positions = offset, [obj["pos"].copy() for obj in objects]


def simulated_scores(
    labels: np.ndarray,
    rng: np.random.Generator,
    n_classes: int = N_CLASSES,
    signal: float = 1.0,
    noise: float = 0.6,
    blob_px: int = 40,
) -> torch.Tensor:
    """(T, H, W) float32 SED-like scores ``sigmoid(±signal + noise * blobs)`` for ``labels`` (H, W).

    ``blobs`` is a unit-variance random field per class, smooth over about ``blob_px``
    pixels, drawn fresh from ``rng`` on every call.
    """
    height, width = labels.shape
    cells = rng.standard_normal((n_classes, height // blob_px + 2, width // blob_px + 2)).astype(np.float32)
    blobs = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in cells])
    blobs /= blobs.std(axis=(1, 2), keepdims=True)
    logits = noise * blobs - signal
    logits[labels, np.arange(height)[:, None], np.arange(width)] += 2 * signal
    return torch.sigmoid(torch.from_numpy(logits))


def warp_previous(
    prev_labels: np.ndarray, frame: SyntheticFrame, prev_layers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``prev_labels`` (H, W) moved into ``frame`` with the ground-truth motion.

    Returns the warped (H, W) labels and the (H, W) bool mask of pixels whose content was
    visible in the previous frame (elsewhere the warped labels are meaningless).
    """
    height, width = prev_labels.shape
    ys, xs = np.mgrid[0:height, 0:width]
    src_x, src_y = xs + frame.motion[..., 0], ys + frame.motion[..., 1]
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    src_x, src_y = np.clip(src_x, 0, width - 1), np.clip(src_y, 0, height - 1)
    visible = inside & (prev_layers[src_y, src_x] == frame.layers)
    return prev_labels[src_y, src_x], visible


def _confusion(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N_CLASSES, N_CLASSES) int64 pixel counts indexed [target class, predicted class]."""
    joint = np.bincount(target.ravel() * N_CLASSES + pred.ravel(), minlength=N_CLASSES * N_CLASSES)
    return joint.reshape(N_CLASSES, N_CLASSES)


def _miou(confusion: np.ndarray, classes: np.ndarray) -> float:
    """Mean IoU over the ``classes`` (N_CLASSES,) bool mask."""
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float((inter[classes] / union[classes]).mean())


@dataclass
class RunResult:
    """Figures of one :func:`run` (see the module docstring); ``ms_*`` are nan without a smoother."""

    mode: str
    flip_rate: float
    consistency: float
    miou: float
    ms_median: float
    ms_min: float


def run(
    mode: str | None,
    n_frames: int = 72,
    seed: int = 0,
    height: int = 480,
    width: int = 640,
    noise: float = 0.6,
    **smoother_kwargs,
) -> RunResult:
    """Replay the synthetic video through a smoother in ``mode`` (None: score the ground truth)."""
    smoother = TemporalSmoother(mode, **smoother_kwargs) if mode else None
    score_rng = np.random.default_rng([seed, 1])
    flips, consistency, times = [], [], []
    confusion = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    prev_labels = prev_layers = None
    for frame in synthetic_video(n_frames, height, width, seed):
        if smoother is None:
            labels = frame.labels
        else:
            scores = simulated_scores(frame.labels, score_rng, noise=noise)
            start = time.perf_counter()
            smoothed = smoother.update(scores, frame.image, frame.stamp_s)
            times.append(time.perf_counter() - start)
            labels = smoothed.argmax(0).numpy()
        confusion += _confusion(labels, frame.labels)
        if prev_labels is not None:
            flips.append(float((labels != prev_labels).mean()))
            warped, visible = warp_previous(prev_labels, frame, prev_layers)
            in_scene = np.bincount(frame.labels[visible], minlength=N_CLASSES) > 0
            consistency.append(_miou(_confusion(labels[visible], warped[visible]), in_scene))
        prev_labels, prev_layers = labels, frame.layers
    # The first update is a reset (no warp), so it is left out of the cost; the minimum
    # is what a frame costs when no other process competes for the cores.
    ms = 1000 * np.array(times[1:] or [np.nan])
    miou = _miou(confusion, confusion.sum(1) > 0)
    return RunResult(
        mode or "ground truth", float(np.mean(flips)), float(np.mean(consistency)), miou,
        float(np.median(ms)), float(ms.min()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=72, help="number of frames (default 72)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the video and the score noise (default 0)")
    parser.add_argument("--strength", type=float, default=0.6, help="blend weight of the past (default 0.6)")
    parser.add_argument("--flow-scale", type=float, default=0.25, help="flow resolution factor (default 0.25)")
    parser.add_argument("--noise", type=float, default=0.6, help="score noise amplitude in logit units (default 0.6)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; see BENCHMARKS.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(
        f"synthetic video 640x480, {args.frames} frames, seed {args.seed}, {N_CLASSES} classes, "
        f"noise {args.noise}; strength {args.strength}, flow_scale {args.flow_scale}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    results = [run(None, args.frames, args.seed, noise=args.noise)]
    for mode in MODES:
        smoother_kwargs = dict(strength=args.strength, flow_scale=args.flow_scale)
        results.append(run(mode, args.frames, args.seed, noise=args.noise, **smoother_kwargs))
    off, flow = (next(r for r in results if r.mode == mode) for mode in ("none", "flow"))
    print(f"{'mode':<13} {'flips':>7} {'vs off':>7} {'consist.':>9} {'mIoU':>7} {'ms med':>7} {'ms min':>7}")
    for r in results:
        ratio = f"{r.flip_rate / off.flip_rate:6.2f}x"
        cost = "" if r.mode == "ground truth" else f"{r.ms_median:7.1f} {r.ms_min:7.1f}"
        print(f"{r.mode:<13} {r.flip_rate:7.4f} {ratio:>7} {r.consistency:9.4f} {r.miou:7.4f} {cost}")
    print("flips: fraction of pixels whose label changes between consecutive frames")
    print("consist.: mIoU of labels vs the previous frame's labels warped with the ground-truth motion")
    print("ms med/min: median/minimum ms per 640x480 frame of TemporalSmoother.update on this CPU")
    cut = 1 - flow.flip_rate / off.flip_rate
    print(f"flow vs off: flips cut by {100 * cut:.1f}%, mIoU {flow.miou - off.miou:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
