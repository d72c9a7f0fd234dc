"""The node's side of a vocabulary: the class map topics and each camera's per-class mask publishers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import Image
from vision_msgs.msg import LabelInfo, VisionClass

from ovseg_ros.engine.vocabulary import Vocabulary
from ovseg_ros.msg import ClassMap
from ovseg_ros.ros.cameras import CameraIO
from ovseg_ros.ros.conversions import class_map_msg
from ovseg_ros.ros.publishers import LATCHED_QOS, output_publisher
from ovseg_ros.ros.topic_names import mask_topic_names

# A new mask subscriber gets its masks within this (discovery itself takes longer).
MASK_SUBSCRIBERS_REFRESH_S = 0.5


@dataclass
class CameraMasks:
    """A camera's per-class mask publishers of one vocabulary."""

    publishers: dict[str, object] = field(default_factory=dict)  # topic token -> publisher
    # Class ids whose mask topic has a subscriber, looked up at most every
    # MASK_SUBSCRIBERS_REFRESH_S (that camera's frame callbacks only): not one lookup per class per frame.
    subscribed: tuple[int, ...] = ()
    checked_at: float = -float("inf")  # time.monotonic()

    def subscribed_ids(self, topics: list[str]) -> tuple[int, ...]:
        """The class ids whose mask topic has a subscriber (looked up again at most every
        MASK_SUBSCRIBERS_REFRESH_S)."""
        now = time.monotonic()
        if now - self.checked_at >= MASK_SUBSCRIBERS_REFRESH_S:
            self.subscribed = tuple(i for i, topic in enumerate(topics) if self.publishers[topic].get_subscription_count() > 0)
            self.checked_at = now
        return self.subscribed


@dataclass
class ClassState:
    """A vocabulary with the node's side of it (mask topics, each camera's mask publishers),
    swapped in as one unit."""

    vocabulary: Vocabulary
    mask_topics: list[str]
    masks: dict[str, CameraMasks]  # camera name -> its mask publishers

    def all_mask_publishers(self) -> list:
        return [publisher for camera in self.masks.values() for publisher in camera.publishers.values()]


class ClassMapTopics:
    """``segmentation/label_info`` (ovseg_ros/ClassMap) and ``segmentation/vision_label_info``
    (vision_msgs/LabelInfo): one for all cameras, latched."""

    def __init__(self, node: LifecycleNode) -> None:
        self._node = node
        self.class_map_pub = output_publisher(node, ClassMap, "segmentation/label_info", LATCHED_QOS)
        self.label_info_pub = output_publisher(node, LabelInfo, "segmentation/vision_label_info", LATCHED_QOS)

    def publish(self, vocabulary: Vocabulary, min_score: float) -> None:
        stamp = self._node.get_clock().now().to_msg()
        self.class_map_pub.publish(class_map_msg(vocabulary, stamp))
        self.publish_label_info(vocabulary, min_score)

    def publish_label_info(self, vocabulary: Vocabulary, min_score: float) -> None:
        """vision_msgs' LabelInfo of ``vocabulary``, its threshold ``min_score``."""
        label_info = LabelInfo(threshold=float(min_score))
        label_info.header.stamp = self._node.get_clock().now().to_msg()
        label_info.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(vocabulary.names)]
        self.label_info_pub.publish(label_info)

    def destroy(self) -> None:
        for publisher in (self.class_map_pub, self.label_info_pub):
            self._node.destroy_lifecycle_publisher(publisher)


def class_state(node: LifecycleNode, vocabulary: Vocabulary, cameras: dict[str, CameraIO], previous: ClassState | None, active: bool) -> ClassState:
    """``vocabulary``'s class state: each camera's mask publishers, those of ``previous`` kept
    for topics that remain and the others destroyed (called with the node's output lock held)."""
    topics = mask_topic_names(list(vocabulary.names))
    masks = {}
    for camera in cameras.values():
        # A copy: frame callbacks read the current state's publishers without the lock.
        old = dict(previous.masks[camera.name].publishers) if previous else {}
        masks[camera.name] = CameraMasks(
            {topic: old.pop(topic, None) or output_publisher(node, Image, f"{camera.prefix}segmentation/masks/{topic}", active=active) for topic in topics}
        )
        for stale in old.values():
            node.destroy_lifecycle_publisher(stale)
    return ClassState(vocabulary, topics, masks)
