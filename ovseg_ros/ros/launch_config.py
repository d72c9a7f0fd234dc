"""How ``segment.launch.py`` starts the node, as plain data and functions.

The launch file builds its ``launch_ros.actions.Node`` from these, and the demo and the
tests start the node from :func:`node_command`, the command line launch_ros runs for that
Node. One definition, so what we test is what ``ros2 launch`` starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_prefix

from ovseg_ros.ros.topic_names import camera_prefixes

PACKAGE = "ovseg_ros"
EXECUTABLE = "ovseg_node"
NODE_NAME = "ovseg"
PARAMS_FILE = "config/segment.yaml"  # relative to the package's share directory
RVIZ_CONFIG = "config/segment.rviz"

#: launch argument -> (default, description). "" means: keep the params file's value.
LAUNCH_ARGUMENTS = {
    "namespace": ("", "Namespace of the node and its topics."),
    "image_topic": ("/camera/image_raw", "Camera image topic, remapped to the node's 'image' (one camera; see image_topics)."),
    "image_topics": (
        "",
        "Several cameras, one model: a list of image topics, e.g. '[/front/image_raw, /rear/image_raw]'; each is one camera, "
        "named by its namespace (front, rear) unless 'cameras' names them, its camera_info beside it.",
    ),
    "cameras": ("", "Camera names (the cameras parameter), e.g. '[front, rear]': each subscribes to <name>/image unless image_topics remaps it."),
    "params_file": ("", "Parameters file (default: the package's config/segment.yaml)."),
    "model": ("", "Model name, overrides the params file (e.g. sed_convnext_base, san_vit_b_16)."),
    "weights": ("", "Checkpoint path, or auto (download the authors' release when the weights folder has none); overrides the params file."),
    "device": ("", "Torch device (auto, cpu, cuda, cuda:N), overrides the params file."),
    "use_sim_time": ("", "true: run on /clock; false: wall time; unset: as the params file or an including launch file's SetParameter say (true when 'bag' is given)."),
    "rviz": ("false", "Start rviz2 with config/segment.rviz (camera image, overlay, labels; needs rviz2)."),
    "bag": ("", "A rosbag2 to play with --clock into the node, which then runs on sim time (needs rosbag2)."),
}

#: Launch arguments that become node parameters of the same name when set.
PARAMETER_ARGUMENTS = ("model", "weights", "device")


def camera_topics(values: dict[str, str]) -> dict[str, str] | None:
    """Camera name -> its image topic (None: no remapping) from the ``cameras`` and
    ``image_topics`` arguments; None when neither is given (one camera: ``image_topic``).
    Raises ValueError when they do not match, a topic has no namespace to name its camera, or
    a name repeats or is not a relative topic name."""
    names, topics = _list(values.get("cameras", "")), _list(values.get("image_topics", ""))
    if not names and not topics:
        return None
    if not topics:
        camera_prefixes(names)
        return dict.fromkeys(names)
    if names and len(names) != len(topics):
        raise ValueError(f"cameras names {len(names)} cameras but image_topics has {len(topics)} topics")
    if not names:
        names = [topic.rpartition("/")[0].strip("/") for topic in topics]
        if not all(names):
            raise ValueError(f"image_topics: {', '.join(t for t, n in zip(topics, names) if not n)} has no namespace to name its camera: give cameras:=[...]")
    camera_prefixes(names)  # the node's own check, before anything starts: repeated or invalid names
    return dict(zip(names, topics))


def node_parameters(values: dict[str, str], share_dir: Path) -> list:
    """launch_ros ``parameters=``: the params file, then the overrides given as launch arguments."""
    params_file = values.get("params_file") or str(share_dir / PARAMS_FILE)
    overrides = {name: values[name] for name in PARAMETER_ARGUMENTS if values.get(name)}
    cameras = camera_topics(values)
    if cameras is not None:
        overrides["cameras"] = list(cameras)
    # Only when given (or with a bag): written here, it would override an including launch
    # file's SetParameter(use_sim_time=True).
    if values.get("bag"):
        overrides["use_sim_time"] = True
    elif values.get("use_sim_time"):
        overrides["use_sim_time"] = _true(values["use_sim_time"])
    return [params_file, overrides]


def node_remappings(values: dict[str, str]) -> list[tuple[str, str]]:
    """launch_ros ``remappings=``: each camera's image topic, its compressed sibling and
    camera_info beside it, as image_transport names them (``/cam/image_raw`` -> ``/cam/camera_info``)."""
    cameras = camera_topics(values)
    if cameras is None:
        return _camera_remappings("", values.get("image_topic") or LAUNCH_ARGUMENTS["image_topic"][0])
    return [remap for name, image in cameras.items() if image for remap in _camera_remappings(f"{name}/", image)]


def _camera_remappings(prefix: str, image: str) -> list[tuple[str, str]]:
    namespace, _, _ = image.rpartition("/")
    camera_info = f"{namespace}/camera_info" if namespace else "camera_info"
    return [(f"{prefix}image", image), (f"{prefix}image/compressed", f"{image}/compressed"), (f"{prefix}camera_info", camera_info)]


def bag_play_command(values: dict[str, str]) -> list[str] | None:
    """``ros2 bag play`` of the ``bag`` argument, publishing /clock for the node's sim time."""
    # The bag first: ros2bag reads an optional value after --clock (its rate in Hz).
    return ["ros2", "bag", "play", values["bag"], "--clock"] if values.get("bag") else None


def rviz_arguments(values: dict[str, str], share_dir: Path) -> list[str] | None:
    """rviz2's arguments when the ``rviz`` argument is true, else None."""
    return ["-d", str(share_dir / RVIZ_CONFIG)] if _true(values.get("rviz", "false")) else None


def check_tools_installed(values: dict[str, str]) -> None:
    """Raise RuntimeError naming what ``rviz`` / ``bag`` need but is not installed, so that
    the launch fails before it starts anything (rather than leave the node running alone)."""
    needed = []  # (package, launch argument, apt package)
    if _true(values.get("rviz", "false")):
        needed.append(("rviz2", "rviz:=true", "ros-$ROS_DISTRO-rviz2"))
    if bag_play_command(values) is not None:
        needed.append(("ros2bag", f"bag:={values['bag']} (ros2 bag play)", "ros-$ROS_DISTRO-rosbag2"))
    missing = [f"{argument} needs the ROS 2 package {package}, which is not installed (apt install {apt})" for package, argument, apt in needed if not _installed(package)]
    if missing:
        raise RuntimeError("; ".join(missing))


def _installed(package: str) -> bool:
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _true(value: str) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def node_command(executable: Path, values: dict[str, str], share_dir: Path) -> list[str]:
    """The command line launch_ros runs for the launch file's Node with these argument values."""
    argv = [str(executable), "--ros-args", "-r", f"__node:={NODE_NAME}"]
    if values.get("namespace"):
        argv += ["-r", f"__ns:=/{values['namespace'].strip('/')}"]
    for entry in node_parameters(values, share_dir):
        if isinstance(entry, dict):
            argv += [arg for name, value in entry.items() for arg in ("-p", f"{name}:={_yaml_value(value)}")]
        else:
            argv += ["--params-file", str(entry)]
    for source, target in node_remappings(values):
        argv += ["-r", f"{source}:={target}"]
    return argv


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)  # a YAML flow list of quoted strings: '' and names alike
    return str(value)


def _list(value: str) -> list[str]:
    """A launch argument's list: YAML (``[a, b]``) or comma-separated; [] when empty."""
    value = value.strip()
    if not value:
        return []
    items = yaml.safe_load(value) if value.startswith("[") else value.split(",")
    return [str(item).strip() for item in items]
