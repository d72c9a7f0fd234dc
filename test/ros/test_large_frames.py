"""A 4K camera: its frames reach the node once the input is made reliable through
qos_overrides in a parameters file, as the README shows."""

import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.msg import SegmentationInfo

from node_settings import answer_timeout, resend_until
from node_settings import answered, raw_image, serving_node

pytestmark = pytest.mark.usefixtures("ros2_tools")

# The README's snippet: the fully resolved input topic (after namespace and remapping).
QOS_OVERRIDES_YAML = """\
/**:
  ros__parameters:
    qos_overrides:
      /big/image_raw:
        subscription:
          reliability: reliable
"""


def test_a_4k_frame_arrives_over_a_reliable_input_and_is_answered(tmp_path, peer):
    overrides = tmp_path / "qos.yaml"
    overrides.write_text(QOS_OVERRIDES_YAML)
    with serving_node(peer, tmp_path, "big", "--params-file", str(overrides)) as node:
        infos = peer.record("/big/segmentation/info", SegmentationInfo)
        labels = peer.record("/big/segmentation/label", Image)
        (endpoint,) = peer.node.get_subscriptions_info_by_topic("/big/image_raw")
        assert endpoint.qos_profile.reliability == ReliabilityPolicy.RELIABLE, "the override made the input reliable"
        images = peer.node.create_publisher(Image, "/big/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        assert peer.wait_for(lambda: images.get_subscription_count() > 0, 10.0)
        frame = raw_image(1, 2160, 3840)
        assert len(frame.data) == 3840 * 2160 * 3
        started = time.monotonic()
        assert resend_until(images, frame, lambda: answered(infos, 1), peer, answer_timeout()), node.log_text()[-2000:]
        answer_s = time.monotonic() - started
        assert peer.wait_for(lambda: answered(labels, 1), 10.0)
        (label,) = [m for m in labels.decoded() if m.header == frame.header]
        assert (label.height, label.width, label.encoding) == (2160, 3840, "mono8")
        assert np.frombuffer(bytes(label.data), np.uint8).size == 3840 * 2160
        print(f"4K frame answered {answer_s:.1f} s after it was sent")
