"""SED side of ``python -m ovseg_ros.commands.check_parity``: recompute a case's arrays.

Everything is computed end to end from the case's image, class names and weights, with
our own text features (never the stored ones). Array names follow the fixtures' README:
``text_features``, ``clip_input``, ``clip_dense``, ``normal_logits``, ``normal_probs``,
``sem_seg_argmax`` and, per CER mode with top-K, ``cer_top{K}_probs`` and
``cer_top{K}_kept_stage{1,2,3}``.
"""

from __future__ import annotations

import numpy as np
import torch

from ovseg_ros.models.sed.build import build_sed
from ovseg_ros.commands.check_parity import as_numpy, autocast


def run_case(case: dict, image_input_u8: np.ndarray, state_dict: dict, device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Our values for every array that ``case["arrays"]`` lists (inputs excepted).

    Args:
        case: the parsed ``case.json``.
        image_input_u8: (3, H, W) uint8 RGB, the image after ResizeShortestEdge.
        state_dict: the weights, keyed as in the official checkpoint.
        device: torch device to run on.
        precision: ``"fp32"``, or ``"bf16"`` for autocast around text and image towers, as the
            Segmenter runs them (text features then cast back to float32, as it does).
    """
    model = build_sed(
        case["variant"].removeprefix("sed_"),
        state_dict=state_dict,
        pooling_size=tuple(case["mode"]["POOLING_SIZES"]),
    ).to(device)
    image = torch.from_numpy(image_input_u8).to(device, torch.float32)[None]
    with autocast(device, precision):
        text = model.encode_text(case["class_names"]).float()
        normal = model.predict(image, text)  # what model.forward returns .scores() of
        _, labels = normal.scores().best(tuple(case["original_hw"]))
    arrays = {
        "text_features": text,
        "clip_input": normal.clip_input,
        "clip_dense": normal.clip_dense[0],
        "normal_logits": normal.logits,
        "normal_probs": normal.probs,
        "sem_seg_argmax": labels.to(torch.uint8),
    }
    for mode in case["mode"]["cer_modes"]:
        if not mode["TEST.FAST_INFERENCE"]:
            continue
        topk = mode["TEST.TOPK"]
        with autocast(device, precision):
            cer = model.predict(image, text, topk)
        arrays[f"cer_top{topk}_probs"] = cer.probs
        for stage, kept in enumerate(cer.kept_per_stage, start=1):
            arrays[f"cer_top{topk}_kept_stage{stage}"] = kept

    wanted = set(case["arrays"]) - {"image_input_u8"}  # the input, stored for reproducibility
    unknown = wanted - set(arrays)
    if unknown:
        raise KeyError(f"case {case.get('case')!r} lists arrays SED parity does not produce: {sorted(unknown)}")
    return {name: as_numpy(arrays[name]) for name in sorted(wanted)}
