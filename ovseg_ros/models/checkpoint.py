"""Checkpoint loading and key conversion for every model, in one place.

The authors' checkpoints are detectron2 ``model_final.pth`` files: a dict with the
state dict under ``"model"`` (or a bare state dict), keys possibly prefixed with
``module.`` when saved from DistributedDataParallel. Everything is loaded with
``torch.load(..., weights_only=True)`` and applied strictly: a wrong or truncated
file raises :class:`CheckpointError` naming the missing and unexpected keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def read_state_dict(path: str | Path) -> StateDict:
    """Read a ``.pth`` file (``{"model": sd}`` or a bare ``sd``) with ``weights_only=True``.

    Strips a leading ``module.`` from every key. Raises :class:`CheckpointError` with the
    path and the reason when the file is missing, corrupt or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short SHA-256 hex digest of a file's bytes (keys the text-embedding cache)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:length]


def load_strict(model: nn.Module, state: StateDict, source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``, requiring exactly the model's keys and shapes.

    Raises :class:`CheckpointError` listing missing keys, unexpected keys and shape
    mismatches (at most a few of each, with counts) instead of half-loading.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: "
            + "; ".join(
                f"{len(items)} {label} (e.g. {', '.join(items[:5])})"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if items
            )
        )
    model.load_state_dict(state, strict=True)


def san_state_dict_from_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official SAN checkpoint keys (MendelXu/SAN ``san_vit_b_16.pth`` / ``san_vit_large_14.pth``) -> ours.

    Our SAN mirrors the official module tree (``clip_visual_extractor``, ``clip_rec_head``,
    ``ov_classifier``, ``side_adapter_network``), so keys are kept as they are. Only the
    training loss's ``criterion.*`` entries (the class weights ``empty_weight``) are dropped.
    Anything else that does not fit is left for :func:`load_strict` to report.
    """
    return {key: value for key, value in state.items() if not key.startswith("criterion.")}


#: Prefix of the CLIP towers in official SED checkpoints (an open_clip ``CLIP`` state dict below it).
SED_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."


def sed_state_dict_from_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Official SED checkpoint keys (xb534/SED ``model_final.pth``) -> ours.

    ``sem_seg_head.predictor.clip_model.visual.*`` -> ``image_encoder.*`` (ConvNeXt trunk, head);
    ``sem_seg_head.predictor.clip_model.*``        -> ``text_encoder.*`` (rest of the CLIP model);
    ``sem_seg_head.predictor.transformer.*``       -> ``decoder.*``.
    Other keys are kept as they are, for :func:`load_strict` to report as unexpected.
    """
    renames = (
        (SED_CLIP_PREFIX + "visual.", "image_encoder."),
        (SED_CLIP_PREFIX, "text_encoder."),
        ("sem_seg_head.predictor.transformer.", "decoder."),
    )
    converted = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        converted[key] = value
    return converted
