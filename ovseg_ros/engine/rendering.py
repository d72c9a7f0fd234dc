"""Turning label maps into images people can read: palette, colour map, overlay, masks.

:class:`Renderer` draws every output image of a frame where the labels already are: with
torch ops on a GPU (no host round trip before the one download per output), with cv2 on the
CPU (its SIMD kernels beat numpy fancy indexing and float blends several times over). Both
paths compute exactly the same pixels; ``tools/bench_rendering.py`` measures them.
"""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
import torch

from ovseg_ros.engine.uploads import upload

try:
    import cv2
except ImportError:  # the GPU check machine has no OpenCV (robots do): the torch path runs without it
    cv2 = None

#: Colour of unlabeled pixels in the colour image.
UNLABELED_COLOR = (0, 0, 0)

#: Overlay weights are fixed point with this many fractional bits. With 12 bits every
#: intermediate of cv2.addWeighted's float32 math is exact, so it rounds like the integer
#: torch path (see :meth:`Renderer.overlay`).
_ALPHA_BITS = 12


def class_color(name: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for a class name.

    Derived from a hash of the name alone, so a class keeps its colour when the
    vocabulary around it changes, across runs and machines.
    """
    digest = hashlib.sha256(name.strip().casefold().encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.55 + 0.45 * digest[2] / 255.0
    value = 0.70 + 0.30 * digest[3] / 255.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def index_color(index: int) -> tuple[int, int, int]:
    """Colour of class id ``index``: golden-ratio hue steps keep neighbouring ids apart."""
    hue = (index * 0.6180339887) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def palette(names: list[str], scheme: str = "name") -> np.ndarray:
    """(len(names) + 1, 3) uint8 colours; the last row is :data:`UNLABELED_COLOR`.

    ``scheme`` ``"name"``: :func:`class_color`; ``"index"``: :func:`index_color`.
    """
    if scheme == "name":
        colors = [class_color(n) for n in names]
    elif scheme == "index":
        colors = [index_color(i) for i in range(len(names))]
    else:
        raise ValueError(f"unknown palette scheme {scheme!r} (name or index)")
    return np.array(colors + [UNLABELED_COLOR], dtype=np.uint8)


class Renderer:
    """Output images of one vocabulary's label maps, on one device.

    Labels are (H, W) uint8 with 255 = unlabeled when there are at most 254 classes, else
    (H, W) int32 (values 0..65535) with 65535 = unlabeled, as the label topics encode them.
    Any value that is not a class id (unlabeled, or >= the number of classes) is drawn in the
    unlabeled colour and counted nowhere.

    Arguments:
        class_names: the vocabulary, T names.
        scheme: palette scheme, ``"name"`` or ``"index"`` (:func:`palette`).
        device: where inputs and outputs live.
        torch_ops: compute with torch ops (True) or with cv2/numpy on host views (False);
            default: torch everywhere but on the CPU. The cv2 path needs CPU tensors.

    Attributes:
        palette: (T + 1, 3) uint8 on ``device``, class colours then the unlabeled colour.
        unlabeled_id: 255 or 65535, see above.
        label_dtype: torch.uint8 or torch.int32, see above.
    """

    def __init__(self, class_names: list[str], scheme: str = "name", device: str | torch.device = "cpu", *, torch_ops: bool | None = None):
        self.device = torch.device(device)
        self.num_classes = len(class_names)
        self.torch_ops = self.device.type != "cpu" if torch_ops is None else torch_ops
        if not self.torch_ops and self.device.type != "cpu":
            raise ValueError("the cv2 rendering path needs device='cpu'")
        if not self.torch_ops and cv2 is None:
            raise ImportError("the CPU rendering path needs OpenCV (python3-opencv / opencv-python), which is not "
                              "installed; Renderer(..., torch_ops=True) renders without it")
        colors = palette(class_names, scheme)
        self.palette = upload(colors, self.device)
        if self.num_classes <= 254:
            self.unlabeled_id, self.label_dtype = 255, torch.uint8
        else:
            self.unlabeled_id, self.label_dtype = 65535, torch.int32
        # One colour per possible label value, so a lookup needs no "is it a class" test.
        table = np.zeros((self.unlabeled_id + 1, 4), np.uint8)  # RGB + padding byte
        table[:, :3] = colors[-1]
        table[: self.num_classes, :3] = colors[:-1]
        self._color_table = upload(table[:, :3], self.device)  # (V, 3)
        # cv2/numpy path: each RGB0 row as one 4-byte word (byte view, so endian-agnostic),
        # looked up in one pass; RGBA -> RGB then drops the padding (cheaper than a 3-channel LUT).
        self._packed_table = table.view(np.int32).reshape(-1, 1) if self.unlabeled_id == 255 else table.view(np.uint32).ravel()
        self._mask_ids_cache: tuple[tuple, torch.Tensor] | None = None  # (ids, dtype) -> their device tensor

    # -- public API ---------------------------------------------------------------------

    def colorize(self, labels: torch.Tensor) -> torch.Tensor:
        """(H, W) labels -> (H, W, 3) uint8 RGB class colours."""
        self._check_labels(labels)
        if self.torch_ops:
            return self._color_table.index_select(0, labels.reshape(-1).int()).view(*labels.shape, 3)
        labels_np = _host_view(labels)
        if self.unlabeled_id == 255:
            packed = cv2.LUT(labels_np, self._packed_table)  # (H, W) int32
        else:
            packed = self._packed_table.take(labels_np)  # (H, W) uint32
        rgba = packed.view(np.uint8).reshape(*labels_np.shape, 4)
        return torch.from_numpy(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB))

    def overlay(self, image: torch.Tensor, color: torch.Tensor, alpha: float) -> torch.Tensor:
        """Blend ``color`` over ``image``: (H, W, 3) uint8 each -> (H, W, 3) uint8.

        ``(1 - alpha) * image + alpha * color`` rounded half up, with ``alpha`` (0..1) taken
        to the nearest multiple of 1/4096. Exact arithmetic on both paths: integer on torch;
        on cv2, float32 whose every step is exact at this precision, plus 2**-14 so that
        cv2's round-half-to-even rounds the halves up (that offset never moves another value
        across a rounding boundary: the fractions are multiples of 1/4096).
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        if image.shape != color.shape or image.dim() != 3 or image.shape[2] != 3:
            raise ValueError(f"image {tuple(image.shape)} and color {tuple(color.shape)} must both be (H, W, 3)")
        if image.dtype != torch.uint8 or color.dtype != torch.uint8:
            raise TypeError("image and color must be uint8")
        scale = 1 << _ALPHA_BITS
        weight = round(alpha * scale)
        if self.torch_ops:
            blended = image.int() * (scale - weight) + color.int() * weight + scale // 2
            return (blended >> _ALPHA_BITS).to(torch.uint8)
        blended = cv2.addWeighted(_host_view(image), (scale - weight) / scale, _host_view(color), weight / scale, 2.0 ** -(_ALPHA_BITS + 2))
        return torch.from_numpy(blended)

    def masks(self, labels: torch.Tensor, class_ids: list[int]) -> torch.Tensor:
        """(H, W) labels -> (N, H, W) uint8, 255 where the label is ``class_ids[n]``, else 0."""
        self._check_labels(labels)
        if any(not 0 <= i < self.num_classes for i in class_ids):
            raise ValueError(f"class ids must be in 0..{self.num_classes - 1}, got {class_ids}")
        if self.torch_ops:
            return (labels.unsqueeze(0) == self._mask_ids(class_ids, labels.dtype)).to(torch.uint8).mul_(255)
        labels_np = _host_view(labels)
        out = np.empty((len(class_ids), *labels_np.shape), np.uint8)
        for n, class_id in enumerate(class_ids):
            cv2.compare(labels_np, class_id, cv2.CMP_EQ, dst=out[n])  # 255 / 0 directly
        return torch.from_numpy(out)

    def confidence(self, confidence: torch.Tensor) -> torch.Tensor:
        """(H, W) float32 scores -> (H, W) uint8: score x 255 rounded to nearest (ties to even),
        clipped to 0..255 (SAN's scores may exceed 1)."""
        if confidence.dtype != torch.float32 or confidence.dim() != 2:
            raise TypeError(f"confidence must be (H, W) float32, got {tuple(confidence.shape)} {confidence.dtype}")
        if self.torch_ops:
            return confidence.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        # Clip first: convertScaleAbs takes |x| and wraps values beyond int32 to 0.
        clipped = np.clip(_host_view(confidence), 0.0, 1.0)
        return torch.from_numpy(cv2.convertScaleAbs(clipped, alpha=255.0))

    def class_counts(self, labels: torch.Tensor) -> torch.Tensor:
        """(H, W) labels -> (T,) int64 pixels per class; unlabeled pixels are not counted."""
        self._check_labels(labels)
        bins = self.unlabeled_id + 1
        if self.torch_ops:
            # scatter_add_ instead of torch.bincount, which syncs with the host on CUDA (to size its output).
            flat = labels.reshape(-1).long()
            counts = torch.zeros(bins, dtype=torch.int64, device=labels.device)
            counts.scatter_add_(0, flat, torch.ones_like(flat))
            return counts[: self.num_classes]
        labels_np = _host_view(labels)
        if self.unlabeled_id == 255 and labels_np.size < 1 << 24:  # calcHist counts in float32: exact below 2**24
            counts = cv2.calcHist([labels_np], [0], None, [bins], [0, bins]).ravel().astype(np.int64)
        else:
            counts = np.bincount(labels_np.ravel(), minlength=bins)
        return torch.from_numpy(counts[: self.num_classes].copy())

    # -- helpers ------------------------------------------------------------------------

    def _mask_ids(self, class_ids: list[int], dtype: torch.dtype) -> torch.Tensor:
        """(N, 1, 1) ``class_ids`` on the device, made once per set of ids (the subscribed masks
        change far less often than frames come), uploaded without blocking the host."""
        key = (tuple(class_ids), dtype)
        if self._mask_ids_cache is None or self._mask_ids_cache[0] != key:
            self._mask_ids_cache = (key, upload(torch.tensor(class_ids, dtype=dtype).view(-1, 1, 1), self.device))
        return self._mask_ids_cache[1]

    def _check_labels(self, labels: torch.Tensor) -> None:
        if labels.dtype != self.label_dtype or labels.dim() != 2:
            raise TypeError(f"{self.num_classes} classes take (H, W) {self.label_dtype} labels, got {tuple(labels.shape)} {labels.dtype}")


def _host_view(tensor: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor (a copy only if it is not contiguous, as cv2 needs)."""
    return tensor.contiguous().numpy()
