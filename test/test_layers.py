"""The layout's layers hold: a frame walks down models <- engine <- ros <- commands, never up,
and nothing in the engine or the models touches ROS."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ovseg_ros"
#: Modules (and their sub-modules) each layer must not import.
ROS = ("rclpy", "rosidl", "rosbags", "message_filters", "diagnostic_updater", "image_geometry", "launch", "launch_ros", "ament_index_python", "ovseg_ros.msg", "ovseg_ros.srv")
FORBIDDEN = {
    "models": ROS + ("ovseg_ros.engine", "ovseg_ros.ros", "ovseg_ros.commands", "ovseg_dev"),
    "engine": ROS + ("ovseg_ros.ros", "ovseg_ros.commands", "ovseg_dev"),
    "ros": ("ovseg_ros.commands", "ovseg_dev"),
    "commands": ("ovseg_dev",),
}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_no_import_climbs_a_layer_or_reaches_ros_from_below(layer):
    offences = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imported_modules(path):
            bad = [prefix for prefix in FORBIDDEN[layer] if module == prefix or module.startswith(prefix + ".")]
            if layer in ("models", "engine") and module.split(".")[0].endswith(("_msgs", "_srvs", "_interfaces")):
                bad.append("a ROS message package")
            if bad:
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports {module} ({bad[0]})")
    assert offences == []


def test_the_engine_and_models_import_with_ros_absent():
    """Every engine and model module imports in an interpreter where ROS cannot be imported at all."""
    modules = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for layer in ("models", "engine")
        for path in (PACKAGE / layer).rglob("*.py")
        if path.name != "__init__.py"
    )
    blocked = ", ".join(repr(name) for name in ("rclpy", "rosbags", "sensor_msgs", "std_msgs", "message_filters", "image_geometry"))
    code = f"import sys\nfor name in ({blocked},):\n    sys.modules[name] = None\n" + "".join(f"import {module}\n" for module in modules) + "print('ok')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
