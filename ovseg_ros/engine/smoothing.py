"""Temporal smoothing of per-class scores across video frames, for any model.

A :class:`TemporalSmoother` keeps a (T, H, W) score state and blends it into each new
frame's scores, which cuts the label flicker a per-frame model shows on video:

* ``none``: the scores pass through unchanged.
* ``ema``:  ``state = lerp(scores, state, weight)``, an exponential moving average per pixel.
  Cheap, but the past lags behind anything that moves.
* ``flow``: the state is first warped into the current frame with dense optical flow
  (OpenCV DIS on grayscale images at ``flow_scale`` of the resolution, on the CPU), so
  the past follows the content. The blend weight drops where the flow is unreliable
  (forward-backward inconsistency, photometric warp error, source outside the image).

In both ``ema`` and ``flow`` the weight also drops where the current frame is already
confident (a large relative margin between its best two classes), so a newly visible
object is not held back by a confident past. Scores are only assumed to be "higher is
more likely"; the blend is linear, so they may be probabilities (SED) or unbounded
non-negative sums (SAN).

The state lives on the scores' device (warped there with ``grid_sample``); only the
flow runs on the CPU, at reduced resolution, and is uploaded as one small tensor (on CUDA
from pinned memory, without blocking the host).
The smoother resets (its output is the current scores, which become the state) when the
timestamp goes backwards, after a gap longer than ``max_gap_s``, when the resolution, the
class count or the device changes, and after :meth:`TemporalSmoother.reset` (the frame path
calls it once on a vocabulary change); :attr:`TemporalSmoother.last_reset_reason` says why.

One smoother serves several cameras: each ``source`` (a camera's name) has a past of its
own, so one camera's frames never blend into another's, while the settings (``strength``,
``max_gap_s``, the mode) are shared and may be changed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovseg_ros.engine.uploads import upload

try:
    import cv2
except ImportError:  # the GPU check machine has no OpenCV (robots do): only "flow" needs it
    cv2 = None

MODES = ("none", "ema", "flow")


def smoothing_mode(setting: str, auto_smoothing: str) -> str:
    """The mode a ``smoothing`` setting means for a model that declares ``auto_smoothing``
    (:attr:`~ovseg_ros.models.base.OpenVocabModel.auto_smoothing`: ``flow`` for SAN, whose
    per-frame masks flicker, ``none`` for SED): ``"auto"`` is that, any other setting itself."""
    return auto_smoothing if setting == "auto" else setting


def stamp_gap_reason(previous_s: float, stamp_s: float, max_gap_s: float) -> str | None:
    """Why a frame at ``stamp_s`` does not continue the one at ``previous_s`` (its stamp went
    backwards, or came more than ``max_gap_s`` later), or None: the rule smoothing and tracking share."""
    gap = stamp_s - previous_s
    if gap < 0:
        return f"timestamp went backwards by {-gap:.3f} s"
    if gap > max_gap_s:
        return f"gap of {gap:.3f} s > max_gap_s {max_gap_s}"
    return None


@dataclass
class _Past:
    """What one source's next frame is blended with."""

    state: torch.Tensor  # (T, H, W) smoothed scores, on the scores' device
    gray: np.ndarray | None  # (h, w) uint8 image at flow resolution (flow mode only)
    stamp_s: float
    key: tuple  # what must not change between blended frames (see TemporalSmoother.update)


class TemporalSmoother:
    """Blend per-class scores with the (motion-compensated) past; see the module docstring.

    Args:
        mode: ``"none"``, ``"ema"`` or ``"flow"``.
        strength: blend weight of the past state, 0..1, before the reliability and
            confidence gates (0 behaves like ``none``).
        max_gap_s: a larger gap between consecutive stamps restarts the state.
        flow_scale: resolution factor of the optical flow (``flow`` mode), 0 < f <= 1.
        confidence_gate: 0..1; the past's weight is multiplied by
            ``1 - confidence_gate * confidence`` where ``confidence`` is the current
            frame's relative top-2 margin in [0, 1].
        fb_tolerance_px: forward-backward flow error (in flow-resolution pixels) at
            which the flow counts as fully unreliable; reliability falls linearly to it.
        photo_tolerance: gray-level difference (0..255) between the current image and
            the warped previous one at which the flow counts as fully unreliable.
    """

    def __init__(
        self,
        mode: str = "flow",
        strength: float = 0.6,
        max_gap_s: float = 0.5,
        flow_scale: float = 0.25,
        *,
        confidence_gate: float = 0.5,
        fb_tolerance_px: float = 1.5,
        photo_tolerance: float = 30.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if not 0.0 < flow_scale <= 1.0:
            raise ValueError(f"flow_scale must be in (0, 1], got {flow_scale}")
        if max_gap_s <= 0.0:
            raise ValueError(f"max_gap_s must be > 0, got {max_gap_s}")
        if not 0.0 <= confidence_gate <= 1.0:
            raise ValueError(f"confidence_gate must be in [0, 1], got {confidence_gate}")
        self.mode = mode
        self.strength = strength
        self.max_gap_s = max_gap_s
        self.flow_scale = flow_scale
        self.confidence_gate = confidence_gate
        self.fb_tolerance_px = fb_tolerance_px
        self.photo_tolerance = photo_tolerance
        #: Why the latest :meth:`update` restarted the state, or None if it blended.
        self.last_reset_reason: str | None = None
        self._dis = None
        if mode == "flow":
            if cv2 is None:
                raise ImportError("smoothing mode 'flow' needs OpenCV (python3-opencv / opencv-python), which is not "
                                  "installed; 'ema' and 'none' do not")
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
            # The preset stops two pyramid levels above the input, too coarse once the
            # input is already downscaled; the finest level costs little at this size.
            self._dis.setFinestScale(0)
        self._base_grid: torch.Tensor | None = None
        self._pasts: dict[str, _Past] = {}  # source -> its past
        self._forgotten: dict[str, str] = {}  # source -> why reset() dropped its past

    def reset(self, reason: str | None = "reset") -> None:
        """Forget the past of every source; the next :meth:`update` of each returns its scores
        unchanged, with ``reason`` as its :attr:`last_reset_reason` (None: as for a source never
        seen, "no previous state")."""
        if reason is not None:
            self._forgotten.update(dict.fromkeys(self._pasts, reason))
        self._pasts.clear()

    def update(
        self,
        scores: torch.Tensor,
        image_rgb: np.ndarray | None,
        stamp_s: float,
        source: str = "",
    ) -> torch.Tensor:
        """Smooth one frame of ``source``, with that source's past only.

        Args:
            scores: (T, H, W) float per-class scores of this frame, any device.
            image_rgb: (H', W', 3) uint8 RGB camera image of this frame; needed only in
                ``flow`` mode (H', W' may differ from the scores': flow is resolution-free).
            stamp_s: the frame's timestamp in seconds.
            source: the camera the frame comes from; each source has a past of its own.

        Returns:
            (T, H, W) smoothed scores, same device and dtype as ``scores``. It is the new
            state (or ``scores`` itself after a reset): do not modify it in place.
        """
        if scores.dim() != 3:
            raise ValueError(f"scores must be (T, H, W), got shape {tuple(scores.shape)}")
        self.last_reset_reason = None
        if self.mode == "none":
            return scores
        if self.mode == "flow" and image_rgb is None:
            raise ValueError("flow mode needs image_rgb")

        gray = self._flow_gray(image_rgb) if self.mode == "flow" else None
        image_hw = None if image_rgb is None else image_rgb.shape[:2]
        key = (scores.shape[0], tuple(scores.shape[1:]), image_hw, scores.device)
        past = self._pasts.get(source)
        reason = self._forgotten.pop(source, None) or self._reset_reason(past, key, stamp_s)
        if reason is not None:
            self.last_reset_reason = reason
            self._pasts[source] = _Past(scores, gray, stamp_s, key)
            return scores

        state = past.state
        weight = self._confidence_factor(scores).mul_(self.strength)
        if self.mode == "flow":
            state, reliability = self._warp(state, past.gray, gray)
            weight.mul_(reliability)
        smoothed = torch.lerp(scores, state.to(scores.dtype), weight.to(scores.dtype))
        self._pasts[source] = _Past(smoothed, gray, stamp_s, key)
        return smoothed

    def _reset_reason(self, past: _Past | None, key: tuple, stamp_s: float) -> str | None:
        """Why ``past`` cannot be carried into a frame with ``key`` at ``stamp_s``, or None."""
        if past is None:
            return "no previous state"
        classes, score_hw, image_hw, device = key
        old_classes, old_score_hw, old_image_hw, old_device = past.key
        if classes != old_classes:
            return f"class count changed ({old_classes} -> {classes})"
        if score_hw != old_score_hw or image_hw != old_image_hw:
            return f"resolution changed (scores {old_score_hw} -> {score_hw}, image {old_image_hw} -> {image_hw})"
        if device != old_device:
            return f"device changed ({old_device} -> {device})"
        return stamp_gap_reason(past.stamp_s, stamp_s, self.max_gap_s)

    def _confidence_factor(self, scores: torch.Tensor) -> torch.Tensor:
        """(H, W) float32 factor ``1 - confidence_gate * margin`` of the current frame.

        ``margin = (s1 - s2) / (|s1| + |s2|)`` of the top two scores is scale-free, so it
        means the same for probabilities and for unbounded sums.
        """
        if scores.shape[0] < 2:
            return torch.ones(scores.shape[1:], device=scores.device)
        first, second = scores.topk(2, dim=0).values.float()
        margin = (first - second).div_((first.abs() + second.abs()).clamp_min_(1e-6))
        return margin.mul_(-self.confidence_gate).add_(1.0)

    def _flow_gray(self, image_rgb: np.ndarray) -> np.ndarray:
        """(h, w) uint8 grayscale of ``image_rgb`` at ``flow_scale`` (area-averaged)."""
        height, width = image_rgb.shape[:2]
        size = (max(8, round(width * self.flow_scale)), max(8, round(height * self.flow_scale)))
        small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    def _warp(self, state: torch.Tensor, prev_gray: np.ndarray, gray: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp ``state`` (T, H, W) from the previous frame into the current one.

        Returns the warped (T, H, W) state and the (H, W) float32 flow reliability in [0, 1].
        """
        # DIS calc(a, b) gives f with a(x) ~ b(x + f(x)): backward flow samples the past.
        backward = self._dis.calc(gray, prev_gray, None)
        forward = self._dis.calc(prev_gray, gray, None)
        h, w = gray.shape
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]

        # A pixel's flow is trusted when going back then forward returns to it and when
        # the previous image, warped, looks like the current one.
        forward_at_source = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fb_error = np.linalg.norm(backward + forward_at_source, axis=2)
        warped_gray = cv2.remap(prev_gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        photo_error = np.abs(warped_gray.astype(np.float32) - gray.astype(np.float32))
        inside = (map_x >= -0.5) & (map_x <= w - 0.5) & (map_y >= -0.5) & (map_y <= h - 0.5)
        reliability = (
            np.clip(1.0 - fb_error / self.fb_tolerance_px, 0.0, 1.0)
            * np.clip(1.0 - photo_error / self.photo_tolerance, 0.0, 1.0)
            * inside
        )

        # Flow in grid_sample's normalised units (2 / size per pixel) is the same at any
        # resolution, so it is upsampled as is, together with the reliability.
        small = upload(np.stack([backward[..., 0] * (2.0 / w), backward[..., 1] * (2.0 / h), reliability]).astype(np.float32), state.device)
        full = F.interpolate(small[None], size=state.shape[1:], mode="bilinear", align_corners=False)[0]
        grid = self._identity_grid(state.shape[1:], state.device) + full[:2].permute(1, 2, 0)
        warped = F.grid_sample(
            state[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        return warped, full[2]

    def _identity_grid(self, size: torch.Size, device: torch.device) -> torch.Tensor:
        """(H, W, 2) grid_sample coordinates (x, y) of the pixel centres, cached."""
        if self._base_grid is None or self._base_grid.shape[:2] != size or self._base_grid.device != device:
            height, width = size
            ys = (torch.arange(height, device=device, dtype=torch.float32) * 2 + 1) / height - 1
            xs = (torch.arange(width, device=device, dtype=torch.float32) * 2 + 1) / width - 1
            self._base_grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self._base_grid
