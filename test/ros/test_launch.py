"""segment.launch.py's parts, without starting anything (test_ros2_launch.py runs it).

The launch file must use only things that exist: the installed executable, the installed
parameters file, parameter names the node declares and the launch_config helpers, which
the node tests use to start the node with exactly the launch file's command line.
"""

import ast
from pathlib import Path

import pytest
import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory

from ovseg_ros.ros import launch_config
from ovseg_ros.ros.parameters import PARAMETERS_BY_NAME

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"


def launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text())


def node_call(tree: ast.Module) -> ast.Call:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]
    ours = [c for c in calls if any(kw.arg == "package" and ast.unparse(kw.value) == "PACKAGE" for kw in c.keywords)]
    assert len(ours) == 1, "the launch file starts our node exactly once"
    return ours[0]


def test_launch_file_builds_its_node_from_launch_config():
    tree = launch_tree()
    imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "ovseg_ros.ros.launch_config" for alias in n.names}
    keywords = {kw.arg: kw.value for kw in node_call(tree).keywords}
    assert ast.unparse(keywords["package"]) == "PACKAGE" and ast.unparse(keywords["executable"]) == "EXECUTABLE"
    assert ast.unparse(keywords["name"]) == "NODE_NAME"
    assert ast.unparse(keywords["parameters"]).startswith("node_parameters(")
    assert ast.unparse(keywords["remappings"]).startswith("node_remappings(")
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {"PACKAGE", "EXECUTABLE", "NODE_NAME", "LAUNCH_ARGUMENTS", "node_parameters", "node_remappings", "bag_play_command", "rviz_arguments", "check_tools_installed"} <= imported & used
    assert all(hasattr(launch_config, name) for name in imported)


def test_launch_arguments_are_the_documented_ones():
    assert set(launch_config.LAUNCH_ARGUMENTS) == {
        "namespace", "image_topic", "image_topics", "cameras", "params_file", "model", "weights", "device", "use_sim_time", "rviz", "bag"
    }
    for name in launch_config.PARAMETER_ARGUMENTS:
        assert name in PARAMETERS_BY_NAME, f"launch argument {name} sets an undeclared parameter"


def test_executable_and_parameters_file_are_installed():
    executable = Path(get_package_prefix(launch_config.PACKAGE)) / "lib" / launch_config.PACKAGE / launch_config.EXECUTABLE
    assert executable.is_file() and executable.stat().st_mode & 0o111
    share = Path(get_package_share_directory(launch_config.PACKAGE))
    assert (share / launch_config.PARAMS_FILE).is_file() and (share / launch_config.RVIZ_CONFIG).is_file()
    assert (share / "launch" / LAUNCH_FILE.name).is_file()


def test_parameters_file_documents_exactly_the_declared_parameters():
    params = yaml.safe_load((REPO / launch_config.PARAMS_FILE).read_text())["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS_BY_NAME)
    for name, value in params.items():
        assert value == PARAMETERS_BY_NAME[name].default, f"{name}: file says {value!r}, node declares {PARAMETERS_BY_NAME[name].default!r}"
    text = (REPO / launch_config.PARAMS_FILE).read_text()
    for name in params:
        line = text.index(f"    {name}:")
        assert text[:line].rstrip().splitlines()[-1].lstrip().startswith("#"), f"{name} has no comment above it"


def test_node_command_matches_launch_ros_conventions(tmp_path):
    share = Path("/share/ovseg_ros")
    argv = launch_config.node_command(Path("/lib/ovseg_ros/ovseg_node"), {"namespace": "robot1/", "image_topic": "/cam/image", "model": "san_vit_b_16", "use_sim_time": "true"}, share)
    assert argv[:4] == ["/lib/ovseg_ros/ovseg_node", "--ros-args", "-r", "__node:=ovseg"]
    assert ["-r", "__ns:=/robot1"] == argv[4:6]
    assert argv[argv.index("--params-file") + 1] == str(share / "config" / "segment.yaml")
    assert "model:=san_vit_b_16" in argv and "use_sim_time:=true" in argv
    assert "weights:=" not in " ".join(argv), "unset launch arguments keep the params file's value"
    assert argv[-6:] == ["-r", "image:=/cam/image", "-r", "image/compressed:=/cam/image/compressed", "-r", "camera_info:=/cam/camera_info"]


def test_bag_argument_plays_with_clock_and_puts_the_node_on_sim_time():
    values = {"bag": "/data/run1"}
    # ros2bag takes a value after --clock as its rate: the bag path goes first
    assert launch_config.bag_play_command(values) == ["ros2", "bag", "play", "/data/run1", "--clock"]
    assert launch_config.node_parameters(values, Path("/share"))[1]["use_sim_time"] is True
    assert launch_config.node_parameters({**values, "use_sim_time": "false"}, Path("/share"))[1]["use_sim_time"] is True
    assert launch_config.bag_play_command({}) is None


def test_use_sim_time_is_a_node_parameter_only_when_given():
    """Unset, it is left to the params file or an including launch file's SetParameter."""
    share = Path("/share")
    assert launch_config.LAUNCH_ARGUMENTS["use_sim_time"][0] == ""
    assert "use_sim_time" not in launch_config.node_parameters({"use_sim_time": ""}, share)[1]
    assert "use_sim_time" not in " ".join(launch_config.node_command(Path("/lib/ovseg_node"), {}, share))
    assert launch_config.node_parameters({"use_sim_time": "false"}, share)[1]["use_sim_time"] is False
    assert launch_config.node_parameters({"use_sim_time": "true"}, share)[1]["use_sim_time"] is True


def test_rviz_argument_opens_the_shipped_layout():
    share = Path(get_package_share_directory(launch_config.PACKAGE))
    arguments = launch_config.rviz_arguments({"rviz": "true"}, share)
    assert arguments[0] == "-d" and Path(arguments[1]).is_file()
    layout = yaml.safe_load(Path(arguments[1]).read_text())
    topics = [d["Topic"]["Value"] for d in layout["Visualization Manager"]["Displays"]]
    assert topics == [launch_config.LAUNCH_ARGUMENTS["image_topic"][0], "segmentation/overlay", "segmentation/color"]
    assert launch_config.rviz_arguments({}, share) is None


def test_image_topics_make_one_camera_each_named_by_its_namespace():
    share = Path("/share")
    values = {"image_topics": "[/front/image_raw, /robot/left/image_raw]", "image_topic": "/ignored/image"}
    argv = launch_config.node_command(Path("/lib/ovseg_node"), values, share)
    assert 'cameras:=["front", "robot/left"]' in argv
    remaps = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-r"][1:]
    assert remaps == [
        "front/image:=/front/image_raw", "front/image/compressed:=/front/image_raw/compressed", "front/camera_info:=/front/camera_info",
        "robot/left/image:=/robot/left/image_raw", "robot/left/image/compressed:=/robot/left/image_raw/compressed",
        "robot/left/camera_info:=/robot/left/camera_info",
    ]
    named = launch_config.node_parameters({"image_topics": "/a/image, /b/image", "cameras": "[left, right]"}, share)[1]
    assert named["cameras"] == ["left", "right"]
    assert launch_config.node_remappings({"image_topics": "/a/image, /b/image", "cameras": "left,right"})[3] == ("right/image", "/b/image")


def test_cameras_without_image_topics_subscribe_under_their_names():
    assert launch_config.node_parameters({"cameras": "[front, rear]"}, Path("/share"))[1]["cameras"] == ["front", "rear"]
    assert launch_config.node_remappings({"cameras": "[front, rear]"}) == []
    assert "cameras" not in launch_config.node_parameters({}, Path("/share"))[1], "unset: the params file's one camera"


def test_camera_arguments_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="2 cameras but image_topics has 3"):
        launch_config.camera_topics({"cameras": "[a, b]", "image_topics": "[/a/image, /b/image, /c/image]"})
    with pytest.raises(ValueError, match="no namespace"):
        launch_config.camera_topics({"image_topics": "[/image_raw, /b/image]"})
    for values in ({"cameras": "[front, front]"}, {"cameras": "[cam, cam]", "image_topics": "[/a/image, /b/image]"}, {"image_topics": "[/a/image, /a/image]"}):
        with pytest.raises(ValueError, match="twice"):
            launch_config.camera_topics(values)
    with pytest.raises(ValueError, match="'2cam'"):
        launch_config.camera_topics({"cameras": "[2cam]"})


def test_params_file_is_generated_from_the_declarations():
    """config/segment.yaml documents every parameter with its declared description, choices,
    range and default: generated (python -m ovseg_ros.ros.parameters), never hand-copied."""
    from ovseg_ros.ros.parameters import params_file_text

    assert (REPO / launch_config.PARAMS_FILE).read_text() == params_file_text(), "run: python -m ovseg_ros.ros.parameters > config/segment.yaml"
