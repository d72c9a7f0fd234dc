"""The ``ovseg`` ROS 2 lifecycle node: camera images in, open-vocabulary segmentation out.

Topics (relative to the node's namespace):
    image (sensor_msgs/Image) or image/compressed   in, sensor-data QoS (QoS overrides allowed)
    camera_info (sensor_msgs/CameraInfo)            in, optional (use_camera_info), paired to frames by stamp
    segmentation/label (sensor_msgs/Image)          mono8 (<= 254 classes, 255 = unlabeled) or mono16
    segmentation/color, segmentation/overlay        rgb8 class colours, and blended over the image
    segmentation/confidence (sensor_msgs/Image)     mono8, winning score x 255
    segmentation/masks/<class> (sensor_msgs/Image)  mono8 per class, follows the vocabulary
    segmentation/camera_info                        the frame's own camera_info, with the output header
    segmentation/info (ovseg_ros/SegmentationInfo)  per frame: vocabulary version, fractions, latency
    segmentation/label_info (ovseg_ros/ClassMap)    class id -> name, transient local
    segmentation/vision_label_info (vision_msgs/LabelInfo)  the same for vision_msgs users
    /diagnostics (diagnostic_msgs/DiagnosticArray)  rates, drops, latency, device, errors (diagnostic_updater)
Services:
    ~/set_vocabulary (ovseg_ros/SetVocabulary)      replace / add / remove classes at runtime

The model loads on configure and frames are processed while active (``autostart`` does
both at start-up). Every output carries the input image's header unchanged. Frames go to
one inference worker thread through a latest-frame slot, so the executor never waits for
the model and a slow model answers the newest frame rather than a backlog. Bad input is
logged (throttled), counted in diagnostics and skipped; the node keeps serving.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from message_filters import ApproximateTimeSynchronizer, Subscriber, TimeSynchronizer
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from vision_msgs.msg import LabelInfo, VisionClass

from ovseg_ros.image_codec import ImageError, decode_compressed, decode_image, encode_image, message_bytes
from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.models.checkpoint import CheckpointError, file_digest
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.parameters import PARAMETERS
from ovseg_ros.rendering import colorize, confidence_image, overlay, palette
from ovseg_ros.segmenter import Segmentation, Segmenter, Vocabulary
from ovseg_ros.smoothing import TemporalSmoother
from ovseg_ros.srv import SetVocabulary
from ovseg_ros.topic_names import mask_topic_names
from ovseg_ros.vocabulary import TextEmbeddingCache, VocabularyError, default_cache_dir, edit_vocabulary, validate_class_names
from ovseg_ros.worker import FrameStats, LatestFrameSlot

# Outputs are reliable (rviz and recorders default to reliable) with a short history:
# a late frame is worth less than the next one.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
# The class map is state: late subscribers get the current one.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOG_THROTTLE_S = 5.0
# Frames (and camera_infos) that wait for their partner, as in image_transport's CameraSubscriber.
CAMERA_INFO_SYNC_QUEUE = 10
DIAGNOSTICS_PERIOD_S = 1.0

_PARAMETER_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_STRING_ARRAY,
}


@dataclass
class ClassState:
    """Everything that changes with the vocabulary, swapped in as one unit between frames."""

    vocabulary: Vocabulary
    colors: np.ndarray  # palette(...) for the vocabulary
    mask_topics: list[str]
    mask_publishers: dict[str, object] = field(default_factory=dict)  # topic token -> publisher


class UnpairedFrames:
    """Counts the frames the camera_info synchronizer gives up on.

    It mirrors the synchronizer's queue of frames waiting for a camera_info: a frame pushed
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
        self._waiting[_stamp_ns(msg)] = active
        if len(self._waiting) > self._queue_size and self._waiting.pop(min(self._waiting)):
            self.count += 1
            self.last_at = time.monotonic()
            return True
        return False

    def paired(self, msg) -> None:
        self._waiting.pop(_stamp_ns(msg), None)

    def forget_waiting(self) -> None:
        """A new synchronizer starts with an empty queue."""
        self._waiting.clear()


class OvsegNode(LifecycleNode):
    """Segments every camera frame into the classes of the current vocabulary."""

    def __init__(self, **kwargs) -> None:
        super().__init__("ovseg", **kwargs)
        self._declare_parameters()
        self._stats = FrameStats()
        self._frames: LatestFrameSlot[tuple[object, float]] = LatestFrameSlot()
        self._segmenter: Segmenter | None = None
        self._smoother: TemporalSmoother | None = None
        self._classes: ClassState | None = None
        self._unpaired_frames = UnpairedFrames(CAMERA_INFO_SYNC_QUEUE)
        self._active = False
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()  # tells the worker to exit
        self._entities: list = []  # publishers / subscriptions made on configure
        self._weights_note = ""
        self._configure_error: str | None = None
        self._last_frame_error = ""
        self._last_frame_error_at = -float("inf")  # time.monotonic() of it
        self._vocabulary_lock = threading.Lock()  # serialises vocabulary changes
        self._mask_lock = threading.Lock()  # mask publishers are not destroyed mid-publish

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

    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(
                description=spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else ""),
                read_only=spec.read_only,
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
        try:
            self._segmenter = self._build_segmenter()
            vocabulary = self._segmenter.encode_vocabulary(self._param("vocabulary"), version=1)
            self.get_logger().info(f"warm-up frame: {self._segmenter.warm_up(vocabulary):.0f} ms")
        except (CheckpointError, VocabularyError, ValueError, OSError, RuntimeError) as exc:
            self._configure_error = f"{type(exc).__name__}: {exc}"
            self._segmenter = None
            self.get_logger().error(f"configure failed, the node stays unconfigured: {self._configure_error}")
            return TransitionCallbackReturn.FAILURE
        self._configure_error = None
        self._smoother = self._build_smoother()
        self._create_entities()
        self._install_classes(vocabulary)
        self._frames = LatestFrameSlot()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, name="ovseg-inference", daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: segmenting frames")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.get_logger().info("inactive: frames are ignored")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop the worker, destroy the configure-time entities, free the model."""
        self._active = False
        self._stop.set()
        self._frames.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        with self._mask_lock:
            for entity in self._entities + list(self._classes.mask_publishers.values() if self._classes else []):
                if hasattr(entity, "publish"):
                    self.destroy_publisher(entity)
                else:
                    self.destroy_subscription(entity)
            self._entities, self._classes = [], None
        self._segmenter = self._smoother = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _build_segmenter(self) -> Segmenter:
        model_name = self._param("model")
        weights = resolve_weights(model_name, self._param("weights"))
        if weights is None:
            self._weights_note = "RANDOM weights: labels are meaningless"
            self.get_logger().warning(
                f"no weights for {model_name}: running with RANDOM weights, labels are meaningless. "
                "Pass weights:=/path/to/checkpoint.pth or put the authors' checkpoint at "
                f"$OVSEG_WEIGHTS_DIR/{model_name}.pth (see README)."
            )
        else:
            self._weights_note = str(weights)
        device = self._param("device")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            # Torch's threads spin on every core; one left free keeps image callbacks
            # flowing (with all cores taken, frames overflowed the subscription queue).
            torch.set_num_threads(self._param("cpu_threads") or max(1, (os.cpu_count() or 2) - 1))
        model = build_model(model_name, weights)
        digest = file_digest(weights) if weights is not None else "random"
        self.get_logger().info(f"model {model_name} on {device} ({self._param('precision')}), weights: {weights or 'random'}")
        return Segmenter(
            model,
            device=device,
            precision=self._param("precision"),
            short_edge=self._param("input_short_edge"),
            min_score=self._param("min_score"),
            text_cache=TextEmbeddingCache(default_cache_dir(), model_name, digest),
            cer_topk=self._param("cer_topk") or None,
        )

    def _build_smoother(self) -> TemporalSmoother:
        mode = self._param("smoothing")
        if mode == "auto":
            mode = "flow" if self._param("model").startswith("san_") else "none"
        mode = "off" if mode == "none" else mode  # the smoother's name for it
        self.get_logger().info(f"temporal smoothing: {mode}")
        return TemporalSmoother(mode, strength=self._param("smoothing_strength"), max_gap_s=self._param("smoothing_max_gap_s"))

    def _create_entities(self) -> None:
        def publisher(msg_type, topic, qos=OUTPUT_QOS):
            entity = self.create_publisher(msg_type, topic, qos)
            self._entities.append(entity)
            return entity

        self._label_pub = publisher(Image, "segmentation/label")
        self._color_pub = publisher(Image, "segmentation/color")
        self._overlay_pub = publisher(Image, "segmentation/overlay")
        self._confidence_pub = publisher(Image, "segmentation/confidence")
        self._info_pub = publisher(SegmentationInfo, "segmentation/info")
        self._class_map_pub = publisher(ClassMap, "segmentation/label_info", LATCHED_QOS)
        self._label_info_pub = publisher(LabelInfo, "segmentation/vision_label_info", LATCHED_QOS)
        self._camera_info_pub = publisher(CameraInfo, "segmentation/camera_info") if self._param("use_camera_info") else None

        # Frames get a callback group of their own: no service or timer callback delays them.
        options = {"qos_overriding_options": QoSOverridingOptions.with_default_policies(), "callback_group": MutuallyExclusiveCallbackGroup()}
        image_type, image_topic = (CompressedImage, "image/compressed") if self._param("input_transport") == "compressed" else (Image, "image")
        if not self._param("use_camera_info"):
            self._entities.append(self.create_subscription(image_type, image_topic, self._on_image, qos_profile_sensor_data, **options))
            return
        # Each frame goes out with the camera_info of its own stamp, as image_transport's
        # CameraSubscriber pairs them, never with whichever arrived last.
        images = Subscriber(self, image_type, image_topic, qos_profile=qos_profile_sensor_data, **options)
        camera_infos = Subscriber(self, CameraInfo, "camera_info", qos_profile=qos_profile_sensor_data, **options)
        images.registerCallback(self._on_image_to_pair)  # before the synchronizer, which may pair it at once
        slop = self._param("camera_info_sync_slop_s")
        if slop > 0:
            synchronizer = ApproximateTimeSynchronizer([images, camera_infos], CAMERA_INFO_SYNC_QUEUE, slop)
        else:
            synchronizer = TimeSynchronizer([images, camera_infos], CAMERA_INFO_SYNC_QUEUE)
        synchronizer.registerCallback(self._on_image_with_camera_info)
        self._unpaired_frames.forget_waiting()
        self._entities += [images.sub, camera_infos.sub]

    # -- callbacks (executor threads: short, never wait for the model) ----------------

    def _on_image(self, msg: Image | CompressedImage, camera_info: CameraInfo | None = None) -> None:
        if self._active:
            self._stats.frame_received()
            self._frames.put((msg, time.perf_counter(), camera_info))

    def _on_image_to_pair(self, msg: Image | CompressedImage) -> None:
        if self._unpaired_frames.arrived(msg, self._active):
            self.get_logger().warning(
                "frame not processed: no camera_info with its stamp (camera_info_sync_slop_s) arrived in time", throttle_duration_sec=LOG_THROTTLE_S
            )

    def _on_image_with_camera_info(self, msg: Image | CompressedImage, camera_info: CameraInfo) -> None:
        self._unpaired_frames.paired(msg)
        self._on_image(msg, camera_info)

    def _on_set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response) -> SetVocabulary.Response:
        try:
            vocabulary = self._change_vocabulary(lambda names: edit_vocabulary(names, list(request.labels), request.mode))
        except VocabularyError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"set_vocabulary refused: {exc}")
        else:
            response.success, response.message = True, f"vocabulary v{vocabulary.version}: {len(vocabulary.names)} classes"
            # Keep the parameter in sync (same names: _on_set_parameters accepts without re-encoding).
            self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(vocabulary.names))])
        current = self._classes.vocabulary if self._classes else None
        response.class_names = list(current.names) if current else list(self._param("vocabulary"))
        response.vocabulary_version = current.version if current else 0
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "vocabulary":
                try:
                    names = validate_class_names(list(param.value))
                    current = self._classes.vocabulary.names if self._classes else ()
                    if self._segmenter is not None and tuple(names) != current:
                        self._change_vocabulary(lambda _current, names=names: names)
                except VocabularyError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            elif param.name == "cer_topk" and param.value and self._segmenter is not None and not hasattr(self._segmenter.model, "cer_topk"):
                return SetParametersResult(successful=False, reason=f"{self._param('model')} has no category early rejection")
        for param in params:
            self._apply_runtime_parameter(param)
        return SetParametersResult(successful=True)

    def _apply_runtime_parameter(self, param: Parameter) -> None:
        """Parameters that take effect at once (read-only ones apply on configure)."""
        if self._segmenter is None:
            return
        if param.name == "min_score":
            self._segmenter.min_score = param.value
        elif param.name == "cer_topk" and hasattr(self._segmenter.model, "cer_topk"):
            self._segmenter.model.cer_topk = param.value or None
        elif param.name == "smoothing_strength":
            self._smoother.strength = param.value
        elif param.name == "smoothing_max_gap_s":
            self._smoother.max_gap_s = param.value

    def _change_vocabulary(self, edit) -> Vocabulary:
        """Encode the edited vocabulary and swap it in; a frame in flight keeps the old one."""
        with self._vocabulary_lock:
            if self._segmenter is None or self._classes is None:
                raise VocabularyError(f"the node is not configured{': ' + self._configure_error if self._configure_error else ''}")
            names = edit(list(self._classes.vocabulary.names))
            try:
                vocabulary = self._segmenter.encode_vocabulary(names, version=self._classes.vocabulary.version + 1)
            except torch.cuda.OutOfMemoryError as exc:
                raise VocabularyError(f"out of GPU memory encoding {len(names)} classes: {exc}") from exc
            self._install_classes(vocabulary)
        self.get_logger().info(f"vocabulary v{vocabulary.version}: {', '.join(vocabulary.names)}")
        return vocabulary

    def _install_classes(self, vocabulary: Vocabulary) -> None:
        """Swap in the class state of ``vocabulary``: palette, mask topics, class map."""
        topics = mask_topic_names(list(vocabulary.names))
        with self._mask_lock:
            old = self._classes.mask_publishers if self._classes else {}
            publishers = {topic: old.pop(topic, None) or self.create_publisher(Image, f"segmentation/masks/{topic}", OUTPUT_QOS) for topic in topics}
            for stale in old.values():
                self.destroy_publisher(stale)
            self._classes = ClassState(vocabulary, palette(list(vocabulary.names), self._param("palette")), topics, publishers)
        self._publish_class_map()

    def _publish_class_map(self) -> None:
        classes = self._classes
        msg = ClassMap()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.vocabulary_version = classes.vocabulary.version
        msg.class_names = list(classes.vocabulary.names)
        msg.mask_topics = [f"segmentation/masks/{topic}" for topic in classes.mask_topics]
        msg.unlabeled_id = classes.vocabulary.unlabeled_id
        self._class_map_pub.publish(msg)
        if self._label_info_pub is not None:
            label_info = LabelInfo(header=msg.header, threshold=float(self._param("min_score")))
            label_info.class_map = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(msg.class_names)]
            self._label_info_pub.publish(label_info)

    # -- inference worker -----------------------------------------------------------

    def _run_worker(self) -> None:
        last_start = 0.0
        while not self._stop.is_set():
            max_rate = self._param("max_rate_hz")
            if max_rate > 0:  # wait first, so the frame taken is the newest
                time.sleep(max(0.0, last_start + 1.0 / max_rate - time.perf_counter()))
            item = self._frames.take(timeout=0.5)
            if item is None:
                continue
            last_start = time.perf_counter()
            try:
                self._process(*item)
            except ImageError as exc:
                self._frame_failed(f"bad image: {exc}")
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                self._frame_failed(f"out of GPU memory: {exc}")
            except Exception as exc:  # keep serving: one bad frame must not stop the node
                self._frame_failed(f"frame failed: {type(exc).__name__}: {exc}")

    def _frame_failed(self, message: str) -> None:
        self._stats.frame_failed()
        self._last_frame_error, self._last_frame_error_at = message, time.monotonic()
        self.get_logger().error(f"dropped frame, {message}", throttle_duration_sec=LOG_THROTTLE_S)

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return decode_compressed(msg.format, bytes(msg.data))
        return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))

    def _process(self, msg: Image | CompressedImage, received: float, camera_info: CameraInfo | None) -> None:
        queue_ms = (time.perf_counter() - received) * 1000.0
        start = time.perf_counter()
        rgb = self._decode(msg)
        decode_ms = (time.perf_counter() - start) * 1000.0
        classes, smoother, segmenter = self._classes, self._smoother, self._segmenter  # one state per frame
        if classes is None or segmenter is None:
            return
        vocabulary = classes.vocabulary
        stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        result = segmenter.segment(rgb, vocabulary, lambda scores: smoother.update(scores, rgb, stamp_s, vocabulary.version))
        if smoother.last_reset_reason and smoother.mode != "off":
            self.get_logger().info(f"temporal smoothing restarted: {smoother.last_reset_reason}", throttle_duration_sec=LOG_THROTTLE_S)

        start = time.perf_counter()
        self._publish_images(msg.header, rgb, result, classes, camera_info)
        publish_ms = (time.perf_counter() - start) * 1000.0
        info = self._info_msg(msg.header, result, queue_ms, decode_ms, publish_ms)
        self._info_pub.publish(info)
        self._stats.frame_processed(info.end_to_end_ms)

    def _publish_images(self, header, rgb: np.ndarray, result: Segmentation, classes: ClassState, camera_info: CameraInfo | None) -> None:
        """Label always; the other images only when enabled and subscribed (they cost time)."""
        self._label_pub.publish(_image_msg(header, result.labels))
        unlabeled = result.vocabulary.unlabeled_id

        def wanted(publisher, flag: str) -> bool:
            return self._param(flag) and publisher.get_subscription_count() > 0

        want_color, want_overlay = wanted(self._color_pub, "publish_color"), wanted(self._overlay_pub, "publish_overlay")
        if want_color or want_overlay:
            color = colorize(result.labels, classes.colors, unlabeled)
            if want_color:
                self._color_pub.publish(_image_msg(header, color))
            if want_overlay:
                self._overlay_pub.publish(_image_msg(header, overlay(rgb, color, self._param("overlay_alpha"))))
        if wanted(self._confidence_pub, "publish_confidence"):
            self._confidence_pub.publish(_image_msg(header, confidence_image(result.confidence)))
        if self._param("publish_masks"):
            with self._mask_lock:
                if classes is self._classes:  # publishers of a replaced vocabulary may be gone
                    for class_id, topic in enumerate(classes.mask_topics):
                        publisher = classes.mask_publishers[topic]
                        if publisher.get_subscription_count() > 0:
                            publisher.publish(_image_msg(header, np.where(result.labels == class_id, 255, 0).astype(np.uint8)))
        if camera_info is not None:
            camera_info.header = header  # the paired one: same stamp within the slop
            self._camera_info_pub.publish(camera_info)

    def _info_msg(self, header, result: Segmentation, queue_ms: float, decode_ms: float, publish_ms: float) -> SegmentationInfo:
        names = result.vocabulary.names
        counts = np.bincount(result.labels.ravel(), minlength=len(names))[: len(names)]
        info = SegmentationInfo()
        info.header = header
        info.vocabulary_version = result.vocabulary.version
        info.class_names = list(names)
        info.pixel_fractions = (counts / result.labels.size).astype(np.float32).tolist()
        info.present_class_ids = np.flatnonzero(counts).astype(np.uint16).tolist()
        info.model = self._param("model")
        info.queue_ms = queue_ms
        info.preprocess_ms = decode_ms + result.timings_ms["preprocess"]
        info.model_ms = result.timings_ms["model"]
        info.postprocess_ms = result.timings_ms["postprocess"] + publish_ms
        stamp = rclpy.time.Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        info.end_to_end_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        return info

    # -- diagnostics ----------------------------------------------------------------

    def _report_status(self, status: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        """The Updater's ``<node>: segmentation`` status, once per period."""
        stats = self._stats.snapshot(time.monotonic())
        status.hardware_id = str(self._segmenter.device) if self._segmenter else "none"
        self._diagnostics.setHardwareID(status.hardware_id)  # for the other tasks too
        classes = self._classes
        if self._configure_error:
            status.summary(DiagnosticStatus.ERROR, f"not configured: {self._configure_error}")
        elif self._segmenter is None:
            status.summary(DiagnosticStatus.WARN, "not configured")
        elif not self._active:
            status.summary(DiagnosticStatus.WARN, "inactive")
        elif time.monotonic() - self._last_frame_error_at < LOG_THROTTLE_S:
            status.summary(DiagnosticStatus.WARN, self._last_frame_error)
        elif time.monotonic() - self._unpaired_frames.last_at < LOG_THROTTLE_S:
            status.summary(DiagnosticStatus.WARN, "frames without a camera_info of their stamp are not processed")
        elif self._weights_note.startswith("RANDOM"):
            status.summary(DiagnosticStatus.WARN, self._weights_note)
        else:
            status.summary(DiagnosticStatus.OK, "segmenting")
        values = {
            "model": self._param("model"),
            "weights": self._weights_note,
            "device": status.hardware_id,
            "vocabulary_size": len(classes.vocabulary.names) if classes else 0,
            "vocabulary_version": classes.vocabulary.version if classes else 0,
            "input_rate_hz": f"{stats['input_hz']:.2f}",
            "processed_rate_hz": f"{stats['processed_hz']:.2f}",
            "frames_received": self._frames.received,
            "frames_processed": self._stats.processed,
            "frames_dropped": self._frames.dropped,
            "frames_failed": self._stats.failed,
            "frames_unsynchronized": self._unpaired_frames.count,
            "last_frame_error": self._last_frame_error,
            "latency_p50_ms": f"{stats['latency_p50_ms']:.1f}",
            "latency_p95_ms": f"{stats['latency_p95_ms']:.1f}",
        }
        if self._segmenter is not None and self._segmenter.device.type == "cuda":
            values["gpu_memory_allocated_mb"] = f"{torch.cuda.memory_allocated(self._segmenter.device) / 2**20:.1f}"
        for key, value in values.items():
            status.add(key, str(value))
        return status


def _stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _image_msg(header, pixels: np.ndarray) -> Image:
    encoding, step, data = encode_image(pixels)
    msg = Image()
    msg.header = header
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding, msg.step, msg.is_bigendian = encoding, step, 0
    msg.data = message_bytes(data)
    return msg


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = OvsegNode()
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
