"""The node's cameras: each one's subscriptions (frames paired with camera_info and depth by
stamp), output publishers and counters, and the outputs its subscribers want of a frame."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from message_filters import ApproximateTimeSynchronizer, Subscriber, TimeSynchronizer
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from ovseg_ros.engine.frame_pipeline import OutputRequest
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.ros.conversions import stamp_ns
from ovseg_ros.ros.publishers import NO_SUBSCRIPTION_EVENTS, output_publisher

# Frames (and camera_infos, depth images) that wait for their partners, as in image_transport's CameraSubscriber.
CAMERA_INFO_SYNC_QUEUE = 10
LOG_THROTTLE_S = 5.0


@dataclass(frozen=True)
class InputSettings:
    """How every camera is subscribed (configure-time parameters)."""

    compressed: bool  # image/compressed instead of image
    use_camera_info: bool
    use_depth: bool
    slop_s: float  # depth_sync_slop_s with depth, else camera_info_sync_slop_s; 0: equal stamps

    @property
    def paired(self) -> bool:
        return self.use_camera_info or self.use_depth

    @property
    def partner_names(self) -> str:
        return "depth image and camera_info" if self.use_depth else "camera_info"


class UnpairedFrames:
    """Counts the frames the synchronizer gives up on (no camera_info, or depth, of their stamp).

    It mirrors the synchronizer's queue of frames waiting for their partners: a frame pushed
    out by ``queue_size`` newer ones (oldest stamp first) is unsynchronized. Called from the
    frames' callback group only.
    """

    def __init__(self, queue_size: int = CAMERA_INFO_SYNC_QUEUE) -> None:
        self._queue_size = queue_size
        self._waiting: dict[int, bool] = {}  # stamp (ns) -> arrived while active
        self.count = 0  # while active, like frames_received
        self.last_at = -float("inf")  # time.monotonic() of the last one

    def arrived(self, msg, active: bool) -> bool:
        """Note a frame; True when that pushed out one that arrived while active."""
        self._waiting[stamp_ns(msg.header)] = active
        if len(self._waiting) > self._queue_size and self._waiting.pop(min(self._waiting)):
            self.count += 1
            self.last_at = time.monotonic()
            return True
        return False

    def paired(self, msg) -> None:
        self._waiting.pop(stamp_ns(msg.header), None)

    def forget_waiting(self) -> None:
        """A new synchronizer starts with an empty queue."""
        self._waiting.clear()


@dataclass
class CameraIO:
    """One camera of the ``cameras`` parameter: its counters (over the node's life) and, for one
    configuration, its topics' publishers and subscriptions."""

    name: str
    prefix: str  # of its topics: "front/" (front/image, front/segmentation/label), "" for the node's own
    stats: FrameStats
    unpaired: UnpairedFrames
    image_topic: str = ""  # subscribed, fully resolved (namespace, remapping)
    label_pub: object = None
    color_pub: object = None
    overlay_pub: object = None
    confidence_pub: object = None
    info_pub: object = None
    camera_info_pub: object = None
    points_pub: object = None
    detections_pub: object = None
    detections_3d_pub: object = None
    detection_markers_pub: object = None
    instances_pub: object = None
    entities: list = field(default_factory=list)  # its publishers and subscriptions, destroyed on release

    @property
    def diagnostics_name(self) -> str:
        return f"camera {self.name}" if self.name else "camera"

    def create_publishers(self, node: LifecycleNode, inputs: InputSettings) -> None:
        out = f"{self.prefix}segmentation/"
        self.label_pub = self._publisher(node, Image, out + "label")
        self.color_pub = self._publisher(node, Image, out + "color")
        self.overlay_pub = self._publisher(node, Image, out + "overlay")
        self.confidence_pub = self._publisher(node, Image, out + "confidence")
        self.info_pub = self._publisher(node, SegmentationInfo, out + "info")
        self.camera_info_pub = self._publisher(node, CameraInfo, out + "camera_info") if inputs.paired else None
        self.points_pub = self._publisher(node, PointCloud2, out + "points") if inputs.use_depth else None
        self.detections_pub = self._publisher(node, Detection2DArray, out + "detections")
        self.instances_pub = self._publisher(node, Image, out + "instances")
        self.detections_3d_pub = self._publisher(node, Detection3DArray, out + "detections_3d") if inputs.use_depth else None
        self.detection_markers_pub = self._publisher(node, MarkerArray, out + "detection_markers") if inputs.use_depth else None

    def object_publishers(self) -> list:
        """The publishers of the frame's segments (detections, 3D, markers, instance ids) it has."""
        publishers = (self.detections_pub, self.detections_3d_pub, self.detection_markers_pub, self.instances_pub)
        return [publisher for publisher in publishers if publisher is not None]

    def _publisher(self, node: LifecycleNode, msg_type: type, topic: str):
        publisher = output_publisher(node, msg_type, topic)
        self.entities.append(publisher)
        return publisher

    def subscribe(self, node: LifecycleNode, inputs: InputSettings, on_frame: Callable, is_active: Callable[[], bool]) -> None:
        """The camera's image subscription, calling ``on_frame(camera, image, camera_info, depth)``;
        with camera_info (and depth) the frame comes with the partners of its own stamp, as
        image_transport's CameraSubscriber pairs them, never with whichever arrived last."""
        # Each camera's frames get a callback group of their own: no service or timer callback,
        # nor another camera's frames, delay them.
        options = {
            "qos_overriding_options": QoSOverridingOptions.with_default_policies(),
            "callback_group": MutuallyExclusiveCallbackGroup(),
            "event_callbacks": NO_SUBSCRIPTION_EVENTS,  # destroyed on cleanup while the executor spins
        }
        image_type, image_topic = (CompressedImage, "image/compressed") if inputs.compressed else (Image, "image")
        image_topic = self.prefix + image_topic
        self.image_topic = node.resolve_topic_name(image_topic)
        if not inputs.paired:
            self.entities.append(node.create_subscription(image_type, image_topic, partial(on_frame, self), qos_profile_sensor_data, **options))
            return
        images = Subscriber(node, image_type, image_topic, qos_profile=qos_profile_sensor_data, **options)
        partners = [Subscriber(node, CameraInfo, self.prefix + "camera_info", qos_profile=qos_profile_sensor_data, **options)]
        if inputs.use_depth:
            partners.append(Subscriber(node, Image, self.prefix + "depth", qos_profile=qos_profile_sensor_data, **options))
        logger = node.get_logger()
        slop_name = "depth_sync_slop_s" if inputs.use_depth else "camera_info_sync_slop_s"

        def arrived(msg) -> None:  # before the synchronizer, which may pair it at once
            if self.unpaired.arrived(msg, is_active()):
                logger.warning(
                    f"frame of {self.prefix}image not processed: no {inputs.partner_names} with its stamp ({slop_name}) arrived in time",
                    throttle_duration_sec=LOG_THROTTLE_S,
                )

        def paired(msg, camera_info: CameraInfo, depth: Image | None = None) -> None:
            self.unpaired.paired(msg)
            on_frame(self, msg, camera_info, depth)

        images.registerCallback(arrived)
        if inputs.slop_s > 0:
            synchronizer = ApproximateTimeSynchronizer([images, *partners], CAMERA_INFO_SYNC_QUEUE, inputs.slop_s)
        else:
            synchronizer = TimeSynchronizer([images, *partners], CAMERA_INFO_SYNC_QUEUE)
        synchronizer.registerCallback(paired)
        self.entities += [images.sub, *(partner.sub for partner in partners)]

    def destroy(self, node: LifecycleNode) -> None:
        for entity in self.entities:
            if hasattr(entity, "publish"):
                node.destroy_lifecycle_publisher(entity)
            else:
                node.destroy_subscription(entity)
        self.entities = []


@dataclass(frozen=True)
class OutputSettings:
    """Which optional outputs are enabled and how they are drawn (run-time parameters, read per frame)."""

    color: bool
    overlay: bool
    confidence: bool
    overlay_alpha: float
    points_stride: int
    points_min_score: float
    points_organized: bool


def output_request(camera: CameraIO, settings: OutputSettings, masks: tuple[int, ...], masks_version: int) -> OutputRequest:
    """The optional outputs of ``camera`` that are enabled and that someone subscribes to
    (``masks``: the class ids whose mask topic has a subscriber, of vocabulary ``masks_version``)."""
    def wanted(publisher, enabled: bool) -> bool:
        return enabled and publisher.get_subscription_count() > 0

    return OutputRequest(
        color=wanted(camera.color_pub, settings.color),
        overlay=wanted(camera.overlay_pub, settings.overlay),
        confidence=wanted(camera.confidence_pub, settings.confidence),
        masks=masks,
        masks_version=masks_version,
        overlay_alpha=settings.overlay_alpha,
        points=camera.points_pub is not None and camera.points_pub.get_subscription_count() > 0,
        points_stride=settings.points_stride,
        points_min_score=settings.points_min_score,
        points_organized=settings.points_organized,
        # Segments cost a few ms on the host: only while someone takes detections or instance ids.
        segments=any(publisher.get_subscription_count() > 0 for publisher in camera.object_publishers()),
        instances=camera.instances_pub.get_subscription_count() > 0,
    )
