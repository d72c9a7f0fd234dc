"""Every ROS command the README shows, run as written, and its effect checked.

The README's commands name the node /ovseg (no namespace), so the node is launched without
one; this test run's own ROS_DOMAIN_ID (conftest.py) keeps it apart from other runs.
"""

import re
import shlex
import time
from pathlib import Path

import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.launch_config import LAUNCH_ARGUMENTS, bag_play_command
from ovseg_ros.msg import ClassMap, SegmentationInfo

from node_settings import TEST_LAUNCH_ARGUMENTS, NODE_READY_TIMEOUT_S, answer_timeout
from ros2_cli import LaunchProcess, in_graph, param_get, ros2, shell, show_args, stop_daemon, subscriptions_of, wait_until_active
from node_settings import THREE_CAMERA_LAUNCH

pytestmark = pytest.mark.usefixtures("ros2_tools")

README = Path(__file__).resolve().parents[2] / "README.md"
LAUNCH = "ros2 launch ovseg_ros segment.launch.py image_topic:=/camera/color/image_raw"
SHOW_ARGS = "ros2 launch ovseg_ros segment.launch.py --show-args"
BAG_PLAY = "ros2 bag play <bag> --clock"
SET_VOCABULARY = 'ros2 service call /ovseg/set_vocabulary ovseg_ros/srv/SetVocabulary "{labels: [person, forklift, pallet], mode: 0}"  # 0 replace, 1 add, 2 remove'
PARAM_SET = "ros2 param set /ovseg vocabulary \"[person, 'sofa, couch']\""
#: What the README's launch line gets here: the small test model on the CPU (the default
#: model is far too slow for a test).
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def readme_ros2_commands() -> list[str]:
    """The ``ros2 ...`` lines of the README's shell blocks and its inline ``ros2 ...`` code."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("ros2 ")]
    return lines + [code for code in re.findall(r"`([^`\n]+)`", text) if code.startswith("ros2 ")]


def test_readme_shows_exactly_the_commands_tested_here():
    assert sorted(readme_ros2_commands()) == sorted([LAUNCH, SHOW_ARGS, BAG_PLAY, SET_VOCABULARY, PARAM_SET, THREE_CAMERA_LAUNCH])


def test_show_args_command():
    result = shell(SHOW_ARGS)
    assert result.returncode == 0, result.stderr
    assert set(show_args(result.stdout)) == set(LAUNCH_ARGUMENTS)


def test_bag_play_command_is_the_one_the_bag_argument_runs():
    assert " ".join(bag_play_command({"bag": "<bag>"})) == BAG_PLAY


@pytest.fixture(scope="module")
def peer(ros2_tools):
    peer = Peer("readme_test_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def launched(peer, tmp_path_factory):
    """The README's launch line, with a ros2 daemon running as in a user's shell."""
    launch = LaunchProcess(shlex.split(LAUNCH) + TEST_LAUNCH_ARGUMENTS, tmp_path_factory.mktemp("readme") / "launch.log")
    try:
        wait_until_active(peer, launch, "/ovseg", NODE_READY_TIMEOUT_S)
        ros2("daemon", "start")
        # the commands below ask the daemon, which needs a moment to discover the node
        deadline = time.monotonic() + 30.0
        while "/ovseg" not in ros2("node", "list").stdout.split() and time.monotonic() < deadline:
            time.sleep(1.0)
        yield launch
    finally:
        stop_daemon()
        launch.check_stopped("ctrl-c")  # with launch's default SIGTERM / SIGKILL timeouts


@pytest.fixture(scope="module")
def class_maps(peer, launched):
    return peer.record("/segmentation/label_info", ClassMap, LATCHED)


def latest_class_names(peer: Peer, class_maps, expected: list[str]) -> list[str]:
    """The newest ClassMap's class names, once they are ``expected`` or the answer timeout passed."""
    def newest():
        decoded = class_maps.decoded(last=1)
        return list(decoded[0].class_names) if decoded else None

    peer.wait_for(lambda: newest() == expected, answer_timeout(), poll=0.1)
    return newest()


def test_launch_command_starts_the_node_on_that_image_topic(launched, peer):
    assert in_graph(peer, "ovseg", "/")
    assert "/camera/color/image_raw" in subscriptions_of(peer, "/", "/camera/color/image_raw")
    assert param_get("/ovseg", "use_sim_time") == "Boolean value is: False"
    infos = peer.record("/segmentation/info", SegmentationInfo)
    publisher = peer.node.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
    frame = Image(height=120, width=160, encoding="rgb8", step=160 * 3, data=message_bytes(synthetic_frame(3, 120, 160)))
    frame.header.stamp.sec, frame.header.frame_id = 3, "camera_color_optical_frame"
    deadline = time.monotonic() + answer_timeout()
    while time.monotonic() < deadline and not infos.messages:
        publisher.publish(frame)
        peer.wait_for(lambda: infos.messages, 2.0)
    assert infos.messages, f"no segmentation/info for a frame on /camera/color/image_raw:\n{launched.log_text()[-2000:]}"
    assert infos.decoded()[0].header.frame_id == "camera_color_optical_frame"


def test_set_vocabulary_service_call(launched, peer, class_maps):
    result = shell(SET_VOCABULARY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success=True" in result.stdout, result.stdout
    assert "class_names=['person', 'forklift', 'pallet']" in result.stdout, result.stdout
    assert latest_class_names(peer, class_maps, ["person", "forklift", "pallet"]) == ["person", "forklift", "pallet"]
    assert param_get("/ovseg", "vocabulary") == "String values are: ['person', 'forklift', 'pallet']"


def test_vocabulary_param_set(launched, peer, class_maps):
    result = shell(PARAM_SET)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "Set parameter successful", result.stdout + result.stderr
    assert latest_class_names(peer, class_maps, ["person", "sofa, couch"]) == ["person", "sofa, couch"]
    assert param_get("/ovseg", "vocabulary") == "String values are: ['person', 'sofa, couch']"
