"""Run our SAN on a parity case of the authors' code (see ``ovseg_ros.commands.check_parity``).

Everything comes from ``case.json``: the variant, the class names, the output size and the
inference mode. A mode or preprocessing this implementation does not reproduce raises
``ValueError`` instead of producing numbers that cannot match.
"""

from __future__ import annotations

import numpy as np
import torch

from ovseg_ros.models.san import build_san
from ovseg_ros.models.san.model import PIXEL_MEAN, PIXEL_STD
from ovseg_ros.commands.check_parity import as_numpy, autocast


def _check_supported(case: dict) -> None:
    """Refuse cases whose mode or normalisation differs from the authors' single-scale path."""
    mode = case["mode"]
    unsupported = {
        "TTA": mode.get("TTA", False),
        "sliding_window": mode.get("sliding_window", False),
        "SEM_SEG_POSTPROCESS_BEFORE_INFERENCE": not mode.get("SEM_SEG_POSTPROCESS_BEFORE_INFERENCE", True),
        "templates": not str(mode.get("templates", "vild")).startswith("vild"),
    }
    for step in case.get("preprocessing", []):
        if step["step"] == "normalize":
            params = step["params"]
            unsupported["normalize"] = not (np.allclose(params["mean"], PIXEL_MEAN) and np.allclose(params["std"], PIXEL_STD))
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"case {case.get('case')}: unsupported SAN settings {bad} (mode {mode})")


def run_case(case: dict, image_input_u8: np.ndarray, state_dict: dict, device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Our values of the case's output arrays.

    Args:
        case: parsed ``case.json``.
        image_input_u8: (3, H, W) uint8 RGB, the image the authors' model received.
        state_dict: official-keyed weights of the case.
        device: torch device.
        precision: ``"fp32"``, or ``"bf16"`` for autocast around text and image towers, as the
            Segmenter runs them (text features then cast back to float32, as it does).

    Returns:
        Every array named in ``case["arrays"]`` that SAN produces (``image_input_u8`` is an
        input and is skipped), as numpy in the dtype the case declares.
    """
    _check_supported(case)
    mode = case["mode"]
    model = build_san(case["variant"], state_dict=state_dict, clip_resolution=mode["CLIP_RESOLUTION"])
    if model.config.size_divisibility != mode.get("SIZE_DIVISIBILITY", 32):
        raise ValueError(f"case pads to {mode['SIZE_DIVISIBILITY']}, SAN to {model.config.size_divisibility}")
    if model.config.num_queries != mode.get("num_queries", model.config.num_queries):
        raise ValueError(f"case has {mode['num_queries']} queries, SAN {model.config.num_queries}")
    model.to(device)

    with torch.inference_mode(), autocast(device, precision):
        image = torch.from_numpy(np.ascontiguousarray(image_input_u8)).to(device, torch.float32)[None]
        prediction = model.predict(image, model.encode_text(case["class_names"]).float())
        scores = prediction.scores()  # what model.forward returns
        sem_seg = scores.full(tuple(case["original_hw"]))
        _, labels = scores.best(tuple(case["original_hw"]))

    ours = {
        "text_classifier": prediction.text_classifier,
        "mask_preds": prediction.mask_preds[0],
        "attn_biases": prediction.attn_biases[0],
        "mask_embs": prediction.mask_embs[0],
        "mask_logits": prediction.mask_logits[0],
        "sem_seg": sem_seg,
        "sem_seg_argmax": labels.to(torch.uint8),
    }
    return {name: _as_declared(ours[name], spec) for name, spec in case["arrays"].items() if name in ours}


def _as_declared(value: torch.Tensor, spec: dict) -> np.ndarray:
    """numpy in the dtype the case declares (e.g. float16 sem_seg), so both sides carry the same rounding."""
    array = as_numpy(value)
    return array.astype(spec["dtype"]) if "dtype" in spec else array
