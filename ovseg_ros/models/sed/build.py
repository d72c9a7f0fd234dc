"""Building SED from an official checkpoint, or from open_clip CLIP weights alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import open_clip
import torch
from torch import nn

from ..checkpoint import SED_CLIP_PREFIX, load_strict, read_state_dict, sed_state_dict_from_official
from .decoder import SEDDecoder
from .image_encoder import ImageEncoder
from .model import SED
from .text_encoder import TextEncoder


@dataclass(frozen=True)
class VariantSpec:
    #: open_clip model whose tokenizer, and config unless ``clip_config`` is given, are used.
    open_clip_name: str
    #: Channels of the ConvNeXt res4, res3, res2 outputs (the authors' DECODER_GUIDANCE_DIMS).
    image_guidance_dims: tuple[int, int, int]
    #: ``open_clip.CLIP`` keyword arguments; None: open_clip's config of ``open_clip_name``.
    clip_config: dict | None = None
    #: :class:`SEDDecoder` widths other than the authors' (their configs use the defaults).
    decoder_dims: dict = field(default_factory=dict)
    #: Size the image is stretched to for the CLIP tower (the decoder works at a quarter of it).
    clip_input_size: tuple[int, int] = (768, 768)


VARIANTS = {
    "convnext_base": VariantSpec("convnext_base_w_320", (512, 256, 128)),
    "convnext_large": VariantSpec("convnext_large_d_320", (768, 384, 192)),
    # Development only: SED's code path with timm's 0.2M-parameter test ConvNeXt, a 2-layer
    # text tower and a narrow decoder, no released weights, so that tests of CER, the
    # node and the frame pipeline run on a CPU in a fraction of a second per frame.
    "tiny_dev": VariantSpec(
        "convnext_base_w_320",  # for its tokenizer (CLIP's BPE, 77 tokens)
        (48, 32, 24),
        clip_config={
            "embed_dim": 32,
            "vision_cfg": {"timm_model_name": "test_convnext", "timm_pool": "", "timm_proj": "linear", "image_size": 768},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        decoder_dims={"hidden_dim": 16, "stage_dims": (16, 8, 4), "guidance_proj_dims": (8, 4, 2), "heads": 2,
                      "kernel_size": 3},
        clip_input_size=(256, 256),
    ),
}


def build_sed(
    variant: str = "convnext_base",
    checkpoint: str | Path | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    clip_weights: str | Path | None = None,
    *,
    pooling_size: tuple[int, int] = (1, 1),
) -> SED:
    """Build SED (eval mode, on the CPU) with weights from at most one source.

    With none, every weight is random (open_clip's initialisation for the towers): the
    model runs but its output is meaningless.

    Args:
        variant: ``"convnext_base"`` or ``"convnext_large"`` (configs convnextB_768 / convnextL_768),
            or ``"tiny_dev"`` (development only: random weights, no checkpoint exists).
        checkpoint: the authors' ``model_final.pth``, loaded strictly (see
            :func:`~ovseg_ros.models.checkpoint.read_state_dict` for the accepted layouts).
        state_dict: the same tensors already in memory, with official key names.
        clip_weights: a torch-saved open_clip state dict of the variant's CLIP model
            (``convnext_base_w_320`` / ``convnext_large_d_320``), loaded strictly into the
            CLIP towers. The decoder then keeps a deterministic random initialisation: it is
            UNTRAINED and its output meaningless; for development only.
        pooling_size: pooling before the decoder's class attention; (1, 1) as in the
            authors' evaluation (``eval.sh``), their training configs use (2, 2).

    Raises:
        CheckpointError: the weights are missing, unreadable or do not fit.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SED variant {variant!r}; choose from {sorted(VARIANTS)}")
    sources = sum(source is not None for source in (checkpoint, state_dict, clip_weights))
    if sources > 1:
        raise ValueError("give at most one of checkpoint, state_dict or clip_weights")
    spec = VARIANTS[variant]

    # With weights to load, the CLIP towers skip initialisation (every tensor is loaded below).
    with torch.device("meta" if sources else "cpu"):
        clip = open_clip.CLIP(**(spec.clip_config or open_clip.get_model_config(spec.open_clip_name)))
    image_encoder = ImageEncoder(clip.visual)
    text_encoder = TextEncoder(clip, open_clip.get_tokenizer(spec.open_clip_name))
    if sources:
        image_encoder.to_empty(device="cpu")
        text_encoder.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = SEDDecoder(spec.image_guidance_dims, pooling_size, **spec.decoder_dims)
    model = SED(variant, image_encoder, text_encoder, decoder, spec.clip_input_size)

    if clip_weights is not None:
        official = {SED_CLIP_PREFIX + key: value for key, value in read_state_dict(clip_weights).items()}
        towers = nn.ModuleDict({"image_encoder": image_encoder, "text_encoder": text_encoder})
        load_strict(towers, sed_state_dict_from_official(official), f"CLIP weights {clip_weights}")
    elif sources:
        if checkpoint is not None:
            state_dict = read_state_dict(checkpoint)
        load_strict(model, sed_state_dict_from_official(state_dict), str(checkpoint or "state_dict"))
    return model.eval()
