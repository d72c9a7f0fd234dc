"""Model registry: one name per released variant, built with or without official weights.

    model = build_model("sed_convnext_base", weights="model_final.pth")

Names are those of the parity fixtures' variants. Without weights a model gets
deterministic random weights: it runs, but its labels mean nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .base import OpenVocabModel
from .checkpoint import CheckpointError


def _sed(variant: str) -> Callable[..., OpenVocabModel]:
    def build(checkpoint: str | None) -> OpenVocabModel:
        from .sed import build_sed

        return build_sed(variant, checkpoint=checkpoint)

    return build


def _san(variant: str) -> Callable[..., OpenVocabModel]:
    def build(checkpoint: str | None) -> OpenVocabModel:
        from .san import build_san

        return build_san(variant, checkpoint=checkpoint)

    return build


#: model name -> builder(checkpoint path or None)
MODEL_BUILDERS: dict[str, Callable[[str | None], OpenVocabModel]] = {
    "sed_convnext_base": _sed("convnext_base"),
    "sed_convnext_large": _sed("convnext_large"),
    "san_vit_b_16": _san("vit_b_16"),
    "san_vit_large_14": _san("vit_large_14"),
    # Development only (no released weights, labels meaningless): fast CPU tests of the node.
    "san_tiny_dev": _san("tiny_dev"),
    "sed_tiny_dev": _sed("tiny_dev"),
}

#: Seed of the random weights used when no checkpoint is given (keeps runs repeatable).
RANDOM_WEIGHTS_SEED = 0


def weights_dir() -> Path:
    """Where official checkpoints are looked for: ``$OVSEG_WEIGHTS_DIR`` or ``~/.local/share/ovseg_ros/weights``."""
    return Path(os.environ.get("OVSEG_WEIGHTS_DIR", Path.home() / ".local" / "share" / "ovseg_ros" / "weights"))


#: The ``weights`` value that fetches the authors' release when the weights folder has none
#: (:func:`ovseg_ros.models.weights.fetch_weights`; resolving never downloads by itself).
AUTO_WEIGHTS = "auto"


def resolve_weights(model: str, weights: str = "") -> Path | None:
    """The checkpoint to load: ``weights`` if a path is given; else the weights folder's
    ``<model>.safetensors``, else its ``<model>.pth``, if one exists; else None.

    ``weights`` empty or :data:`AUTO_WEIGHTS` both look in the folder; what ``auto`` does
    when it is empty is up to the caller (``build_segmenter`` downloads).
    """
    if weights and weights != AUTO_WEIGHTS:
        return Path(weights).expanduser()
    for suffix in (".safetensors", ".pth"):
        candidate = weights_dir() / f"{model}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def build_model(name: str, weights: Path | str | None = None) -> OpenVocabModel:
    """Build model ``name``, loading ``weights`` strictly, or random weights when None.

    Raises :class:`ValueError` for an unknown name and
    :class:`~ovseg_ros.models.checkpoint.CheckpointError` for a missing, corrupt or
    mismatched checkpoint.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_BUILDERS)})")
    if weights is None:
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
    return MODEL_BUILDERS[name](None if weights is None else str(weights))


__all__ = ["AUTO_WEIGHTS", "MODEL_BUILDERS", "CheckpointError", "OpenVocabModel", "build_model", "resolve_weights", "weights_dir"]
