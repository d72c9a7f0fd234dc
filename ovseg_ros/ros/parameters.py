"""Every parameter of the ovseg node, declared in one place.

Kept free of rclpy so the launch file, the tests and the documentation can read it anywhere.
``config/segment.yaml`` is generated from these declarations (``python -m
ovseg_ros.ros.parameters > config/segment.yaml``); a test checks it is up to date.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    # True: read on configure, so settable only while the node is unconfigured (lifecycle
    # cleanup, set, configure switches it without a restart); the node refuses it otherwise.
    configure_time: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS = (
    # Model (read on configure).
    ParameterSpec("model", "sed_convnext_base", "Segmentation model: sed_convnext_base, sed_convnext_large, san_vit_b_16, san_vit_large_14.", configure_time=True),
    ParameterSpec(
        "weights",
        "",
        "Authors' checkpoint (.safetensors or .pth). Empty: $OVSEG_WEIGHTS_DIR/<model>.safetensors, else <model>.pth, if present, "
        "else random weights (labels meaningless). auto: that file, else the authors' release downloaded into that folder on "
        "configure (verified, as .safetensors; what python -m ovseg_ros.commands.fetch_weights <model> does beforehand); "
        "offline, the node stays unconfigured and says so.",
        configure_time=True,
    ),
    ParameterSpec("device", "auto", "Torch device: auto (cuda when available), cpu, cuda, cuda:N.", configure_time=True),
    ParameterSpec("precision", "fp32", "Numeric precision of the network.", configure_time=True, choices=("fp32", "fp16", "bf16")),
    ParameterSpec(
        "compile",
        "off",
        "torch.compile of the model's heavy parts (the first frames of each input size compile, minutes for SED-B): off (eager), "
        "default (inductor), reduce-overhead (inductor and CUDA graphs; with torch older than 2.13, which cannot run CUDA graphs "
        "from the inference thread, default instead, said in the log), max-autotune, max-autotune-no-cudagraphs.",
        configure_time=True,
        choices=("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    ),
    ParameterSpec(
        "cpu_threads",
        0,
        "Torch threads when running on the CPU; 0 = one less than the cores, so the ROS executor is never starved of a core.",
        configure_time=True,
        min_value=0,
        max_value=1024,
    ),
    ParameterSpec("input_short_edge", 640, "Images are resized to this short edge before the model (authors: 640).", configure_time=True, min_value=64, max_value=2048),
    ParameterSpec(
        "cer_topk",
        8,
        "SED category early rejection: between decoder stages keep only the classes in the top K at some pixel "
        "(8: the authors' fast mode); 0 = off. SAN has none and ignores it.",
        min_value=0,
        max_value=65535,
    ),
    ParameterSpec(
        "latency_budget_ms",
        0.0,
        "SED with cer_topk: lower CER's K (cer_topk, 4, 2, 1) while the model's p95 latency exceeds this, and raise it "
        "again when there is room; 0 = off (K stays cer_topk).",
        min_value=0.0,
        max_value=100000.0,
    ),
    # Classes.
    ParameterSpec("vocabulary", ["person", "floor", "wall", "ceiling", "table", "chair"], "Class names; 'a, b' gives synonyms a and b for one class."),
    ParameterSpec("min_score", 0.0, "Pixels whose best class score is below this are unlabeled (255 / 65535).", min_value=0.0, max_value=1000.0),
    # Temporal smoothing.
    ParameterSpec(
        "smoothing",
        "auto",
        "Temporal smoothing of class scores across frames: none, ema, flow (optical-flow warped), auto (flow for SAN, none for SED). "
        "(none, not off: YAML reads a bare off as false.)",
        configure_time=True,
        choices=("auto", "none", "ema", "flow"),
    ),
    ParameterSpec("smoothing_strength", 0.6, "Weight of the past in temporal smoothing (0 = none).", min_value=0.0, max_value=1.0),
    ParameterSpec("smoothing_max_gap_s", 0.5, "A longer gap between frame stamps restarts smoothing.", min_value=0.01, max_value=60.0),
    # Input.
    ParameterSpec(
        "cameras",
        [""],
        "Names of the cameras segmented by the one model: camera NAME subscribes to NAME/image (NAME/camera_info, NAME/depth) "
        "and publishes NAME/segmentation/...; '' = the node's own image and segmentation/... topics (one camera). "
        "The vocabulary, its service and class map (segmentation/label_info) are shared.",
        configure_time=True,
    ),
    ParameterSpec(
        "max_batch",
        8,
        "Frames of at most this many cameras go through the model in one pass (1 = one frame at a time).",
        min_value=1,
        max_value=64,
    ),
    ParameterSpec(
        "batch_wait_ms",
        10.0,
        "A model pass waits at most this long for a camera whose frame is being decoded; never for a camera with no frame.",
        min_value=0.0,
        max_value=1000.0,
    ),
    ParameterSpec("input_transport", "raw", "Subscribe to image (raw) or image/compressed (jpeg/png).", configure_time=True, choices=("raw", "compressed")),
    ParameterSpec(
        "use_camera_info",
        False,
        "Subscribe to camera_info and republish, as segmentation/camera_info, the one with each processed frame's stamp; "
        "frames without one are not processed (counted as frames_unsynchronized).",
        configure_time=True,
    ),
    ParameterSpec(
        "camera_info_sync_slop_s",
        0.0,
        "With use_camera_info: a camera_info pairs with a frame whose stamp is less than this apart (s); 0 = equal stamps only. "
        "With use_depth, depth_sync_slop_s applies instead.",
        configure_time=True,
        min_value=0.0,
        max_value=1.0,
    ),
    ParameterSpec(
        "use_depth",
        False,
        "Subscribe to depth (16UC1 mm or 32FC1 m, registered to the colour camera) and camera_info, paired with each frame by "
        "stamp, and publish segmentation/points and the per-class 3D summary in segmentation/info; frames without both are "
        "not processed (counted as frames_unsynchronized).",
        configure_time=True,
    ),
    ParameterSpec(
        "depth_sync_slop_s",
        0.02,
        "With use_depth: a depth image and a camera_info pair with a frame whose stamp is less than this apart (s); "
        "0 = equal stamps only.",
        configure_time=True,
        min_value=0.0,
        max_value=1.0,
    ),
    ParameterSpec("points_stride", 2, "With use_depth: one point per points_stride pixels in each points_stride-th row.", min_value=1, max_value=64),
    ParameterSpec("points_min_score", 0.0, "With use_depth: pixels whose best class score is below this give no point.", min_value=0.0, max_value=1000.0),
    # Objects: segments (connected regions per class) with 2D / 3D boxes and track ids.
    ParameterSpec(
        "segments_min_area_px",
        50,
        "Segments (segmentation/detections, detections_3d, instances) of fewer pixels are dropped.",
        min_value=1,
        max_value=100000000,
    ),
    ParameterSpec(
        "segments_stuff_classes",
        ["floor", "wall", "ceiling", "sky", "road", "grass"],
        "Classes that are surfaces, not objects: one segment per class however many pieces it is in (a class matches by its name "
        "or any of its synonyms, case ignored).",
    ),
    ParameterSpec(
        "points_organized",
        False,
        "With use_depth: publish segmentation/points pixel-aligned with the image (height x width, stride 1, NaN where there is "
        "no point, is_dense false), as image-space consumers (the Nav2 semantic segmentation layer) expect; false: only the valid "
        "points of every points_stride-th pixel, unordered.",
    ),
    ParameterSpec("max_rate_hz", 0.0, "Run the model at most this many times per second, each pass taking at most one frame per camera (0 = as fast as the model goes).", min_value=0.0, max_value=1000.0),
    # Outputs. Overlay and mask images are only computed while someone subscribes.
    ParameterSpec("publish_color", True, "Publish segmentation/color (rgb8 class colours)."),
    ParameterSpec("publish_overlay", True, "Publish segmentation/overlay (class colours blended over the image)."),
    ParameterSpec("publish_confidence", True, "Publish segmentation/confidence (mono8, winning score x 255, clipped)."),
    ParameterSpec("publish_masks", True, "Publish segmentation/masks/<class> (mono8, 255 = class)."),
    ParameterSpec("overlay_alpha", 0.5, "Opacity of the class colours in the overlay.", min_value=0.0, max_value=1.0),
    ParameterSpec("palette", "name", "Class colours: name (stable per class name) or index (by class id).", configure_time=True, choices=("name", "index")),
    # Lifecycle.
    ParameterSpec("autostart", True, "Configure and activate at start-up (false: wait for lifecycle transitions).", configure_time=True),
)

PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}

PARAMS_FILE_HEADER = """\
# Parameters of the ovseg node (ros2 launch ovseg_ros segment.launch.py params_file:=...).
# Generated from ovseg_ros/ros/parameters.py (python -m ovseg_ros.ros.parameters > config/segment.yaml).
# Every parameter the node declares is listed with its default. Configure-time ones take
# effect when the node is configured (start-up, or lifecycle cleanup + configure) and can be
# set only while it is unconfigured; the others at once (`ros2 param set`).
# `ros2 param describe /ovseg <name>` prints the same descriptions.
/**:
  ros__parameters:
"""


def documentation(spec: ParameterSpec) -> str:
    """A parameter's description with its choices, when it is read and its range."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    if spec.configure_time:
        text += " Configure-time."
    if spec.min_value is not None:
        text += f" Range {spec.min_value:g}..{spec.max_value:g}."
    return text


def params_file_text() -> str:
    """``config/segment.yaml``: every parameter with its default, its documentation as a comment."""
    lines = [PARAMS_FILE_HEADER.rstrip("\n")]
    for spec in PARAMETERS:
        lines += textwrap.wrap(documentation(spec), width=96, initial_indent="    # ", subsequent_indent="    # ", break_on_hyphens=False)
        value = yaml.safe_dump([spec.default], default_flow_style=True, width=1000).strip()[1:-1]  # flow style, quoted where YAML needs it
        lines.append(f"    {spec.name}: {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(params_file_text())
