"""The inference facade shared by SED and SAN: vocabulary in, per-pixel labels out.

    segmenter = Segmenter(build_model("sed_convnext_base", weights=path), device="cuda")
    segmenter.set_vocabulary(["person", "forklift", "pallet"])
    result = segmenter.segment(rgb)      # rgb: (H, W, 3) uint8
    result.labels                       # (H, W) uint8 / uint16 at input size
    result.scores                       # (T, H, W) per-class scores

A :class:`Vocabulary` is immutable and carries a version, so a caller can encode a new
one on another thread (:meth:`Segmenter.encode_vocabulary`) and pass it to
:meth:`Segmenter.segment`: a frame is always labeled by exactly one vocabulary, and says
which.

Preprocessing deviates from the authors' evaluation path in one documented way: the
authors resize the camera image with PIL (uint8, bilinear) to a 640 short edge before the
model's own torch resizing; we do that first resize with ``torch.nn.functional.interpolate``
on the device (bilinear, antialiased when shrinking, rounded to whole values), which
avoids a host round trip per frame. ``test/test_segmenter.py`` measures the effect on the
``sed_b_seed1`` fixture (SED-B, seeded weights, 480x640 -> 640x853): probabilities differ by
2.9e-4 on average (1.5e-2 at most, at object edges) and 98.7% of the labels agree; with
random weights many pixels are near-ties, so trained weights should agree more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .models.base import OpenVocabModel, stage
from .vocabulary import TextEmbeddingCache, validate_class_names

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Short edge the authors evaluate at (detectron2 ResizeShortestEdge(640, max_size=2560)).
DEFAULT_SHORT_EDGE = 640
MAX_LONG_EDGE = 2560


def unlabeled_id(num_classes: int) -> int:
    """Label value for "no class": 255 in mono8 labels (<= 254 classes), else 65535 (mono16)."""
    return 255 if num_classes <= 254 else 65535


@dataclass(frozen=True)
class Vocabulary:
    """Class names with their text features, as one immutable unit."""

    names: tuple[str, ...]
    text_features: torch.Tensor  # (T, ...) as the model's encode_text returns
    version: int

    @property
    def unlabeled_id(self) -> int:
        return unlabeled_id(len(self.names))


@dataclass
class Segmentation:
    """One frame's result at the input image's resolution."""

    scores: torch.Tensor  # (T, H, W) float32 on the model's device
    labels: np.ndarray  # (H, W) uint8 (<= 254 classes) or uint16; vocabulary.unlabeled_id = none
    confidence: np.ndarray  # (H, W) float32: the winning class's score
    vocabulary: Vocabulary
    timings_ms: dict[str, float] = field(default_factory=dict)


def resized_shape(height: int, width: int, short_edge: int = DEFAULT_SHORT_EDGE, max_long_edge: int = MAX_LONG_EDGE) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` output size, rounding as it does."""
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_long_edge:
        scale = max_long_edge / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Segmenter:
    """Runs an :class:`OpenVocabModel` on camera images.

    Args:
        model: SED, SAN or any other :class:`OpenVocabModel`.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast around the network).
        short_edge: the image is resized so its short edge has this length before the model.
        min_score: pixels whose best score is below this are unlabeled.
        text_cache: persistent text-embedding cache; None encodes every time.
        cer_topk: SED's category early rejection: classes outside the top K at every
            pixel are dropped between decoder stages (None: off). Models without CER
            refuse a value.
        channels_last: store conv weights NHWC, which GPU tensor cores prefer (default: on
            CUDA only; the results are the same either way).
    """

    def __init__(
        self,
        model: OpenVocabModel,
        device: str = "cpu",
        precision: str = "fp32",
        short_edge: int = DEFAULT_SHORT_EDGE,
        min_score: float = 0.0,
        text_cache: TextEmbeddingCache | None = None,
        cer_topk: int | None = None,
        channels_last: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if cer_topk is not None:
            if not hasattr(model, "cer_topk"):
                raise ValueError(f"{model.variant} has no category early rejection (cer_topk is SED's)")
            if cer_topk < 1:
                raise ValueError(f"cer_topk must be at least 1, not {cer_topk}")
            model.cer_topk = cer_topk
        self.device = torch.device(device)
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.precision = precision
        self.short_edge = short_edge
        self.min_score = min_score
        self.text_cache = text_cache
        self.vocabulary: Vocabulary | None = None

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @torch.inference_mode()
    def encode_vocabulary(self, names: list[str], version: int = 0) -> Vocabulary:
        """Validate ``names`` and compute (or fetch from the cache) their text features.

        Raises :class:`~ovseg_ros.vocabulary.VocabularyError` for bad names.
        """
        names = validate_class_names(names)
        with self._autocast():
            if self.text_cache is None:
                features = self.model.encode_text(names)
            else:
                features = self.text_cache.lookup(names, self.model.encode_text, self.device, self.precision)
        return Vocabulary(tuple(names), features.float(), version)

    def set_vocabulary(self, names: list[str]) -> Vocabulary:
        """Encode ``names`` and make them the vocabulary :meth:`segment` uses by default."""
        version = 1 if self.vocabulary is None else self.vocabulary.version + 1
        self.vocabulary = self.encode_vocabulary(names, version)
        return self.vocabulary

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, H', W') float32 0..255 on the device, short edge resized."""
        pixels = torch.from_numpy(np.ascontiguousarray(rgb))
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        image = pixels.permute(2, 0, 1).unsqueeze(0).float().contiguous(memory_format=self.memory_format)
        size = resized_shape(*rgb.shape[:2], self.short_edge)
        if size != tuple(rgb.shape[:2]):
            shrinking = size[0] < rgb.shape[0]
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
            image = image.round_().clamp_(0, 255)  # the authors' model sees a uint8 image
        return image

    def warm_up(self, vocabulary: Vocabulary, height: int = 480, width: int = 640) -> float:
        """Run one frame so the first real one is not slow (allocator, kernel selection); ms."""
        start = time.perf_counter()
        self.segment(np.zeros((height, width, 3), np.uint8), vocabulary)
        return _lap(start, self.device)

    @torch.inference_mode()
    def segment(
        self,
        rgb: np.ndarray,
        vocabulary: Vocabulary | None = None,
        refine_scores: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Segmentation:
        """Label every pixel of ``rgb`` ((H, W, 3) uint8) with ``vocabulary`` (default: the one set).

        ``refine_scores`` ((T, H, W) -> (T, H, W)), e.g. temporal smoothing, runs on the
        scores before the argmax.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        vocabulary = vocabulary or self.vocabulary
        if vocabulary is None:
            raise ValueError("no vocabulary: call set_vocabulary() first or pass one")
        timings = {}
        start = time.perf_counter()
        with stage("preprocess"):
            image = self.preprocess(rgb)
        timings["preprocess"] = _lap(start, self.device)

        start = time.perf_counter()
        with self._autocast():
            scores = self.model(image, vocabulary.text_features, output_size=rgb.shape[:2]).float()
        timings["model"] = _lap(start, self.device)

        start = time.perf_counter()
        if refine_scores is not None:
            with stage("smoothing"):
                scores = refine_scores(scores)
        with stage("postprocess"):
            confidence, labels = scores.max(dim=0)
            dtype = torch.uint8 if vocabulary.unlabeled_id == 255 else torch.int32
            labels = labels.to(dtype)
            if self.min_score > 0:
                labels[confidence < self.min_score] = vocabulary.unlabeled_id
            labels_np = labels.cpu().numpy()
            if dtype != torch.uint8:  # torch has no general uint16: narrow on the host, once
                labels_np = labels_np.astype(np.uint16)
            confidence_np = confidence.cpu().numpy()
        timings["postprocess"] = _lap(start, self.device)
        return Segmentation(scores, labels_np, confidence_np, vocabulary, timings)


def _lap(start: float, device: torch.device) -> float:
    """Milliseconds since ``start``, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0
