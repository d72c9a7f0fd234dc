"""The ``ovseg`` ROS 2 node: camera images in, open-vocabulary segmentation out.

Topics (relative to the node's namespace):
    image (sensor_msgs/Image)                       in, sensor-data QoS
    segmentation/label (sensor_msgs/Image)          mono8 (<= 254 classes, 255 = unlabeled) or mono16
    segmentation/color (sensor_msgs/Image)          rgb8, a stable colour per class name
    segmentation/info (ovseg_ros/SegmentationInfo)  vocabulary version, class fractions, latency
Services:
    ~/set_vocabulary (ovseg_ros/SetVocabulary)      replace / add / remove classes at runtime

Every output carries the input image's header unchanged. Frames are handed to one
inference worker thread through a latest-frame slot, so the executor never waits for the
model and a slow model answers the newest frame rather than a backlog.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
import torch
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image

from ovseg_ros.image_codec import ImageError, decode_image, encode_image
from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.models.checkpoint import file_digest
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.parameters import PARAMETERS
from ovseg_ros.rendering import colorize, palette
from ovseg_ros.segmenter import Segmentation, Segmenter, Vocabulary
from ovseg_ros.srv import SetVocabulary
from ovseg_ros.vocabulary import TextEmbeddingCache, VocabularyError, default_cache_dir, edit_vocabulary
from ovseg_ros.worker import LatestFrameSlot

# Outputs are reliable (rviz and recorders default to reliable) with a short history:
# a late frame is worth less than the next one.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
LOG_THROTTLE_S = 5.0

_PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER, float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING, list: ParameterType.PARAMETER_STRING_ARRAY}


class OvsegNode(Node):
    """Segments every camera frame into the classes of the current vocabulary."""

    def __init__(self, **kwargs) -> None:
        super().__init__("ovseg", **kwargs)
        self._declare_parameters()
        self._segmenter = self._build_segmenter()
        self._vocabulary_lock = threading.Lock()  # serialises vocabulary changes, not frames
        self._vocabulary = self._segmenter.encode_vocabulary(self._param("vocabulary"), version=1)
        self._palette = palette(list(self._vocabulary.names))
        self.get_logger().info(f"vocabulary v1: {', '.join(self._vocabulary.names)}")

        self._label_pub = self.create_publisher(Image, "segmentation/label", OUTPUT_QOS)
        self._color_pub = self.create_publisher(Image, "segmentation/color", OUTPUT_QOS)
        self._info_pub = self.create_publisher(SegmentationInfo, "segmentation/info", OUTPUT_QOS)

        self._frames: LatestFrameSlot[tuple[Image, float]] = LatestFrameSlot()
        self.create_subscription(
            Image,
            "image",
            self._on_image,
            qos_profile_sensor_data,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
        )
        # Text encoding for a new vocabulary must not hold up image callbacks.
        self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary, callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._running = True
        self._worker = threading.Thread(target=self._run_worker, name="ovseg-inference", daemon=True)
        self._worker.start()

    # -- set-up ---------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(
                description=spec.description + (f" One of: {', '.join(spec.choices)}." if spec.choices else ""),
                read_only=spec.read_only,
                type=_PARAMETER_TYPES[type(spec.default)],
            )
            self.declare_parameter(spec.name, spec.default, descriptor)

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _build_segmenter(self) -> Segmenter:
        model_name = self._param("model")
        weights = resolve_weights(model_name, self._param("weights"))
        if weights is None:
            self.get_logger().warning(
                f"no weights for {model_name}: running with RANDOM weights, labels are meaningless. "
                "Pass weights:=/path/to/model_final.pth or put the authors' checkpoint at "
                f"$OVSEG_WEIGHTS_DIR/{model_name}.pth (see README)."
            )
        device = self._param("device")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
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
        )

    # -- callbacks (executor threads: short, never wait for the model) ----------------

    def _on_image(self, msg: Image) -> None:
        self._frames.put((msg, time.perf_counter()))

    def _on_set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response) -> SetVocabulary.Response:
        try:
            vocabulary = self._change_vocabulary(lambda names: edit_vocabulary(names, list(request.labels), request.mode))
        except VocabularyError as exc:
            response.success, response.message = False, str(exc)
            vocabulary = self._vocabulary
            self.get_logger().warning(f"set_vocabulary refused: {exc}")
        else:
            response.success, response.message = True, f"vocabulary v{vocabulary.version}: {len(vocabulary.names)} classes"
            # Keep the parameter in sync (same names: _on_set_parameters accepts without re-encoding).
            self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(vocabulary.names))])
        response.class_names = list(vocabulary.names)
        response.vocabulary_version = vocabulary.version
        return response

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name == "vocabulary" and list(param.value) != list(self._vocabulary.names):
                try:
                    self._change_vocabulary(lambda _current, names=list(param.value): names)
                except VocabularyError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
            elif param.name == "min_score":
                self._segmenter.min_score = param.value
        return SetParametersResult(successful=True)

    def _change_vocabulary(self, edit) -> Vocabulary:
        """Encode the edited vocabulary and swap it in; frames in flight keep the old one."""
        with self._vocabulary_lock:
            names = edit(list(self._vocabulary.names))
            vocabulary = self._segmenter.encode_vocabulary(names, version=self._vocabulary.version + 1)
            self._palette = palette(list(vocabulary.names))
            self._vocabulary = vocabulary
        self.get_logger().info(f"vocabulary v{vocabulary.version}: {', '.join(vocabulary.names)}")
        return vocabulary

    # -- inference worker -----------------------------------------------------------

    def _run_worker(self) -> None:
        while self._running:
            item = self._frames.take(timeout=0.5)
            if item is None:
                continue
            msg, received = item
            try:
                self._process(msg, received)
            except ImageError as exc:
                self.get_logger().error(f"dropped frame: {exc}", throttle_duration_sec=LOG_THROTTLE_S)
            except Exception as exc:  # keep serving: one bad frame must not stop the node
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=LOG_THROTTLE_S)

    def _process(self, msg: Image, received: float) -> None:
        queue_ms = (time.perf_counter() - received) * 1000.0
        start = time.perf_counter()
        rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data), bool(msg.is_bigendian))
        decode_ms = (time.perf_counter() - start) * 1000.0
        vocabulary, table = self._vocabulary, self._palette  # one vocabulary for the whole frame
        result = self._segmenter.segment(rgb, vocabulary)

        start = time.perf_counter()
        self._label_pub.publish(_image_msg(msg.header, result.labels))
        if self._param("publish_color"):
            self._color_pub.publish(_image_msg(msg.header, colorize(result.labels, table, vocabulary.unlabeled_id)))
        publish_ms = (time.perf_counter() - start) * 1000.0
        self._info_pub.publish(self._info_msg(msg, result, queue_ms, decode_ms, publish_ms))

    def _info_msg(self, msg: Image, result: Segmentation, queue_ms: float, decode_ms: float, publish_ms: float) -> SegmentationInfo:
        names = result.vocabulary.names
        counts = np.bincount(result.labels.ravel(), minlength=len(names))[: len(names)]
        info = SegmentationInfo()
        info.header = msg.header
        info.vocabulary_version = result.vocabulary.version
        info.class_names = list(names)
        info.pixel_fractions = (counts / result.labels.size).astype(np.float32).tolist()
        info.present_class_ids = np.flatnonzero(counts).astype(np.uint16).tolist()
        info.model = self._param("model")
        info.queue_ms = queue_ms
        info.preprocess_ms = decode_ms + result.timings_ms["preprocess"]
        info.model_ms = result.timings_ms["model"]
        info.postprocess_ms = result.timings_ms["postprocess"] + publish_ms
        stamp = rclpy.time.Time.from_msg(msg.header.stamp, clock_type=self.get_clock().clock_type)
        info.end_to_end_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        return info

    def destroy_node(self) -> None:
        self._running = False
        self._frames.close()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def _image_msg(header, pixels: np.ndarray) -> Image:
    encoding, step, data = encode_image(pixels)
    msg = Image()
    msg.header = header
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding, msg.step, msg.is_bigendian = encoding, step, 0
    msg.data = data
    return msg


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = OvsegNode()
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
