"""The interface every segmentation model implements (SED, SAN, the baseline)."""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import record_function

from .scores import ClassScores


def stage(name: str) -> record_function:
    """Label a pipeline stage for ``torch.profiler`` (what ``tools.bench`` reports per stage).

    Costs next to nothing while no profiler is recording.
    """
    return record_function(f"ovseg.{name}")


class OpenVocabModel(nn.Module):
    """An open-vocabulary semantic segmentation network.

    Subclasses reproduce the authors' inference path from the image the authors' model
    receives (after detectron2's ``ResizeShortestEdge``) to per-class scores
    (:class:`~ovseg_ros.models.scores.ClassScores`). Text and image are split so that the
    text features of a vocabulary are computed once (and cached) and reused for every frame.
    """

    #: Registry name of the variant, e.g. ``"sed_convnext_base"`` (keys the text cache).
    variant: str = ""
    #: What the model supports, declared by each model (callers read these, never probe):
    #: ``forward`` takes ``cer_topk`` (category early rejection: SED) ...
    supports_cer: bool = False
    #: ... ``forward_batch`` labels several images of one size in one call.
    supports_batches: bool = False
    #: ... and the temporal smoothing its scores need on video (what the setting ``auto``
    #: means, see :mod:`ovseg_ros.engine.smoothing`): ``"none"`` for steady per-frame scores.
    auto_smoothing: str = "none"

    def encode_text(self, class_names: list[str]) -> torch.Tensor:
        """Text features for ``class_names``; first dim is ``len(class_names)``, rest model-specific."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor, text_features: torch.Tensor) -> ClassScores:
        """Per-class scores, upsampled on demand to any output size.

        Args:
            image: (1, 3, H, W) float RGB in 0..255 on the model's device, as the authors'
                model receives it (normalisation, padding and CLIP resizing happen inside).
            text_features: output of :meth:`encode_text` for T classes.
            (models with :attr:`supports_cer` take ``cer_topk`` too: CER's K, None = off.)

        Returns:
            Scores of the T classes at model resolution; ``best((H0, W0))`` gives the label
            and score per pixel at an output size (usually the camera image's), ``full`` all
            (T, H0, W0) scores. Higher means more likely.
        """
        raise NotImplementedError
