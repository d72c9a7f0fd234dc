"""Every parameter of the ovseg node, declared in one place.

Kept free of rclpy so the launch file, the tests and the documentation check
(``config/segment.yaml`` must document each of these) can read it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    read_only: bool = False  # True: a change needs a restart (the model is built at start-up)
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS = (
    ParameterSpec("model", "sed_convnext_base", "Segmentation model (see `python -m ovseg_ros.tools.models`).", read_only=True),
    ParameterSpec(
        "weights",
        "",
        "Authors' checkpoint (.pth). Empty: $OVSEG_WEIGHTS_DIR/<model>.pth if present, else random weights (labels meaningless).",
        read_only=True,
    ),
    ParameterSpec("device", "auto", "Torch device: auto (cuda when available), cpu, cuda, cuda:N.", read_only=True),
    ParameterSpec("precision", "fp32", "Numeric precision of the network.", read_only=True, choices=("fp32", "fp16", "bf16")),
    ParameterSpec("input_short_edge", 640, "Images are resized to this short edge before the model (authors: 640).", read_only=True, min_value=64, max_value=2048),
    ParameterSpec("vocabulary", ["person", "floor", "wall", "ceiling", "table", "chair"], "Class names; 'a, b' gives synonyms a and b for one class."),
    ParameterSpec("min_score", 0.0, "Pixels whose best class score is below this are unlabeled (255 / 65535).", min_value=0.0, max_value=1000.0),
    ParameterSpec("publish_color", True, "Publish segmentation/color (rgb8 class colours)."),
)

PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}
