"""Tests of ovseg_ros.engine.smoothing (real optical flow and warping, small images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ovseg_ros.engine.smoothing import TemporalSmoother
from ovseg_dev.bench_smoothing import run

HEIGHT, WIDTH, CLASSES = 48, 64, 3
DT = 1 / 30
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 smooth random texture that optical flow can track."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def random_scores(seed: int, classes: int = CLASSES, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    return torch.rand((classes, height, width), generator=torch.Generator().manual_seed(seed))


def square_scene(x: int, y: int, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A textured square at (x, y) over a different static textured background, 120x160.

    Returns the (120, 160, 3) uint8 image and the (120, 160) bool mask of the square.
    """
    image = textured_image(120, 160, seed=1)
    image[y : y + size, x : x + size] = textured_image(size, size, seed=2) // 2 + 128
    mask = np.zeros((120, 160), bool)
    mask[y : y + size, x : x + size] = True
    return image, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_off_returns_input_unchanged():
    smoother = TemporalSmoother("none")
    for step in range(3):
        scores = random_scores(step)
        assert smoother.update(scores, None, step * DT) is scores
        assert smoother.last_reset_reason is None


@pytest.mark.parametrize("mode", ["ema", "flow"])
@pytest.mark.parametrize(
    "trigger, reason",
    [
        (dict(stamp_s=0.0), "backwards"),
        (dict(stamp_s=2 * DT + 0.6), "gap"),
        (dict(height=HEIGHT // 2, width=WIDTH // 2), "resolution"),
        (dict(classes=CLASSES + 1), "class count"),
    ],
)
def test_reset_conditions(mode, trigger, reason):
    smoother = TemporalSmoother(mode, max_gap_s=0.5, flow_scale=0.5)

    def frame(step: int, stamp_s: float, classes=CLASSES, height=HEIGHT, width=WIDTH):
        scores = random_scores(step, classes, height, width)
        return scores, smoother.update(scores, textured_image(height, width), stamp_s)

    scores, out = frame(0, 0.0)
    assert out is scores and smoother.last_reset_reason == "no previous state"
    scores, out = frame(1, DT)
    assert smoother.last_reset_reason is None and not torch.equal(out, scores)

    scores, out = frame(2, **{"stamp_s": 2 * DT, **trigger})
    assert reason in smoother.last_reset_reason
    assert out is scores

    # The frame after the reset blends again with the state the reset left.
    scores, out = frame(3, **{**trigger, "stamp_s": trigger.get("stamp_s", 2 * DT) + DT})
    assert smoother.last_reset_reason is None and not torch.equal(out, scores)


def test_reset_method_forgets_the_state_and_says_why():
    smoother = TemporalSmoother("ema")
    smoother.update(random_scores(0), None, 0.0)
    smoother.reset("vocabulary version 2")
    scores = random_scores(1)
    assert smoother.update(scores, None, DT) is scores
    assert smoother.last_reset_reason == "vocabulary version 2"
    assert smoother.update(random_scores(2), None, 2 * DT) is not scores and smoother.last_reset_reason is None, "then it blends again"


@pytest.mark.parametrize("mode", ["ema", "flow"])
def test_each_source_blends_with_its_own_past(mode):
    """Two cameras (of two resolutions) interleaved through one smoother give what two
    smoothers give, one per camera; one shared past would blend them into each other."""
    shared = TemporalSmoother(mode, flow_scale=0.5)
    alone = {"front": TemporalSmoother(mode, flow_scale=0.5), "rear": TemporalSmoother(mode, flow_scale=0.5)}
    sizes = {"front": (HEIGHT, WIDTH), "rear": (HEIGHT // 2, WIDTH // 2)}
    for step in range(4):
        for source, (height, width) in sizes.items():
            scores = random_scores(2 * step + (source == "rear"), height=height, width=width)
            image = textured_image(height, width, seed=step)
            stamp_s = step * DT + (source == "rear") * 0.01
            out = shared.update(scores, image, stamp_s, source)
            reason = shared.last_reset_reason
            expected = alone[source].update(scores, image, stamp_s)
            assert torch.equal(out, expected) and reason == alone[source].last_reset_reason, (step, source)
            assert (reason == "no previous state") == (step == 0), reason
    mixed = TemporalSmoother(mode, flow_scale=0.5)
    for step in range(2):  # one past for both: each frame resets on the other's resolution
        for source, (height, width) in sizes.items():
            mixed.update(random_scores(2 * step + (source == "rear"), height=height, width=width),
                         textured_image(height, width, seed=step), step * DT)
            assert "resolution changed" in mixed.last_reset_reason or step == 0
    shared.reset("vocabulary version 2")
    shared.update(random_scores(0), textured_image(HEIGHT, WIDTH), 10.0, "front")
    assert shared.last_reset_reason == "vocabulary version 2"
    shared.update(random_scores(1, height=HEIGHT // 2, width=WIDTH // 2), textured_image(HEIGHT // 2, WIDTH // 2), 10.0, "rear")
    assert shared.last_reset_reason == "vocabulary version 2", "reset forgets every source"


def test_sources_of_one_size_do_not_blend_into_each_other():
    """Same resolution, interleaved stamps: a shared past would blend; a past per source does not."""
    smoother = TemporalSmoother("ema", strength=1.0, confidence_gate=0.0)
    front, rear = random_scores(0), random_scores(1)
    smoother.update(front, None, 0.0, "front")
    assert smoother.update(rear, None, DT, "rear") is rear and smoother.last_reset_reason == "no previous state"
    # All weight on the past: each source's second frame is its own first frame.
    assert torch.equal(smoother.update(random_scores(2), None, 2 * DT, "front"), front)
    assert torch.equal(smoother.update(random_scores(3), None, 3 * DT, "rear"), rear)
    assert smoother.last_reset_reason is None


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        TemporalSmoother("median")
    with pytest.raises(ValueError):
        TemporalSmoother("ema", strength=1.5)
    with pytest.raises(ValueError):
        TemporalSmoother("flow").update(random_scores(0), None, 0.0)


def test_ema_converges_to_a_constant_input():
    smoother = TemporalSmoother("ema", strength=0.6)
    smoother.update(random_scores(0), None, 0.0)
    constant = random_scores(1)
    errors = []
    for step in range(1, 21):
        out = smoother.update(constant, None, step * DT)
        errors.append(float((out - constant).abs().max()))
    assert all(later <= earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 0.05 and errors[-1] < 1e-3


def test_flow_on_a_static_scene_matches_ema():
    # Zero motion: the warp must be an identity (checks the grid's pixel-centre convention).
    image = textured_image(120, 160)
    first, second = random_scores(0, height=120, width=160), random_scores(1, height=120, width=160)
    outs = {}
    for mode in ("ema", "flow"):
        smoother = TemporalSmoother(mode, flow_scale=0.5)
        smoother.update(first, image, 0.0)
        outs[mode] = smoother.update(second, image, DT)
    assert torch.allclose(outs["flow"], outs["ema"], atol=1e-3)


def test_flow_moves_the_state_with_the_content():
    before, square_before = square_scene(40, 40)
    after, square_after = square_scene(50, 40)  # 10 px to the right
    confident = torch.from_numpy(np.stack([~square_before, square_before]).astype(np.float32) * 0.8 + 0.1)
    # An uninformative next frame (a hair towards background) shows what the past carries.
    unsure = torch.tensor([0.50, 0.49])[:, None, None].expand(2, 120, 160).contiguous()
    ious = {}
    for mode in ("ema", "flow"):
        smoother = TemporalSmoother(mode, strength=0.6, flow_scale=0.5)
        smoother.update(confident, before, 0.0)
        labels = smoother.update(unsure, after, DT).argmax(0).numpy()
        ious[mode] = iou(labels == 1, square_after)
    assert ious["flow"] > 0.85
    assert ious["flow"] > ious["ema"] + 0.15


def test_flow_trusts_the_current_frame_where_the_image_changed():
    # A cut to unrelated content without a time gap: no flow can explain it, so the
    # reliability gate must hand the frame to the current scores.
    before, after = textured_image(120, 160, seed=3), textured_image(120, 160, seed=4)
    past = torch.tensor([0.1, 0.9])[:, None, None].expand(2, 120, 160).contiguous()
    current = torch.tensor([0.6, 0.4])[:, None, None].expand(2, 120, 160).contiguous()
    kept_current = {}
    for mode in ("ema", "flow"):
        smoother = TemporalSmoother(mode, strength=0.6, flow_scale=0.5)
        smoother.update(past, before, 0.0)
        labels = smoother.update(current, after, DT).argmax(0).numpy()
        kept_current[mode] = float((labels == 0).mean())
    assert kept_current["ema"] == 0.0
    assert kept_current["flow"] > 0.7


def test_flow_flips_fewer_labels_than_off_on_synthetic_video():
    off = run("none", n_frames=12, height=120, width=160)
    flow = run("flow", n_frames=12, height=120, width=160, flow_scale=0.5)
    assert flow.flip_rate < 0.7 * off.flip_rate
    assert flow.miou >= off.miou


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["ema", "flow"])
def test_state_stays_on_the_scores_device_and_dtype(device, mode):
    smoother = TemporalSmoother(mode, flow_scale=0.5)
    image = textured_image(HEIGHT, WIDTH)
    for step in range(3):
        scores = random_scores(step).to(device=device, dtype=torch.float64)
        out = smoother.update(scores, image, step * DT)
        assert out.device == scores.device and out.dtype == torch.float64 and out.shape == scores.shape
    assert smoother.last_reset_reason is None
