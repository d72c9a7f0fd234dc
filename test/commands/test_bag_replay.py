"""Bag in, bag out: the demo pipeline on a real rosbag2 file, read back with rosbags."""

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from ovseg_ros.commands.node_driver import package_share
from ovseg_ros.ros.bags import SAMPLE_TOPIC, synthetic_frame, typestore, write_sample_bag
from ovseg_ros.commands import demo

from node_settings import TEST_MODEL


def test_sample_bag_is_a_real_rosbag2(tmp_path):
    bag = write_sample_bag(tmp_path / "sample", frames=3, rate_hz=10.0, height=48, width=64)
    store = typestore()
    with Reader(bag) as reader:
        assert reader.duration == int(0.2e9) + 1 and reader.message_count == 3
        (connection,) = reader.connections
        assert (connection.topic, connection.msgtype) == (SAMPLE_TOPIC, "sensor_msgs/msg/Image")
        messages = [store.deserialize_cdr(data, connection.msgtype) for _, _, data in reader.messages()]
    assert messages[2].encoding == "rgb8" and (messages[2].height, messages[2].width) == (48, 64)
    assert np.array_equal(messages[2].data.reshape(48, 64, 3), synthetic_frame(2, 48, 64))
    assert not np.array_equal(messages[0].data, messages[2].data), "objects move between frames"


@pytest.mark.usefixtures("ros2_tools")  # the node imports message_filters, vision_msgs, diagnostic_updater
def test_demo_replays_a_bag_through_the_node_and_records_its_outputs(tmp_path, capsys):
    bag = write_sample_bag(tmp_path / "in", frames=6, rate_hz=2.0, height=120, width=160)
    out = tmp_path / "out"
    assert demo.main(["--bag", str(bag), "--out", str(out), "--model", TEST_MODEL]) == 0
    summary = capsys.readouterr().out
    assert "frames in 6" in summary and "RANDOM weights" in summary

    store = typestore(package_share() / "msg")
    with Reader(out / "output_bag") as reader:
        topics = {c.topic: c for c in reader.connections}
        assert set(topics) == {"/segmentation/label", "/segmentation/color", "/segmentation/info"}
        infos = [store.deserialize_cdr(d, "ovseg_ros/msg/SegmentationInfo") for _, _, d in reader.messages([topics["/segmentation/info"]])]
        labels = [store.deserialize_cdr(d, "sensor_msgs/msg/Image") for _, _, d in reader.messages([topics["/segmentation/label"]])]
    with Reader(bag) as reader:
        input_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in (store.deserialize_cdr(d, c.msgtype) for c, _, d in reader.messages())}
    assert infos and len(infos) == len(labels) <= 6
    assert {(i.header.stamp.sec, i.header.stamp.nanosec) for i in infos} <= input_stamps
    assert all(i.header.frame_id == "camera_optical_frame" and i.model == TEST_MODEL for i in infos)
    assert f"frames out {len(infos)}" in summary
    assert list(out.glob("overlay_*.png"))
    # Then every frame, offline: not only those the node kept up with.
    assert f"offline: 6/6 frames labeled into {out / 'labeled_bag'}" in summary
    with Reader(out / "labeled_bag") as reader:
        assert sum(c.msgcount for c in reader.connections if c.topic.endswith("/segmentation/label")) == 6
