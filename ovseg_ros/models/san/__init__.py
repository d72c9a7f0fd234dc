"""SAN (Side Adapter Network, Xu et al. CVPR 2023) in plain PyTorch.

    model = build_san("vit_b_16", checkpoint="san_vit_b_16.pth")
    scores = model(image, model.encode_text(["sky", "road"])).best((480, 640))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..checkpoint import StateDict, load_strict, read_state_dict, san_state_dict_from_official
from .model import SAN, VARIANTS, SANConfig, SANPrediction

__all__ = ["SAN", "SANConfig", "SANPrediction", "VARIANTS", "build_san"]


def build_san(
    variant: str | SANConfig = "vit_b_16",
    checkpoint: str | Path | None = None,
    state_dict: StateDict | None = None,
    clip_resolution: float | None = None,
) -> SAN:
    """Build a SAN in eval mode and load official weights strictly.

    Args:
        variant: ``"vit_b_16"``, ``"vit_large_14"`` (``san_`` prefix allowed) or a
            :class:`SANConfig` (e.g. a small one for tests).
        checkpoint: official ``.pth`` file (``{"model": sd}`` or bare, optional ``module.`` prefix).
        state_dict: official-keyed weights already in memory (instead of ``checkpoint``).
        clip_resolution: override of the CLIP input scale (the variant's ``CLIP_RESOLUTION``).

    Raises:
        CheckpointError: the file is unreadable or its keys/shapes do not fit the variant.
        ValueError: unknown variant, or both ``checkpoint`` and ``state_dict`` given.
    """
    if isinstance(variant, SANConfig):
        config, name = variant, "custom"
    else:
        name = variant.removeprefix("san_")
        if name not in VARIANTS:
            raise ValueError(f"unknown SAN variant {variant!r}; expected one of {sorted(VARIANTS)}")
        config = VARIANTS[name]
    if clip_resolution is not None:
        config = dataclasses.replace(config, clip_resolution=clip_resolution)
    if checkpoint is not None and state_dict is not None:
        raise ValueError("give either checkpoint or state_dict, not both")

    model = SAN(config, variant=name)
    if checkpoint is not None:
        state_dict, source = read_state_dict(checkpoint), str(checkpoint)
    else:
        source = "state_dict"
    if state_dict is not None:
        load_strict(model, san_state_dict_from_official(state_dict), source=source)
    return model.eval()
