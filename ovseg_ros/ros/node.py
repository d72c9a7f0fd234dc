"""The ``ovseg`` ROS 2 lifecycle node: camera images in, open-vocabulary segmentation out.

Topics (relative to the node's namespace; with the ``cameras`` parameter, each camera's in and
out topics are under its name: front/image, front/segmentation/label, ...):
    image (sensor_msgs/Image) or image/compressed   in, sensor-data QoS (QoS overrides allowed)
    camera_info (sensor_msgs/CameraInfo)            in, optional (use_camera_info, use_depth), paired to frames by stamp
    depth (sensor_msgs/Image)                       in, optional (use_depth): 16UC1 mm or 32FC1 m, registered to the image
    segmentation/label (sensor_msgs/Image)          mono8 (<= 254 classes, 255 = unlabeled) or mono16
    segmentation/color, segmentation/overlay        rgb8 class colours, and blended over the image
    segmentation/confidence (sensor_msgs/Image)     mono8, winning score x 255
    segmentation/masks/<class> (sensor_msgs/Image)  mono8 per class, follows the vocabulary
    segmentation/camera_info                        the frame's own camera_info, with the output header
    segmentation/points (sensor_msgs/PointCloud2)   use_depth: x, y, z, rgb, score, label per valid depth pixel
    segmentation/info (ovseg_ros/SegmentationInfo)  per frame: vocabulary version, fractions, latency
    segmentation/label_info (ovseg_ros/ClassMap)    class id -> name, transient local (one for all cameras)
    segmentation/vision_label_info (vision_msgs/LabelInfo)  the same for vision_msgs users
    /diagnostics (diagnostic_msgs/DiagnosticArray)  rates, drops, latency, device, errors (diagnostic_updater); per camera too
Services:
    ~/set_vocabulary (ovseg_ros/SetVocabulary)      replace / add / remove classes at runtime

The model loads on configure and frames are processed while active (``autostart`` does
both at start-up); outputs are lifecycle publishers, so nothing is published while
inactive, not even a frame that was in flight at deactivate. Configure-time parameters
(model, device...) can be set while unconfigured: cleanup, set, configure switches them.
Every output carries the input image's header unchanged. The node converts messages into
the ROS-free :class:`~ovseg_ros.engine.frame_pipeline.FramePipeline` and its outputs back into
messages; frames go through a :class:`~ovseg_ros.engine.frame_stream.FrameStream` (decode/upload,
model and publishing overlapped, latest-frame hand-offs), so the executor never waits for
the model and a slow model answers the newest frame rather than a backlog; one publishing
thread takes its results. Several cameras share the one model: frames waiting from several
of them go through it as one batch (``max_batch``), each camera with latest-frame semantics
and counters of its own, served in turn. Vocabulary changes are encoded on a worker of their own, one at a
time, never on an executor thread. Bad input is logged
(throttled), counted in diagnostics and skipped; the node keeps serving. SIGINT or SIGTERM
starts one orderly shutdown; more of them during it change nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from message_filters import ApproximateTimeSynchronizer, Subscriber, TimeSynchronizer
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from vision_msgs.msg import LabelInfo, VisionClass

from ovseg_ros.engine.frame_pipeline import FrameOutputs, FramePipeline, OutputRequest
from ovseg_ros.engine.frame_stream import INFERENCE_THREAD_NAME, FrameStream, FrameTicket, StreamResult
from ovseg_ros.engine.camera_slots import REFUSED
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.serial_worker import SerialWorker
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.ros.conversions import class_map_msg, depth_data, image_data, image_msg, info_msg, stamp_ns
from ovseg_ros.models.checkpoint import CheckpointError
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.ros.parameters import PARAMETERS, PARAMETERS_BY_NAME
from ovseg_ros.ros.conversions import point_cloud_msg
from ovseg_ros.engine.segmenter import Segmenter, build_segmenter, compile_mode_for_threads
from ovseg_ros.engine.smoothing import TemporalSmoother, smoothing_mode
from ovseg_ros.srv import SetVocabulary
from ovseg_ros.ros.topic_names import camera_prefixes, mask_topic_names
from ovseg_ros.engine.vocabulary import (
    Vocabulary,
    VocabularyError,
    VocabularyManager,
    edit_vocabulary,
    validate_class_names,
)

# Outputs are reliable (rviz and recorders default to reliable) with a short history:
# a late frame is worth less than the next one.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
# The class map is state: late subscribers get the current one.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOG_THROTTLE_S = 5.0
# Frames (and camera_infos, depth images) that wait for their partners, as in image_transport's CameraSubscriber.
CAMERA_INFO_SYNC_QUEUE = 10
DIAGNOSTICS_PERIOD_S = 1.0
# A new mask subscriber gets its masks within this (discovery itself takes longer).
MASK_SUBSCRIBERS_REFRESH_S = 0.5
PUBLISH_THREAD_NAME = "ovseg-publish"
# Publishers and subscriptions made and destroyed while the executor spins get no QoS event
# handlers: a handler destroyed while an executor thread builds its wait set raises
# InvalidHandle out of spin() (rclpy's executor skips such a handler on entering it, not on
# adding it), which a vocabulary change dropping thousands of mask topics provoked.
NO_PUBLISHER_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
NO_SUBSCRIPTION_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)
# Cleanup waits this long for the frame in flight; while the stream's threads are still alive
# after that, configure refuses (two streams would share the model).
WORKER_JOIN_TIMEOUT_S = 60.0
# At process shutdown a frame in flight is not worth outliving launch's SIGINT -> SIGTERM 5 s.
SHUTDOWN_JOIN_TIMEOUT_S = 2.0
# Test-only: seconds added to each frame's inference (as if the model were slower), so tests
# can fire transitions while a frame is in flight (FrameStream's added_model_delay_s). Unset
# in normal use.
TEST_FRAME_DELAY_S = float(os.environ.get("OVSEG_TEST_FRAME_DELAY_S") or 0.0)

CONFIGURE_TIME_NOTE = "Read on configure; settable only while the node is unconfigured (lifecycle cleanup, set, configure)."

_PARAMETER_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_STRING_ARRAY,
}


class FrameTag(NamedTuple):
    """What the node needs back with a frame's outputs (the stream carries it untouched)."""

    header: object  # std_msgs/Header of the input image
    camera_info: CameraInfo | None
    activation: int  # OvsegNode._activation on arrival: published only within the same one


@dataclass
class CameraMasks:
    """A camera's per-class mask publishers of one vocabulary."""

    publishers: dict[str, object] = field(default_factory=dict)  # topic token -> publisher
    # Class ids whose mask topic has a subscriber, looked up at most every
    # MASK_SUBSCRIBERS_REFRESH_S (that camera's frame callbacks only): not one lookup per class per frame.
    subscribed: tuple[int, ...] = ()
    checked_at: float = -float("inf")  # time.monotonic()


@dataclass
class ClassState:
    """The node's side of a vocabulary (topics, each camera's mask publishers), swapped in as one unit with it."""

    vocabulary: Vocabulary
    mask_topics: list[str]
    masks: dict[str, CameraMasks]  # camera name -> its mask publishers


class UnpairedFrames:
    """Counts the frames the synchronizer gives up on (no camera_info, or depth, of their stamp).

    It mirrors the synchronizer's queue of frames waiting for their partners: a frame pushed
    out by ``queue_size`` newer ones (oldest stamp first) is unsynchronized. Called from the
    frames' callback group only.
    """

    def __init__(self, queue_size: int) -> None:
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
    """One camera of the ``cameras`` parameter: its frame counters and output publishers (one configuration's)."""

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

    @property
    def diagnostics_name(self) -> str:
        return f"camera {self.name}" if self.name else "camera"


class OvsegNode(LifecycleNode):
    """Segments every camera frame into the classes of the current vocabulary."""

    def __init__(self, **kwargs) -> None:
        super().__init__("ovseg", **kwargs)
        self._declare_parameters()
        self._stats = FrameStats()  # every camera's frames
        self._camera_stats: dict[str, FrameStats] = {}  # camera name -> its own, over the node's life
        self._camera_unpaired: dict[str, UnpairedFrames] = {}  # camera name -> its frames without partners, over the node's life
        self._cameras: dict[str, CameraIO] = {}  # this configuration's
        self._vocabularies = VocabularyManager()  # versions count over the node's life
        self._pipeline: FramePipeline | None = None
        self._stream: FrameStream | None = None
        self._classes: ClassState | None = None
        self._active = False
        self._publisher_thread: threading.Thread | None = None
        self._stop = threading.Event()  # tells the publishing thread to exit
        self._entities: list = []  # publishers / subscriptions made on configure
        self._weights_note = ""
        self._configure_error: str | None = None
        self._last_frame_error = ""
        self._last_frame_error_at = -float("inf")  # time.monotonic() of it
        # Held to publish, to create or destroy publishers, to change the class state and to
        # (de)activate: so nothing is published by a publisher being destroyed, nor while inactive.
        self._output_lock = threading.RLock()
        self._activation = 0  # bumped on activate, deactivate and release
        self._configuration = 0  # bumped on configure and release: a slower vocabulary change then fails
        self._unconfigured = True  # configure-time parameters can be set only then
        self.finalized = False  # True after the shutdown transition
        # One vocabulary change at a time, encoded off the executor threads.
        self._vocabulary_worker = SerialWorker("ovseg-vocabulary")
        self._shutting_down: futures.Future = futures.Future()  # done on shutdown: waiting callbacks answer

        self._diagnostics = Updater(self, period=DIAGNOSTICS_PERIOD_S)
        self._diagnostics.setHardwareID("none")
        # The Updater's timer is in the default callback group, which the parameter and
        # lifecycle services share: one of its own keeps /diagnostics on time.
        self.destroy_timer(self._diagnostics.timer)
        self._diagnostics.timer = self.create_timer(self._diagnostics.period, self._diagnostics.update, callback_group=MutuallyExclusiveCallbackGroup())
        self._diagnostics.add("segmentation", self._report_status)
        # Text encoding for a new vocabulary must not hold up image callbacks.
        self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary, callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            # Not ROS read_only (which refuses every set, so a lifecycle manager could not switch
            # model or device): configure-time parameters are refused by _on_set_parameters
            # unless the node is unconfigured.
            descriptor = ParameterDescriptor(
                description=spec.description
                + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
                + (f" {CONFIGURE_TIME_NOTE}" if spec.read_only else ""),
                additional_constraints=CONFIGURE_TIME_NOTE if spec.read_only else "",
                type=_PARAMETER_TYPES[type(spec.default)],
            )
            if isinstance(spec.default, float) and spec.min_value is not None:
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min_value), to_value=float(spec.max_value))]
            elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.min_value is not None:
                descriptor.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
            self.declare_parameter(spec.name, spec.default, descriptor)
            if spec.choices and self._param(spec.name) not in spec.choices:
                raise ValueError(f"parameter {spec.name} must be one of {', '.join(spec.choices)}, not {self._param(spec.name)!r}")

    def _param(self, name: str):
        return self.get_parameter(name).value

    # -- lifecycle --------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._stream_of_last_configuration_alive():
            self._configure_error = f"the inference of the previous configuration has not stopped yet (its frame took over {WORKER_JOIN_TIMEOUT_S:.0f} s)"
            self.get_logger().error(f"configure refused: {self._configure_error}; clean up and configure again later")
            return TransitionCallbackReturn.FAILURE
        self._unconfigured = False
        try:
            prefixes = camera_prefixes(list(self._param("cameras")))  # before the model loads: a typo fails at once
            pipeline = self._build_pipeline()
            vocabulary = self._vocabularies.encode(self._param("vocabulary"))
            self.get_logger().info(f"warm-up frame: {pipeline.warm_up(vocabulary):.0f} ms")
        except (CheckpointError, VocabularyError, ValueError, OSError, RuntimeError) as exc:
            self._vocabularies.attach(None)
            self._configure_error = f"{type(exc).__name__}: {exc}"
            self._unconfigured = True
            self.get_logger().error(f"configure failed, the node stays unconfigured: {self._configure_error}")
            return TransitionCallbackReturn.FAILURE
        self._configure_error = None
        self._stop = threading.Event()
        self._cameras = {}
        for name, prefix in zip(self._param("cameras"), prefixes):
            unpaired = self._camera_unpaired.setdefault(name, UnpairedFrames(CAMERA_INFO_SYNC_QUEUE))
            unpaired.forget_waiting()  # a new synchronizer starts with an empty queue
            self._cameras[name] = CameraIO(name, prefix, self._camera_stats.setdefault(name, FrameStats(parent=self._stats)), unpaired)
        # Before the image subscriptions exist.
        self._stream = FrameStream(
            pipeline,
            {name: camera.stats for name, camera in self._cameras.items()},
            self._param("max_rate_hz"),
            self._param("max_batch"),
            self._param("batch_wait_ms") / 1000.0,
            added_model_delay_s=TEST_FRAME_DELAY_S,
        )
        self._publisher_thread = threading.Thread(target=self._publish_results, args=(self._stream, self._stop), name=PUBLISH_THREAD_NAME, daemon=True)
        with self._output_lock:
            self._configuration += 1
            self._pipeline = pipeline
            self._create_entities()
            self._install_classes(vocabulary)
        self._publisher_thread.start()
        return TransitionCallbackReturn.SUCCESS

    def _stream_of_last_configuration_alive(self) -> bool:
        publishing = self._publisher_thread is not None and self._publisher_thread.is_alive()
        return publishing or (self._stream is not None and self._stream.is_alive())

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._output_lock:
            super().on_activate(state)  # enables the lifecycle publishers
            self._activation += 1
            self._active = True
            self._publish_class_map()  # a change made while inactive was not published
        self.get_logger().info("active: segmenting frames")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._output_lock:  # waits for a frame being published
            self._active = False
            self._activation += 1  # the frame in flight is not published
            super().on_deactivate(state)
            if self._stream is not None:
                self._stream.discard_waiting()  # counted ignored
        self.get_logger().info("inactive: frames are ignored")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(WORKER_JOIN_TIMEOUT_S)
        self._unconfigured = True
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.begin_shutdown()
        self._release(SHUTDOWN_JOIN_TIMEOUT_S)
        self.finalized = True
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition callback raised: release what it made; the node goes back to unconfigured."""
        self.get_logger().error(f"a transition from {state.label} failed with an exception; releasing everything, back to unconfigured")
        self._release(WORKER_JOIN_TIMEOUT_S)
        self._unconfigured = True
        return TransitionCallbackReturn.SUCCESS

    def begin_shutdown(self) -> None:
        """Refuse vocabulary changes from now on; a callback waiting for one answers at once."""
        self._unconfigured = False
        self._vocabulary_worker.close()
        try:
            self._shutting_down.set_result(True)
        except futures.InvalidStateError:  # begun already
            pass

    def _release(self, join_timeout: float) -> None:
        """Stop the stream and the publishing thread (waiting up to ``join_timeout`` s for the
        frame in flight), destroy the configure-time entities, free the model."""
        with self._output_lock:
            self._active = False
            self._activation += 1
            # With the classes: a vocabulary change reads both at once, so one that began
            # before sees another configuration, one that begins now sees no classes.
            self._configuration += 1
            classes, self._classes = self._classes, None
            self._stop.set()
        deadline = time.monotonic() + join_timeout
        if self._publisher_thread is not None and self._publisher_thread.ident is not None:  # not started: configure raised first
            self._publisher_thread.join(join_timeout)
        if self._stream is not None and not self._stream.close(max(0.0, deadline - time.monotonic())):
            self.get_logger().error(f"the frame in flight did not finish within {join_timeout:.0f} s; configure is refused until it has")
        self._vocabularies.attach(None)
        with self._output_lock:
            masks = [publisher for camera in classes.masks.values() for publisher in camera.publishers.values()] if classes else []
            for entity in self._entities + masks:
                if hasattr(entity, "publish"):
                    self.destroy_lifecycle_publisher(entity)
                else:
                    self.destroy_subscription(entity)
            for camera in self._cameras.values():
                self._diagnostics.removeByName(camera.diagnostics_name)
            self._entities, self._cameras = [], {}
            self._pipeline = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _build_pipeline(self) -> FramePipeline:
        """Model, vocabulary encoder, smoothing and CER budget of a new configuration."""
        segmenter = self._build_segmenter()
        self._vocabularies.attach(segmenter.encode_text)
        return FramePipeline(
            segmenter, self._vocabularies, self._build_smoother(), self._param("palette"), self._param("min_score"), self._param("latency_budget_ms")
        )

    def _build_segmenter(self) -> Segmenter:
        model_name = self._param("model")
        # Torch's threads spin on every core; one left free keeps image callbacks flowing
        # (with all cores taken, frames overflowed the subscription queue).
        cpu_threads = self._param("cpu_threads") or max(1, (os.cpu_count() or 2) - 1)
        compile_mode, compile_note = compile_mode_for_threads(None if self._param("compile") == "off" else self._param("compile"))
        if compile_note:
            self.get_logger().warning(compile_note)
        segmenter, weights = build_segmenter(
            model_name,
            self._param("weights"),
            self._param("device"),
            self._param("precision"),
            self._param("input_short_edge"),
            self._param("cer_topk"),
            cpu_threads,
            compile_mode,
        )
        if weights is None:
            self._weights_note = "RANDOM weights: labels are meaningless"
            self.get_logger().warning(
                f"no weights for {model_name}: running with RANDOM weights, labels are meaningless. "
                "Pass weights:=/path/to/checkpoint.pth or put the authors' checkpoint at "
                f"$OVSEG_WEIGHTS_DIR/{model_name}.pth (see README)."
            )
        else:
            self._weights_note = str(weights)
        cer_topk = segmenter.cer_topk
        self.get_logger().info(
            f"model {model_name} on {segmenter.device} ({self._param('precision')}, compile {compile_mode or 'off'}), weights: {weights or 'random'}, "
            f"category early rejection: {f'top-{cer_topk}' if cer_topk else 'off'}"
        )
        return segmenter

    def _build_smoother(self) -> TemporalSmoother:
        mode = smoothing_mode(self._param("smoothing"), self._param("model"))
        self.get_logger().info(f"temporal smoothing: {mode}")
        return TemporalSmoother(mode, strength=self._param("smoothing_strength"), max_gap_s=self._param("smoothing_max_gap_s"))

    def _create_entities(self) -> None:
        def publisher(msg_type, topic, qos=OUTPUT_QOS):
            entity = self.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=NO_PUBLISHER_EVENTS)  # silent unless active
            self._entities.append(entity)
            return entity

        # Shared by the cameras: one vocabulary labels them all.
        self._class_map_pub = publisher(ClassMap, "segmentation/label_info", LATCHED_QOS)
        self._label_info_pub = publisher(LabelInfo, "segmentation/vision_label_info", LATCHED_QOS)
        use_depth = self._param("use_depth")
        with_camera_info = self._param("use_camera_info") or use_depth
        for camera in self._cameras.values():
            out = f"{camera.prefix}segmentation/"
            camera.label_pub = publisher(Image, out + "label")
            camera.color_pub = publisher(Image, out + "color")
            camera.overlay_pub = publisher(Image, out + "overlay")
            camera.confidence_pub = publisher(Image, out + "confidence")
            camera.info_pub = publisher(SegmentationInfo, out + "info")
            camera.camera_info_pub = publisher(CameraInfo, out + "camera_info") if with_camera_info else None
            camera.points_pub = publisher(PointCloud2, out + "points") if use_depth else None
            self._subscribe(camera)
            self._diagnostics.add(camera.diagnostics_name, partial(self._report_camera, camera))

    def _subscribe(self, camera: CameraIO) -> None:
        """The camera's image subscription (with camera_info and depth: paired by stamp)."""
        # Each camera's frames get a callback group of their own: no service or timer callback,
        # nor another camera's frames, delay them.
        options = {
            "qos_overriding_options": QoSOverridingOptions.with_default_policies(),
            "callback_group": MutuallyExclusiveCallbackGroup(),
            "event_callbacks": NO_SUBSCRIPTION_EVENTS,  # destroyed on cleanup while the executor spins
        }
        image_type, image_topic = (CompressedImage, "image/compressed") if self._param("input_transport") == "compressed" else (Image, "image")
        image_topic = camera.prefix + image_topic
        camera.image_topic = self.resolve_topic_name(image_topic)
        use_depth = self._param("use_depth")
        if not (self._param("use_camera_info") or use_depth):
            self._entities.append(self.create_subscription(image_type, image_topic, partial(self._on_image, camera), qos_profile_sensor_data, **options))
            return
        # Each frame goes out with the camera_info (and depth image) of its own stamp, as
        # image_transport's CameraSubscriber pairs them, never with whichever arrived last.
        images = Subscriber(self, image_type, image_topic, qos_profile=qos_profile_sensor_data, **options)
        partners = [Subscriber(self, CameraInfo, camera.prefix + "camera_info", qos_profile=qos_profile_sensor_data, **options)]
        if use_depth:
            partners.append(Subscriber(self, Image, camera.prefix + "depth", qos_profile=qos_profile_sensor_data, **options))
        images.registerCallback(partial(self._on_image_to_pair, camera))  # before the synchronizer, which may pair it at once
        slop = self._param("depth_sync_slop_s" if use_depth else "camera_info_sync_slop_s")
        if slop > 0:
            synchronizer = ApproximateTimeSynchronizer([images, *partners], CAMERA_INFO_SYNC_QUEUE, slop)
        else:
            synchronizer = TimeSynchronizer([images, *partners], CAMERA_INFO_SYNC_QUEUE)
        synchronizer.registerCallback(partial(self._on_image_with_partners, camera))
        self._entities += [images.sub, *(partner.sub for partner in partners)]

    # -- callbacks (executor threads: short, never wait for the model) ----------------

    def _on_image(self, camera: CameraIO, msg: Image | CompressedImage, camera_info: CameraInfo | None = None, depth: Image | None = None) -> None:
        camera.stats.frame_received()
        stream, classes = self._stream, self._classes
        if not self._active or stream is None or classes is None:
            camera.stats.frame_ignored()
            return
        image = image_data(msg)
        frame_depth = None
        if depth is not None:
            try:
                frame_depth = depth_data(msg, depth, camera_info)
            except ImageError as exc:
                self._frame_failed(camera.stats, f"bad camera_info: {exc}")
                return
        try:
            request = self._output_request(camera, classes)
        except Exception:  # InvalidHandle: a vocabulary change or cleanup destroyed a publisher meanwhile
            request = OutputRequest()  # this frame: labels and info only
        tag = FrameTag(msg.header, camera_info, self._activation)
        if stream.submit(FrameTicket(image, stamp_ns(msg.header) * 1e-9, request, tag, frame_depth, camera.name)) == REFUSED:
            camera.stats.frame_ignored()

    def _output_request(self, camera: CameraIO, classes: ClassState) -> OutputRequest:
        """The optional outputs of ``camera`` someone subscribes to (and that are enabled)."""
        def wanted(publisher, flag: str) -> bool:
            return self._param(flag) and publisher.get_subscription_count() > 0

        masks = ()
        if self._param("publish_masks"):
            camera_masks = classes.masks[camera.name]
            now = time.monotonic()
            if now - camera_masks.checked_at >= MASK_SUBSCRIBERS_REFRESH_S:
                publishers = camera_masks.publishers
                camera_masks.subscribed = tuple(i for i, topic in enumerate(classes.mask_topics) if publishers[topic].get_subscription_count() > 0)
                camera_masks.checked_at = now
            masks = camera_masks.subscribed
        return OutputRequest(
            color=wanted(camera.color_pub, "publish_color"),
            overlay=wanted(camera.overlay_pub, "publish_overlay"),
            confidence=wanted(camera.confidence_pub, "publish_confidence"),
            masks=masks,
            masks_version=classes.vocabulary.version,
            overlay_alpha=self._param("overlay_alpha"),
            points=camera.points_pub is not None and camera.points_pub.get_subscription_count() > 0,
            points_stride=self._param("points_stride"),
            points_min_score=self._param("points_min_score"),
        )

    def _on_image_to_pair(self, camera: CameraIO, msg: Image | CompressedImage) -> None:
        if camera.unpaired.arrived(msg, self._active):
            slop = "depth_sync_slop_s" if self._param("use_depth") else "camera_info_sync_slop_s"
            self.get_logger().warning(
                f"frame of {camera.prefix}image not processed: no {self._partner_names()} with its stamp ({slop}) arrived in time", throttle_duration_sec=LOG_THROTTLE_S
            )

    def _partner_names(self) -> str:
        return "depth image and camera_info" if self._param("use_depth") else "camera_info"

    def _on_image_with_partners(self, camera: CameraIO, msg: Image | CompressedImage, camera_info: CameraInfo, depth: Image | None = None) -> None:
        camera.unpaired.paired(msg)
        self._on_image(camera, msg, camera_info, depth)

    def _on_set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response) -> SetVocabulary.Response:
        try:
            change = self._submit_vocabulary_change(lambda names: edit_vocabulary(names, list(request.labels), request.mode))
            futures.wait([change, self._shutting_down], return_when=futures.FIRST_COMPLETED)
            if not change.done() or change.cancelled():
                raise VocabularyError("the node is shutting down")
            vocabulary = change.result()
            # Keep the parameter in sync (same names: the change it posts does nothing).
            self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(vocabulary.names))])
        except VocabularyError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"set_vocabulary refused: {exc}")
        except Exception as exc:  # answer, never raise out of a callback: that would end spin()
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"set_vocabulary failed: {response.message}")
        else:
            response.success, response.message = True, f"vocabulary v{vocabulary.version}: {len(vocabulary.names)} classes"
            response.class_names, response.vocabulary_version = list(vocabulary.names), vocabulary.version
            return response
        # Refused: what is in force now (a cleanup may have come meanwhile: then the parameter's).
        classes = self._classes
        current = classes.vocabulary if classes else None
        response.class_names = list(current.names) if current else list(self._param("vocabulary"))
        response.vocabulary_version = current.version if current else 0
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate only (one refusal refuses the whole set); _on_parameters_set applies."""
        for param in params:
            spec = PARAMETERS_BY_NAME.get(param.name)
            if spec is None:  # use_sim_time, qos_overrides...: rclpy's own
                continue
            if spec.read_only and not self._unconfigured:
                return SetParametersResult(successful=False, reason=f"{param.name} is read on configure: set it while the node is unconfigured (lifecycle cleanup, set, configure)")
            if spec.choices and param.value not in spec.choices:
                return SetParametersResult(successful=False, reason=f"{param.name} must be one of {', '.join(spec.choices)}, not {param.value!r}")
            if param.name == "vocabulary":
                try:
                    validate_class_names(list(param.value))
                except VocabularyError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            if param.name == "cameras":
                try:
                    camera_prefixes(list(param.value))
                except ValueError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        """Apply accepted parameters: runtime ones at once, a vocabulary on the vocabulary worker
        (it is encoded there, so the parameter services, lifecycle and diagnostics never wait)."""
        for param in params:
            if param.name == "vocabulary" and self._pipeline is not None:  # else configure reads it
                names = list(param.value)
                try:
                    self._submit_vocabulary_change(lambda _current: names).add_done_callback(self._vocabulary_parameter_applied)
                except VocabularyError:  # shutting down
                    pass
            else:
                self._apply_runtime_parameter(param)

    def _vocabulary_parameter_applied(self, change: futures.Future) -> None:
        if not change.cancelled() and change.exception() is not None:
            self.get_logger().error(f"vocabulary parameter not applied, the classes stay as they were: {change.exception()}")

    def _apply_runtime_parameter(self, param: Parameter) -> None:
        """Parameters that take effect at once (configure-time ones apply on configure)."""
        pipeline, stream = self._pipeline, self._stream
        if pipeline is None or stream is None:
            return
        if param.name == "min_score":
            pipeline.min_score = param.value
            with self._output_lock:
                if self._classes is not None:
                    self._publish_label_info()  # its threshold
        elif param.name == "cer_topk" and Segmenter.model_has_cer(pipeline.segmenter.model):
            pipeline.set_cer_topk(param.value or None)
        elif param.name == "latency_budget_ms":
            pipeline.set_latency_budget(param.value)
        elif param.name == "max_rate_hz":
            stream.max_rate_hz = param.value
        elif param.name == "max_batch":
            stream.max_batch = param.value
        elif param.name == "batch_wait_ms":
            stream.batch_wait_s = param.value / 1000.0
        elif param.name == "smoothing_strength":
            pipeline.smoother.strength = param.value
        elif param.name == "smoothing_max_gap_s":
            pipeline.smoother.max_gap_s = param.value

    def _submit_vocabulary_change(self, edit) -> futures.Future:
        try:
            return self._vocabulary_worker.submit(self._change_vocabulary, edit)
        except RuntimeError:  # closed
            raise VocabularyError("the node is shutting down") from None

    def _change_vocabulary(self, edit) -> Vocabulary:
        """Encode the edited vocabulary and swap it in; a frame in flight keeps the old one.

        Runs on the vocabulary worker, one change at a time. The encoding holds no lock, so
        frames, diagnostics and transitions go on meanwhile; a cleanup or shutdown during it
        makes the change fail rather than install classes on a released node.
        """
        with self._output_lock:
            classes, configuration = self._classes, self._configuration
        if classes is None:
            raise VocabularyError(f"the node is not configured{': ' + self._configure_error if self._configure_error else ''}")
        names = validate_class_names(edit(list(classes.vocabulary.names)))
        if tuple(names) == classes.vocabulary.names:
            return classes.vocabulary
        try:
            vocabulary = self._vocabularies.encode(names)
        except torch.cuda.OutOfMemoryError as exc:
            raise VocabularyError(f"out of GPU memory encoding {len(names)} classes: {exc}") from exc
        with self._output_lock:
            if self._configuration != configuration:
                raise VocabularyError("the node was cleaned up or shut down while the vocabulary was encoded: not applied")
            vocabulary = self._install_classes(vocabulary)
        self.get_logger().info(f"vocabulary v{vocabulary.version}: {', '.join(vocabulary.names)}")
        return vocabulary

    def _install_classes(self, vocabulary: Vocabulary) -> Vocabulary:
        """Make ``vocabulary`` current under the next version, with its mask topics and class map.

        Under the output lock: a frame labeled with it is published after its class map.
        """
        topics = mask_topic_names(list(vocabulary.names))
        with self._output_lock:
            vocabulary = self._vocabularies.install(vocabulary)
            masks = {}
            for camera in self._cameras.values():
                # A copy: frame callbacks read the current state's publishers without the lock.
                old = dict(self._classes.masks[camera.name].publishers) if self._classes else {}
                masks[camera.name] = CameraMasks({topic: old.pop(topic, None) or self._mask_publisher(camera, topic) for topic in topics})
                for stale in old.values():
                    self.destroy_lifecycle_publisher(stale)
            self._classes = ClassState(vocabulary, topics, masks)
            self._publish_class_map()
        return vocabulary

    def _mask_publisher(self, camera: CameraIO, topic: str):
        publisher = self.create_lifecycle_publisher(Image, f"{camera.prefix}segmentation/masks/{topic}", OUTPUT_QOS, event_callbacks=NO_PUBLISHER_EVENTS)
        if self._active:  # the others were enabled by on_activate
            publisher.on_activate(None)
        return publisher

    def _publish_class_map(self) -> None:
        self._class_map_pub.publish(class_map_msg(self._classes.vocabulary, self.get_clock().now().to_msg()))
        self._publish_label_info()

    def _publish_label_info(self) -> None:
        """vision_msgs' LabelInfo of the current classes, its threshold min_score."""
        label_info = LabelInfo(threshold=float(self._param("min_score")))
        label_info.header.stamp = self.get_clock().now().to_msg()
        label_info.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(self._classes.vocabulary.names)]
        self._label_info_pub.publish(label_info)

    # -- publishing thread ------------------------------------------------------------

    def _publish_results(self, stream: FrameStream, stop: threading.Event) -> None:
        """Publish the frames ``stream`` delivers, until ``stop`` (one configuration's thread)."""
        while not stop.is_set():
            result = stream.next_result(timeout=0.5)
            if result is None:
                continue
            try:
                self._publish_result(result, stop)
            except Exception as exc:  # keep serving: one bad frame must not stop the node
                self._frame_failed(self._camera_stats[result.ticket.camera], f"frame failed while publishing: {type(exc).__name__}: {exc}")

    def _publish_result(self, result: StreamResult, stop: threading.Event) -> None:
        ticket = result.ticket
        tag: FrameTag = ticket.tag
        stats = self._camera_stats[ticket.camera]
        if result.error is not None:
            self._frame_failed(stats, _frame_error_message(result.error))
            return
        outputs = result.outputs
        if outputs.smoothing_reset and self._pipeline is not None and self._pipeline.smoother.mode != "none":
            self.get_logger().info(f"temporal smoothing restarted: {outputs.smoothing_reset}", throttle_duration_sec=LOG_THROTTLE_S)
        with self._output_lock:
            if stop.is_set() or tag.activation != self._activation:
                stats.frame_ignored()  # deactivated (or released) while in flight: publish nothing
                return
            camera = self._cameras[ticket.camera]
            start = time.perf_counter()
            self._publish_images(camera, tag, outputs)
            publish_ms = (time.perf_counter() - start) * 1000.0
            info = self._info_msg(result, publish_ms)
            camera.info_pub.publish(info)
        stats.frame_processed(info.end_to_end_ms)

    def _frame_failed(self, stats: FrameStats, message: str) -> None:
        stats.frame_failed()
        self._last_frame_error, self._last_frame_error_at = message, time.monotonic()
        self.get_logger().error(f"dropped frame, {message}", throttle_duration_sec=LOG_THROTTLE_S)

    def _publish_images(self, camera: CameraIO, tag: FrameTag, outputs: FrameOutputs) -> None:
        """Label always; the other images as computed (they were requested: enabled and subscribed)."""
        header = tag.header
        camera.label_pub.publish(image_msg(header, outputs.labels))
        for publisher, pixels in ((camera.color_pub, outputs.color), (camera.overlay_pub, outputs.overlay), (camera.confidence_pub, outputs.confidence)):
            if pixels is not None:
                publisher.publish(image_msg(header, pixels))
        # The caller holds _output_lock, so the mask publishers cannot be swapped out meanwhile.
        classes = self._classes
        if outputs.masks and classes is not None and classes.vocabulary.version == outputs.vocabulary.version:
            for class_id, mask in outputs.masks.items():
                classes.masks[camera.name].publishers[classes.mask_topics[class_id]].publish(image_msg(header, mask))
        if tag.camera_info is not None:
            tag.camera_info.header = header  # the paired one: same stamp within the slop
            camera.camera_info_pub.publish(tag.camera_info)
        if outputs.points is not None:
            camera.points_pub.publish(point_cloud_msg(header, outputs.points))

    def _info_msg(self, result: StreamResult, publish_ms: float) -> SegmentationInfo:
        """The frame's info as offline labeling writes it (messages.info_msg), with the node's own times and batch."""
        ticket = result.ticket
        header = ticket.tag.header
        info = info_msg(header, result.outputs, self._param("model"))
        info.camera = ticket.camera
        info.batch_size, info.model_pass = ticket.batch_size, ticket.model_pass
        info.queue_ms = result.queue_ms
        info.postprocess_ms += publish_ms
        stamp = rclpy.time.Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        info.end_to_end_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        return info

    # -- diagnostics ----------------------------------------------------------------

    def _report_status(self, status: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        """The Updater's ``<node>: segmentation`` status, once per period."""
        stats = self._stats.snapshot(time.monotonic())
        pipeline = self._pipeline
        status.hardware_id = str(pipeline.device) if pipeline else "none"
        self._diagnostics.setHardwareID(status.hardware_id)  # for the other tasks too
        classes = self._classes
        if self._configure_error:
            status.summary(DiagnosticStatus.ERROR, f"not configured: {self._configure_error}")
        elif pipeline is None:
            status.summary(DiagnosticStatus.WARN, "not configured")
        elif not self._active:
            status.summary(DiagnosticStatus.WARN, "inactive")
        elif time.monotonic() - self._last_frame_error_at < LOG_THROTTLE_S:
            status.summary(DiagnosticStatus.WARN, self._last_frame_error)
        elif time.monotonic() - max((unpaired.last_at for unpaired in self._camera_unpaired.values()), default=-float("inf")) < LOG_THROTTLE_S:
            status.summary(DiagnosticStatus.WARN, f"frames without a {self._partner_names()} of their stamp are not processed")
        elif self._weights_note.startswith("RANDOM"):
            status.summary(DiagnosticStatus.WARN, self._weights_note)
        else:
            status.summary(DiagnosticStatus.OK, "segmenting")
        values = {
            # The status name holds only the node's base name: this tells apart two ovseg nodes.
            "node": self.get_fully_qualified_name(),
            "model": self._param("model"),
            "weights": self._weights_note,
            "device": status.hardware_id,
            "vocabulary_size": len(classes.vocabulary.names) if classes else 0,
            "vocabulary_version": classes.vocabulary.version if classes else 0,
            **_frame_values(stats, self._stats.counts()),
            "inference_threads": sum(thread.name == INFERENCE_THREAD_NAME for thread in threading.enumerate()),
            # The K frames run with now (the latency budget moves it); 0: off or not SED.
            "cer_topk": (pipeline.cer_topk or 0) if pipeline else 0,
            "latency_budget_ms": self._param("latency_budget_ms"),
            "frames_unsynchronized": sum(unpaired.count for unpaired in self._camera_unpaired.values()),
            # Each camera's rates, counters and latency: the "camera <name>" statuses.
            "cameras": ", ".join(repr(name) for name in self._cameras),
            "max_batch": self._param("max_batch"),
            "last_frame_error": self._last_frame_error,
        }
        if pipeline is not None and pipeline.device.type == "cuda":
            values["gpu_memory_allocated_mb"] = f"{torch.cuda.memory_allocated(pipeline.device) / 2**20:.1f}"
        for key, value in values.items():
            status.add(key, str(value))
        return status

    def _report_camera(self, camera: CameraIO, status: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        """The Updater's ``<node>: camera <name>`` status of each camera, once per period."""
        stats = camera.stats.snapshot(time.monotonic())
        if not self._active:
            status.summary(DiagnosticStatus.WARN, "inactive")
        elif stats["input_hz"] == 0.0:
            status.summary(DiagnosticStatus.WARN, f"no frames on {camera.image_topic}")
        elif time.monotonic() - camera.unpaired.last_at < LOG_THROTTLE_S:
            status.summary(DiagnosticStatus.WARN, f"frames without a {self._partner_names()} of their stamp are not processed")
        else:
            status.summary(DiagnosticStatus.OK, "segmenting")
        values = {
            "node": self.get_fully_qualified_name(),
            "camera": camera.name,
            "image_topic": camera.image_topic,
            **_frame_values(stats, camera.stats.counts()),
            "frames_unsynchronized": camera.unpaired.count,
        }
        for key, value in values.items():
            status.add(key, str(value))
        return status


def _frame_values(rates: dict[str, float], counts: dict[str, int]) -> dict[str, str]:
    """A status's frame figures: rates and latency of a FrameStats snapshot, and its counters
    over the node's life (received = processed + dropped + failed + ignored + in_flight)."""
    return {
        "input_rate_hz": f"{rates['input_hz']:.2f}",
        "processed_rate_hz": f"{rates['processed_hz']:.2f}",
        **{f"frames_{outcome}": str(count) for outcome, count in counts.items()},
        "latency_p50_ms": f"{rates['latency_p50_ms']:.1f}",
        "latency_p95_ms": f"{rates['latency_p95_ms']:.1f}",
    }


def _frame_error_message(error: Exception) -> str:
    if isinstance(error, ImageError):
        return f"bad image: {error}"
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return f"out of GPU memory: {error}"
    return f"frame failed: {type(error).__name__}: {error}"


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM, then shut it down in order; 0 unless the executor failed.

    Ctrl-C signals the whole process group and launch follows SIGINT with SIGTERM, so more
    signals can come while the node shuts down. The first one only writes Python's wake-up
    byte, which the main thread waits for; it then shuts down in order and ignores both
    signals. (rclpy's own handlers would raise KeyboardInterrupt wherever the main thread
    is, even in the clean-up.)
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)  # written in whichever thread the signal lands
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = OvsegNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        failures = []

        def spin() -> None:
            try:
                executor.spin()
            except ExternalShutdownException:
                pass
            except Exception as exc:  # a callback raised: report it and stop
                failures.append(exc)
                node.get_logger().fatal(f"executor stopped: {type(exc).__name__}: {exc}")
            finally:
                os.write(wake_write, b"\0")

        threading.Thread(target=spin, name="ovseg-executor", daemon=True).start()
        wake = os.read(wake_read, 1)[0]
        # Ignored from now on, also once Python's own handlers are gone at interpreter exit.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        node.get_logger().info(f"{signal.Signals(wake).name if wake else 'executor stopped'}: shutting down")
        node.begin_shutdown()  # a callback waiting for a vocabulary change answers now
        executor.shutdown(wait_for_threads=True)  # the callbacks running finish, answers go out
        if not node.finalized:  # else a lifecycle manager shut it down already
            node.trigger_shutdown()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 1 if failures else 0
