"""Checkpoint loading and key conversion for every model, in one place.

The authors' checkpoints are detectron2 ``model_final.pth`` files: a dict with the
state dict under ``"model"`` (or a bare state dict), keys possibly prefixed with
``module.`` when saved from DistributedDataParallel, and possibly the training state
beside it (``optimizer``, ``scheduler``, ``iteration``...). Everything is loaded with
``torch.load(..., weights_only=True)``, whose unpickler builds only tensors and plain
containers and never calls code from the file; the only additions allowed are numpy
scalars (a detectron2 ``iteration`` may be one) and their dtypes, which are data too.
Files are memory-mapped, so the optimizer state (often twice the weights) is never read
into memory. ``.safetensors`` files (what ``fetch_weights`` converts a release to) hold
nothing but tensors and are read memory-mapped with ``safetensors``, no unpickling at all.
Weights are applied strictly: a wrong or truncated file raises :class:`CheckpointError`
naming the missing and unexpected keys.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


_NUMPY_SCALAR_TYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                       np.float16, np.float32, np.float64, np.complex64, np.complex128)
_numpy_scalar = np.int64(0).__reduce__()[0]  # numpy's scalar constructor, whatever its module
#: What ``weights_only`` loading may build beyond tensors: numpy scalars, under their numpy 2
#: and numpy 1 (``numpy.core``) names, and the dtypes they carry. No callable that runs code.
SAFE_NUMPY_GLOBALS = [
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(scalar)) for scalar in _NUMPY_SCALAR_TYPES),
]


def _load_weights_only(path: Path) -> object:
    """``torch.load`` with ``weights_only=True`` plus :data:`SAFE_NUMPY_GLOBALS`, memory-mapped.

    Files in the pre-1.6 (non-zip) format cannot be memory-mapped and are read whole.
    """
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        try:
            refused = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _safe_global_names())
        except Exception:  # not a zip checkpoint, or too corrupt to list
            refused = []
        if refused:
            raise CheckpointError(
                f"refusing checkpoint {path}: it holds pickled objects that could run code when loaded "
                f"({', '.join(refused)}); only tensors, plain containers and numpy scalars are read"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def _safe_global_names() -> set[str]:
    return {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}" for entry in SAFE_NUMPY_GLOBALS}


def _load_safetensors(path: Path) -> StateDict:
    """A ``.safetensors`` file's tensors, memory-mapped (the format holds only tensors and a JSON header)."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError, or OSError for an unreadable file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def read_state_dict(path: str | Path) -> StateDict:
    """Read a ``.pth`` file (``{"model": sd, ...training state}`` or a bare ``sd``) or a
    ``.safetensors`` file safely.

    Strips a leading ``module.`` from every key. Raises :class:`CheckpointError` with the
    path and the reason when the file is missing, corrupt, holds no tensors, holds pickled
    objects other than data, or holds a key both with and without ``module.``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _load_safetensors(path) if path.suffix == ".safetensors" else _load_weights_only(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key.removeprefix("module.")
        if name in state:
            raise CheckpointError(f"{path}: {name!r} is there both with and without the 'module.' prefix; which to load is ambiguous")
        state[name] = value
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
