"""package.xml is valid and declares what the package imports, so that `rosdep install` on a
ROS 2 install brings it (the keys themselves were checked against rosdistro for Jazzy and
Kilted; package.xml says so)."""

import ast
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]
#: Python modules -> their rosdep key (the ROS packages' modules are their keys).
MODULE_KEYS = {
    "numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "torch": "python3-pytorch-pip", "huggingface_hub": "python3-huggingface-hub-pip", "rosbags": "python3-rosbags-pip",
}  # fmt: skip
#: Modules without a rosdep key: README's ROS 2 install section has them pip-installed (PyPI names).
PIP_ONLY = {"open_clip": "open_clip_torch", "safetensors": "safetensors"}


def imported_modules() -> set[str]:
    """Top-level modules that the installed package (ovseg_ros, the launch file, the node's script) imports."""
    files = [*(REPO / "ovseg_ros").rglob("*.py"), *(REPO / "launch").glob("*.py"), REPO / "scripts" / "ovseg_node"]
    modules = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"ovseg_ros", "__future__"}


def test_package_xml_is_valid_and_declares_every_import():
    package = parse_package(REPO / "package.xml")
    package.validate()
    declared = {dependency.name for dependency in package.build_depends + package.buildtool_depends + package.exec_depends}
    modules = imported_modules()
    assert "rclpy" in modules and "torch" in modules, "the import scan found the package's imports"
    undeclared = {module for module in modules - PIP_ONLY.keys() if MODULE_KEYS.get(module, module) not in declared}
    assert not undeclared, f"imported but not in package.xml (a rosdep key, or PIP_ONLY and README): {sorted(undeclared)}"
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## On a ROS 2 install"):]
    assert all(name in section.split("\n## ", 1)[0] for name in PIP_ONLY.values()), "README's ROS 2 install section pip-installs the modules without a key"
