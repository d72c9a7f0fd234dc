"""segment.launch.py under the real ``ros2 launch``: its arguments, their effect on the
running node, inclusion from a bringup, and failures that must leave nothing running.

Each launch is a process group of its own (ros2_cli.LaunchProcess); every test checks that
nothing of it outlives ``ros2 launch``.
"""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.launch_config import LAUNCH_ARGUMENTS
from ovseg_ros.msg import SegmentationInfo

from node_settings import NODE_READY_TIMEOUT_S, TEST_MODEL, answer_timeout
from ros2_cli import SIGTERM_TIMEOUT_ARG, LaunchProcess, in_graph, param_get, ros2, show_args, subscriptions_of, wait_until_active

pytestmark = pytest.mark.usefixtures("ros2_tools")

BRINGUP_LAUNCH = Path(__file__).parents[1] / "launch" / "bringup_include.launch.py"
# Unique per run: other runs on this machine start ovseg nodes too (in other domains).
NAMESPACE = f"launchtest{os.getpid()}"
BRINGUP_NAMESPACE = f"bringup{os.getpid()}"
SIM_TIME_S = 4242


def camera_frame(stamp_s: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.frame_id = stamp_s, "cam"
    msg.height, msg.width, msg.encoding, msg.step = 120, 160, "rgb8", 160 * 3
    msg.data = message_bytes(synthetic_frame(stamp_s, 120, 160))
    return msg


def test_show_args_lists_every_argument_with_its_description_and_default():
    result = ros2("launch", "ovseg_ros", "segment.launch.py", "--show-args")
    assert result.returncode == 0, result.stderr
    shown = show_args(result.stdout)
    assert shown == {name: (description, default) for name, (default, description) in LAUNCH_ARGUMENTS.items()}


@pytest.fixture(scope="module")
def peer(ros2_tools):
    peer = Peer("launch_test_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def launched(peer, tmp_path_factory):
    """segment.launch.py with every argument that reaches the node set."""
    launch = LaunchProcess(
        [
            "ros2", "launch", "ovseg_ros", "segment.launch.py", f"namespace:={NAMESPACE}", f"image_topic:=/{NAMESPACE}/cam/image_raw",
            f"model:={TEST_MODEL}", "device:=cpu", "use_sim_time:=true", SIGTERM_TIMEOUT_ARG,
        ],
        tmp_path_factory.mktemp("launch") / "launch.log",
    )
    try:
        wait_until_active(peer, launch, f"/{NAMESPACE}/ovseg", NODE_READY_TIMEOUT_S)
        yield launch
    finally:
        launch.check_stopped("sigint")


def test_namespace_and_image_topic_place_and_wire_the_node(launched, peer):
    assert in_graph(peer, "ovseg", f"/{NAMESPACE}")
    assert f"/{NAMESPACE}/cam/image_raw" in subscriptions_of(peer, f"/{NAMESPACE}", f"/{NAMESPACE}/cam/image_raw")
    # and a frame on that topic is segmented
    infos = peer.record(f"/{NAMESPACE}/segmentation/info", SegmentationInfo)
    publisher = peer.node.create_publisher(Image, f"/{NAMESPACE}/cam/image_raw", qos_profile_sensor_data)
    frame = camera_frame(7)
    deadline = time.monotonic() + answer_timeout()
    while time.monotonic() < deadline and not infos.messages:
        publisher.publish(frame)
        peer.wait_for(lambda: infos.messages, 2.0)
    assert [i.header.stamp.sec for i in infos.decoded()][:1] == [frame.header.stamp.sec], launched.log_text()[-2000:]


def test_model_device_and_use_sim_time_become_node_parameters(launched):
    names = ("model", "device", "use_sim_time")
    with ThreadPoolExecutor(len(names)) as pool:  # each ros2 param get spends seconds in discovery
        values = dict(zip(names, pool.map(lambda name: param_get(f"/{NAMESPACE}/ovseg", name), names)))
    assert values == {"model": f"String value is: {TEST_MODEL}", "device": "String value is: cpu", "use_sim_time": "Boolean value is: True"}


def test_use_sim_time_puts_the_node_on_clock(launched, peer):
    """The node's own clock follows /clock: its /diagnostics are stamped in sim time."""
    clock_publisher = peer.node.create_publisher(Clock, "/clock", 10)
    stamps = []
    peer.node.create_subscription(DiagnosticArray, "/diagnostics", lambda msg: stamps.append(msg.header.stamp.sec), QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

    def on_sim_time():
        return any(SIM_TIME_S <= stamp <= SIM_TIME_S + 100 for stamp in stamps)

    clock, start = Clock(), time.monotonic()
    while time.monotonic() - start < 30.0 and not on_sim_time():
        # sim time runs at wall speed from SIM_TIME_S (the node's timers need it to advance)
        clock.clock.sec, clock.clock.nanosec = divmod(int((SIM_TIME_S + time.monotonic() - start) * 1e9), 10**9)
        clock_publisher.publish(clock)
        peer.wait_for(on_sim_time, 0.1)
    assert on_sim_time(), f"diagnostics stamped {stamps[-10:]} s: not on /clock (from {SIM_TIME_S} s)"


@pytest.fixture(scope="module")
def bringup(peer, tmp_path_factory):
    """A bringup that includes segment.launch.py under PushRosNamespace + SetParameter(use_sim_time=True)."""
    launch = LaunchProcess(
        [
            "ros2", "launch", str(BRINGUP_LAUNCH), f"robot_namespace:={BRINGUP_NAMESPACE}", f"image_topic:=/{BRINGUP_NAMESPACE}/cam/image_raw",
            f"model:={TEST_MODEL}", "device:=cpu", SIGTERM_TIMEOUT_ARG,
        ],
        tmp_path_factory.mktemp("bringup") / "launch.log",
    )
    try:
        wait_until_active(peer, launch, f"/{BRINGUP_NAMESPACE}/ovseg", NODE_READY_TIMEOUT_S)
        yield launch
    finally:
        launch.check_stopped("sigint")


def test_included_under_a_pushed_namespace_with_sim_time_set_by_the_bringup(bringup, peer):
    assert in_graph(peer, "ovseg", f"/{BRINGUP_NAMESPACE}")
    assert f"/{BRINGUP_NAMESPACE}/cam/image_raw" in subscriptions_of(peer, f"/{BRINGUP_NAMESPACE}", f"/{BRINGUP_NAMESPACE}/cam/image_raw")
    # the launch file must not override the bringup's SetParameter(use_sim_time=True)
    assert param_get(f"/{BRINGUP_NAMESPACE}/ovseg", "use_sim_time") == "Boolean value is: True"


def failed_launch(tmp_path: Path, *arguments: str) -> tuple[int | None, str, list[str]]:
    """Run segment.launch.py with ``arguments`` that must make it fail: (exit code, None if
    it was still running after 60 s; its output; what was left running in its group)."""
    launch = LaunchProcess(["ros2", "launch", "ovseg_ros", "segment.launch.py", f"model:={TEST_MODEL}", "device:=cpu", *arguments], tmp_path / "launch.log")
    try:
        returncode = launch.wait(60.0)
    except subprocess.TimeoutExpired:
        returncode = None
    finally:
        _, left = launch.stop()
    return returncode, launch.log_text(), left


def test_rviz_without_rviz2_fails_before_starting_anything(tmp_path):
    if ros2("pkg", "prefix", "rviz2").returncode == 0:
        pytest.skip("rviz2 is installed here: rviz:=true would start it")
    returncode, output, left = failed_launch(tmp_path, "rviz:=true")
    assert returncode not in (None, 0), output
    assert "rviz:=true needs the ROS 2 package rviz2, which is not installed" in output
    assert "ovseg_node" not in output, "the node was started"
    assert not left, f"left running after ros2 launch ended: {left}"


def test_bag_without_rosbag2_fails_before_starting_anything(tmp_path):
    if ros2("pkg", "prefix", "ros2bag").returncode == 0:
        pytest.skip("ros2 bag is installed here: bag:=... would play")
    returncode, output, left = failed_launch(tmp_path, f"bag:={tmp_path / 'run1'}")
    assert returncode not in (None, 0), output
    assert f"bag:={tmp_path / 'run1'} (ros2 bag play) needs the ROS 2 package ros2bag, which is not installed" in output
    assert "ovseg_node" not in output, "the node was started"
    assert not left, f"left running after ros2 launch ended: {left}"
