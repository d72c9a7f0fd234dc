"""Per-class scores as models return them: at model resolution, upsampled only on demand.

A model's ``forward`` returns a :class:`ClassScores` instead of a (T, H0, W0) tensor: at 847
classes and 1280 x 720 that tensor alone is 3.1 GB of float32 per frame. What a frame needs is
the best class per pixel and its score, which :meth:`ClassScores.best` computes over chunks of
classes whose upsampled scores fit in ``chunk_bytes``; :meth:`ClassScores.full` materialises
every class (parity checks and tests only). Temporal smoothing blends :meth:`ClassScores.coarse`,
the scores at model resolution, and puts the result back with :meth:`ClassScores.with_coarse`.

T = classes, (H0, W0) = output size.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Iterator

import torch
from torch.nn import functional as F

#: Default bound on one chunk of upsampled scores, (classes, H0, W0) float32.
DEFAULT_CHUNK_BYTES = 64 * 2**20

_FLOAT32_BYTES = 4


class ClassScores(ABC):
    """Scores of T classes for one image, upsampled to an output size on demand.

    Attributes:
        num_classes: T.
        chunk_bytes: bound on the (classes, H0, W0) float32 scores one chunk of :meth:`best`
            (and :meth:`full`) upsamples at a time; a chunk holds at least one class.
    """

    num_classes: int
    chunk_bytes: int

    def classes_per_chunk(self, output_size: tuple[int, int]) -> int:
        """Classes upsampled together at ``output_size``: as many as fit in ``chunk_bytes``, at least 1."""
        height, width = output_size
        return max(1, self.chunk_bytes // (height * width * _FLOAT32_BYTES))

    @abstractmethod
    def _class_chunks(self, output_size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first class id, (c, H0, W0) float32 scores) for consecutive chunks of
        :meth:`classes_per_chunk` classes covering all T in order.

        :meth:`full` and :meth:`best` both consume these chunks, so that best() is exactly
        full().max(0) whatever kernels a chunk's shape selects: the rounding of the CPU's
        bilinear resize, for one, depends on how many channels it resizes together, so a
        chunk may differ by an ulp from the same classes resized with all the others.
        """

    @abstractmethod
    def coarse(self) -> torch.Tensor:
        """(T, h, w) float scores at model resolution: what temporal smoothing blends."""

    @abstractmethod
    def with_coarse(self, coarse: torch.Tensor) -> ClassScores:
        """These scores with the coarse map replaced by ``coarse`` (shaped like :meth:`coarse`);
        best()/full() of the result upsample ``coarse``."""

    def full(self, output_size: tuple[int, int]) -> torch.Tensor:
        """(T, H0, W0) float32 scores of every class (parity checks and tests: the size is T x H0 x W0)."""
        scores = None
        for start, chunk in self._class_chunks(output_size):
            if scores is None:
                scores = chunk.new_empty((self.num_classes, *chunk.shape[-2:]))
            scores[start : start + len(chunk)] = chunk
        return scores

    def best(self, output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best class per pixel, without materialising the scores of all classes.

        Returns:
            confidence: (H0, W0) float32, the highest score; labels: (H0, W0) int64, its class.
            Bit-identical to ``full(output_size).max(dim=0)``, ties included: the first class
            with the highest score wins, and a NaN counts as the highest score, as in torch.max.
        """
        confidence = labels = None
        for start, chunk in self._class_chunks(output_size):
            chunk_confidence, chunk_labels = chunk.max(dim=0)
            chunk_labels += start
            if confidence is None:
                confidence, labels = chunk_confidence, chunk_labels
                continue
            # Strictly greater: on a tie the earlier chunk, i.e. the lower class id, keeps the pixel.
            better = (chunk_confidence > confidence) | (chunk_confidence.isnan() & ~confidence.isnan())
            confidence = torch.where(better, chunk_confidence, confidence)
            labels = torch.where(better, chunk_labels, labels)
        return confidence, labels


class UpsampledScores(ClassScores):
    """Scores that are a map at model resolution resized to the output size (SED).

    The upsampling is detectron2's ``sem_seg_postprocess`` as the authors call it: crop the
    map to ``valid_size``, then resize it bilinearly (``align_corners=False``) to the output
    size.

    Args:
        coarse: (T, h, w) float scores, e.g. SED's (T, 192, 192) sigmoid probabilities; kept
            in float32 (a bf16 map would put every probability above ~0.996 on two values).
        valid_size: (hc, wc), the part of the map kept by the crop; sizes beyond the map's
            keep all of it (SED passes the size of the image the model received, which crops
            only when a side of that image is below 192).
        chunk_bytes: see :class:`ClassScores`.
        candidates: (K,) ascending ids of the only classes that can score above 0; every other
            row of ``coarse`` must be exactly 0 (SED's classes rejected by CER). :meth:`best`
            then upsamples these K rows only and gives a rejected class a pixel only where
            every candidate scores 0 or less there, as ``full().max(0)`` would (up to the ulp
            by which the resize of a chunk may depend on the chunk's other classes).
    """

    def __init__(self, coarse: torch.Tensor, valid_size: tuple[int, int], chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 candidates: torch.Tensor | None = None):
        if coarse.dim() != 3:
            raise ValueError(f"coarse scores are (T, h, w), got {tuple(coarse.shape)}")
        self._coarse = coarse.float()  # stored and compared in float32 whatever autocast made (its memory is small)
        self.valid_size = (int(valid_size[0]), int(valid_size[1]))
        self.num_classes = coarse.shape[0]
        self.chunk_bytes = chunk_bytes
        self.candidates = candidates

    def best(self, output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.candidates is None or len(self.candidates) == self.num_classes:
            return super().best(output_size)
        kept = UpsampledScores(self._coarse[self.candidates], self.valid_size, self.chunk_bytes)
        confidence, local = kept.best(output_size)
        labels = self.candidates[local]
        # The rejected classes score exactly 0: the lowest-numbered of them wins where no
        # candidate is above 0 and it comes first (full().max's tie rule), or where all are below.
        rejected = torch.ones(self.num_classes, dtype=torch.bool, device=labels.device)
        rejected[self.candidates] = False
        first_rejected = rejected.to(torch.uint8).argmax()  # on the device: no host sync
        zero_wins = (confidence < 0) | ((confidence == 0) & (labels > first_rejected))
        return confidence.masked_fill(confidence < 0, 0.0), torch.where(zero_wins, first_rejected, labels)

    def coarse(self) -> torch.Tensor:
        """(T, h, w) the map as given, uncropped."""
        return self._coarse

    def with_coarse(self, coarse: torch.Tensor) -> UpsampledScores:
        if coarse.shape != self._coarse.shape:
            raise ValueError(f"coarse map {tuple(coarse.shape)} does not replace {tuple(self._coarse.shape)}")
        # Smoothing blends in the past, where other classes may score: no candidates any more.
        return UpsampledScores(coarse, self.valid_size, self.chunk_bytes)

    def _class_chunks(self, output_size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        height, width = self.valid_size
        cropped = self._coarse[:, :height, :width]
        step = self.classes_per_chunk(output_size)
        for start in range(0, self.num_classes, step):
            chunk = cropped[None, start : start + step]
            yield start, F.interpolate(chunk, size=tuple(output_size), mode="bilinear", align_corners=False)[0].float()


class SANScores(ClassScores):
    """SAN's semantic inference, per class chunk.

    Exact path (:meth:`full`, :meth:`best`), as the authors' ``semantic_inference``: the mask
    logits are resized bilinearly to the padded input size, cropped to the image, resized to
    the output size and passed through a sigmoid, once for all Q masks (Q x H0 x W0, independent
    of T); the score of class c is then ``sum_q class_probs[q, c] * sigmoid(mask_q)``, one chunk
    of classes at a time.

    Coarse map (:meth:`coarse`), for temporal smoothing only: the same sum with the sigmoid of
    the masks at their own resolution (padded size / 16), cropped to the cells covering the
    image (rounded up, so the last row/column may include some padding). Taking the sigmoid and
    the sum before upsampling instead of after is an approximation; :meth:`with_coarse` returns
    an :class:`UpsampledScores` of the smoothed map, so smoothed labels follow it, not the exact
    path.

    Args:
        class_probs: (Q, T) softmax over each mask's class logits, background column dropped.
        mask_preds: (Q, h, w) mask logits on the side adapter's grid.
        Both are kept in float32: under CUDA autocast the softmax comes out in float32 and the
        masks in bf16/fp16, which no einsum takes together; their memory is small (Q x T, Q x h x w).
        image_size: (H, W) of the image the model received.
        padded_size: (Hp, Wp) of that image padded to the size divisibility; (h, w) covers it.
        chunk_bytes: see :class:`ClassScores`.
    """

    def __init__(self, class_probs: torch.Tensor, mask_preds: torch.Tensor, image_size: tuple[int, int],
                 padded_size: tuple[int, int], chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if class_probs.dim() != 2 or mask_preds.dim() != 3 or class_probs.shape[0] != mask_preds.shape[0]:
            raise ValueError(f"need class_probs (Q, T) and mask_preds (Q, h, w), got {tuple(class_probs.shape)} "
                             f"and {tuple(mask_preds.shape)}")
        self.class_probs = class_probs.float()
        self.mask_preds = mask_preds.float()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.padded_size = (int(padded_size[0]), int(padded_size[1]))
        self.num_classes = class_probs.shape[1]
        self.chunk_bytes = chunk_bytes

    def _coarse_size(self) -> tuple[int, int]:
        """(hc, wc): the mask grid cells that cover the image (the rest is padding)."""
        grid_h, grid_w = self.mask_preds.shape[-2:]
        return (math.ceil(self.image_size[0] * grid_h / self.padded_size[0]),
                math.ceil(self.image_size[1] * grid_w / self.padded_size[1]))

    def coarse(self) -> torch.Tensor:
        """(T, hc, wc) approximate scores on the mask grid, cropped to the image (see the class docstring)."""
        height, width = self._coarse_size()
        masks = self.mask_preds[:, :height, :width].sigmoid()
        return torch.einsum("qc,qhw->chw", self.class_probs, masks)

    def with_coarse(self, coarse: torch.Tensor) -> UpsampledScores:
        """An :class:`UpsampledScores` of ``coarse`` (T, hc, wc), resized whole to the output size."""
        expected = (self.num_classes, *self._coarse_size())
        if tuple(coarse.shape) != expected:
            raise ValueError(f"coarse map {tuple(coarse.shape)} does not replace {expected}")
        return UpsampledScores(coarse, coarse.shape[-2:], self.chunk_bytes)

    def _class_chunks(self, output_size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        height, width = self.image_size
        masks = F.interpolate(self.mask_preds[None], size=self.padded_size, mode="bilinear", align_corners=False)
        masks = F.interpolate(masks[..., :height, :width], size=tuple(output_size), mode="bilinear", align_corners=False)
        masks = masks[0].sigmoid_()  # (Q, H0, W0), shared by every chunk
        step = self.classes_per_chunk(output_size)
        for start in range(0, self.num_classes, step):
            yield start, torch.einsum("qc,qhw->chw", self.class_probs[:, start : start + step], masks).float()
