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
    segmentation/points (sensor_msgs/PointCloud2)   use_depth: x, y, z, rgb, score, label per valid depth pixel (or pixel-aligned: points_organized)
    segmentation/detections (vision_msgs/Detection2DArray)      one per segment: class name, mean score, 2D box, track id
    segmentation/detections_3d (vision_msgs/Detection3DArray)   use_depth: the segments with a 3D box (robust, optical frame)
    segmentation/detection_markers (visualization_msgs/MarkerArray)  use_depth: those boxes for rviz
    segmentation/instances (sensor_msgs/Image)      mono16 track id per pixel, 0 = none
    segmentation/info (ovseg_ros/SegmentationInfo)  per frame: vocabulary version, fractions, latency
    segmentation/label_info (ovseg_ros/ClassMap)    class id -> name, transient local (one for all cameras)
    segmentation/vision_label_info (vision_msgs/LabelInfo)  the same for vision_msgs users
    /diagnostics (diagnostic_msgs/DiagnosticArray)  rates, drops, latency, device, errors (diagnostic_updater); per camera too
Services:
    ~/set_vocabulary (ovseg_ros/SetVocabulary)      replace / add / remove classes at runtime

The model loads on configure and frames are processed while active (``autostart`` does both
at start-up); outputs are lifecycle publishers, so nothing is published while inactive, not
even a frame that was in flight at deactivate. Configure-time parameters (model, device...)
can be set while unconfigured: cleanup, set, configure switches them. Every output carries
the input image's header unchanged. A frame goes straight down: a camera callback
(:mod:`~ovseg_ros.ros.cameras`) converts the message (:mod:`~ovseg_ros.ros.conversions`) and
hands it to the ROS-free :class:`~ovseg_ros.engine.frame_stream.FrameStream` (decode/upload,
model and publishing overlapped, latest-frame hand-offs, several cameras batched through the
one model); its outputs come back as messages (:func:`~ovseg_ros.ros.conversions.frame_messages`)
on the publishing thread. Vocabulary changes take one path (:mod:`~ovseg_ros.ros.vocabulary_changes`),
the class map and mask publishers are :mod:`~ovseg_ros.ros.class_map`'s, the statuses
:mod:`~ovseg_ros.ros.diagnostics`'. Bad input is logged (throttled), counted in diagnostics
and skipped; the node keeps serving. SIGINT or SIGTERM starts one orderly shutdown; more of
them during it change nothing.

Threads and what they touch:

    thread                     runs                                         touches
    executor (4, callback      image callbacks (one group per camera)       _active, _stream, _classes (read, no lock);
      groups of their own)                                                  its camera's CameraMasks (subscriber cache);
                                                                            FrameStream.submit (never blocks)
                               set_vocabulary service, parameter callbacks  VocabularyChanges.submit; waits for the
                                                                            change or shutdown, never for the model
                               lifecycle transitions                        everything, under _output_lock
                               diagnostics timer                            snapshots (FrameStats locks, plain reads)
    ovseg-prepare, -inference  FrameStream's stages (engine)                the pipeline only
    ovseg-publish              _publish_results                             publishers, under _output_lock
    ovseg-vocabulary           VocabularyChanges._change: encodes unlocked, installs under _output_lock
    main                       main(): waits for a signal, shuts down in order

``_output_lock`` (re-entrant) is held to publish, to create or destroy publishers, to swap the
class state and to (de)activate, so nothing is published by a publisher being destroyed, nor
while inactive. ``_activation`` (bumped on activate, deactivate, release) drops frames that
were in flight across a transition; ``_configuration`` (bumped on configure and release)
makes a vocabulary change that began before a cleanup fail instead of installing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from concurrent import futures
from dataclasses import replace
from typing import NamedTuple

import rclpy
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ovseg_ros.engine.camera_slots import REFUSED
from ovseg_ros.engine.frame_pipeline import FramePipeline, OutputRequest
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.frame_stream import FrameStream, FrameTicket, StreamResult
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.engine.segmenter import compile_mode_for_threads
from ovseg_ros.engine.segments import SegmentSettings, stuff_classes
from ovseg_ros.engine.vocabulary import Vocabulary, VocabularyError, VocabularyManager, edit_vocabulary
from ovseg_ros.models.checkpoint import CheckpointError
from ovseg_ros.ros.cameras import InputSettings, OutputSettings, CameraIO, UnpairedFrames, output_request
from ovseg_ros.ros.class_map import ClassMapTopics, ClassState, class_state
from ovseg_ros.ros.conversions import depth_data, frame_messages, image_data, stamp_ns
from ovseg_ros.ros.diagnostics import NodeState, SegmentationDiagnostics
from ovseg_ros.ros.environment import destroy_participant
from ovseg_ros.ros.node_parameters import declare_parameters, validate_parameters
from ovseg_ros.ros.rclpy_compat import refuse_unknown_transitions, shutdown_executor
from ovseg_ros.ros.topic_names import camera_prefixes
from ovseg_ros.ros.vocabulary_changes import VocabularyChanges
from ovseg_ros.srv import SetVocabulary

LOG_THROTTLE_S = 5.0
PUBLISH_THREAD_NAME = "ovseg-publish"
# Cleanup waits this long for the frame in flight; while the stream's threads are still alive
# after that, configure refuses (two streams would share the model).
WORKER_JOIN_TIMEOUT_S = 60.0
# At process shutdown a frame in flight is not worth outliving launch's SIGINT -> SIGTERM 5 s.
SHUTDOWN_JOIN_TIMEOUT_S = 2.0
# Test-only: seconds added to each frame's inference (as if the model were slower), so tests
# can fire transitions while a frame is in flight (FrameStream's added_model_delay_s). Unset
# in normal use.
TEST_FRAME_DELAY_S = float(os.environ.get("OVSEG_TEST_FRAME_DELAY_S") or 0.0)
#: Parameters that are PipelineSettings of the same name.
PIPELINE_PARAMETERS = (
    "model", "weights", "device", "precision", "input_short_edge", "cer_topk", "latency_budget_ms",
    "smoothing", "smoothing_strength", "smoothing_max_gap_s", "palette", "min_score",
)  # fmt: skip
#: Parameters that take effect at once (_apply_runtime_parameter); the others are read on configure.
RUNTIME_PARAMETERS = (
    "min_score", "cer_topk", "latency_budget_ms", "max_rate_hz", "max_batch", "batch_wait_ms", "smoothing_strength", "smoothing_max_gap_s",
    "segments_min_area_px", "segments_stuff_classes",
)  # fmt: skip


class FrameTag(NamedTuple):
    """What the node needs back with a frame's outputs (the stream carries it untouched)."""

    header: object  # std_msgs/Header of the input image
    camera_info: CameraInfo | None
    activation: int  # OvsegNode._activation on arrival: published only within the same one


class OvsegNode(LifecycleNode):
    """Segments every camera frame into the classes of the current vocabulary."""

    def __init__(self, **kwargs) -> None:
        super().__init__("ovseg", **kwargs)
        refuse_unknown_transitions(self)
        declare_parameters(self)
        self._stats = FrameStats()  # every camera's frames, over the node's life
        self._camera_stats: dict[str, FrameStats] = {}  # camera name -> its own, over the node's life
        self._camera_unpaired: dict[str, UnpairedFrames] = {}  # camera name -> its frames without partners, over the node's life
        self._cameras: dict[str, CameraIO] = {}  # this configuration's
        self._vocabularies = VocabularyManager()  # versions count over the node's life
        self._pipeline: FramePipeline | None = None
        self._stream: FrameStream | None = None
        self._classes: ClassState | None = None
        self._class_map: ClassMapTopics | None = None
        self._active = False
        self._publisher_thread: threading.Thread | None = None
        self._stop = threading.Event()  # tells the publishing thread to exit
        self._weights_note = ""
        self._configure_error: str | None = None
        self._last_frame_error = ""
        self._last_frame_error_at = -float("inf")  # time.monotonic() of it
        self._output_lock = threading.RLock()  # see the module docstring
        self._activation = 0
        self._configuration = 0
        self._unconfigured = True  # configure-time parameters can be set only then
        self.finalized = False  # True after the shutdown transition
        self._vocabulary_changes = VocabularyChanges(self._vocabularies, self._current_vocabulary, self._install_vocabulary, lambda: self._configure_error or "")
        self._shutting_down: futures.Future = futures.Future()  # done on shutdown: waiting callbacks answer
        self._diagnostics = SegmentationDiagnostics(self, self._stats, self._node_state)
        # Text encoding for a new vocabulary must not hold up image callbacks.
        self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary, callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(lambda params: validate_parameters(params, self._unconfigured))
        self.add_post_set_parameters_callback(self._on_parameters_set)

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
        except Exception as exc:  # the node stays up and says why; a bug's traceback goes to the log too
            expected = isinstance(exc, (CheckpointError, VocabularyError, ValueError, OSError, RuntimeError))
            self._vocabularies.attach(None)
            self._configure_error = f"{type(exc).__name__}: {exc}"
            self._unconfigured = True
            self.get_logger().error(f"configure failed, the node stays unconfigured: {self._configure_error}" + ("" if expected else f"\n{traceback.format_exc()}"))
            return TransitionCallbackReturn.FAILURE
        self._configure_error = None
        self._stop = threading.Event()
        self._cameras = {}
        for name, prefix in zip(self._param("cameras"), prefixes):
            unpaired = self._camera_unpaired.setdefault(name, UnpairedFrames())
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
            self._class_map = ClassMapTopics(self)
            inputs = self._input_settings()
            for camera in self._cameras.values():
                camera.create_publishers(self, inputs)
                camera.subscribe(self, inputs, self._on_image, lambda: self._active)
                self._diagnostics.add_camera(camera)
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
            self._class_map.publish(self._classes.vocabulary, self._param("min_score"))  # a change made while inactive was not published
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
        self._vocabulary_changes.close()
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
            for publisher in classes.all_mask_publishers() if classes else []:
                self.destroy_lifecycle_publisher(publisher)
            for camera in self._cameras.values():
                camera.destroy(self)
            if self._class_map is not None:
                self._class_map.destroy()
            self._diagnostics.remove_cameras()
            self._cameras, self._class_map, self._pipeline = {}, None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _build_pipeline(self) -> FramePipeline:
        """Model, vocabulary encoder, smoothing and CER budget of a new configuration."""
        model_name = self._param("model")
        compile_mode, compile_note = compile_mode_for_threads(None if self._param("compile") == "off" else self._param("compile"))
        if compile_note:
            self.get_logger().warning(compile_note)
        settings = PipelineSettings(
            **{name: self._param(name) for name in PIPELINE_PARAMETERS},
            # Torch's threads spin on every core; one left free keeps image callbacks flowing
            # (with all cores taken, frames overflowed the subscription queue).
            cpu_threads=self._param("cpu_threads") or max(1, (os.cpu_count() or 2) - 1),
            compile_mode=compile_mode,
        )
        pipeline, weights = build_pipeline(settings, self._vocabularies)
        pipeline.segment_settings = SegmentSettings(self._param("segments_min_area_px"), stuff_classes(self._param("segments_stuff_classes")))
        if weights is None:
            self._weights_note = "RANDOM weights: labels are meaningless"
            self.get_logger().warning(
                f"no weights for {model_name}: running with RANDOM weights, labels are meaningless. "
                f"Fetch the authors' checkpoint with `python -m ovseg_ros.commands.fetch_weights {model_name}` "
                "(or set weights:=auto to fetch it on configure), or pass weights:=/path/to/checkpoint (see README)."
            )
        else:
            self._weights_note = str(weights)
        cer_topk = pipeline.cer_topk
        self.get_logger().info(
            f"model {model_name} on {pipeline.device} ({settings.precision}, compile {compile_mode or 'off'}), weights: {weights or 'random'}, "
            f"category early rejection: {f'top-{cer_topk}' if cer_topk else 'off'}; temporal smoothing: {pipeline.smoother.mode}"
        )
        return pipeline

    def _input_settings(self) -> InputSettings:
        use_depth = self._param("use_depth")
        slop = self._param("depth_sync_slop_s" if use_depth else "camera_info_sync_slop_s")
        return InputSettings(self._param("input_transport") == "compressed", self._param("use_camera_info"), use_depth, slop)

    # -- frames in (executor threads: short, never wait for the model) ------------------

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
        settings = OutputSettings(
            self._param("publish_color"), self._param("publish_overlay"), self._param("publish_confidence"),
            self._param("overlay_alpha"), self._param("points_stride"), self._param("points_min_score"), self._param("points_organized"),
        )  # fmt: skip
        masks = classes.masks[camera.name].subscribed_ids(classes.mask_topics) if self._param("publish_masks") else ()
        return output_request(camera, settings, masks, classes.vocabulary.version)

    # -- vocabulary changes (one path: VocabularyChanges) -------------------------------

    def _on_set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response) -> SetVocabulary.Response:
        try:
            change = self._vocabulary_changes.submit(lambda names: edit_vocabulary(names, list(request.labels), request.mode))
            futures.wait([change, self._shutting_down], return_when=futures.FIRST_COMPLETED)
            if not change.done() or change.cancelled():
                raise VocabularyError("the node is shutting down")
            vocabulary = change.result()
            # The parameter shows the classes in force: _on_parameters_set sees they are already.
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

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        """Apply accepted parameters: runtime ones at once, a new vocabulary as a change
        (encoded on its worker, so the parameter services, lifecycle and diagnostics never wait)."""
        for param in params:
            if param.name == "vocabulary":
                classes = self._classes
                if classes is None or tuple(param.value) == classes.vocabulary.names:  # unconfigured (configure reads it), or in force
                    continue
                try:
                    self._vocabulary_changes.submit(lambda _current, names=list(param.value): names).add_done_callback(self._vocabulary_parameter_applied)
                except VocabularyError:  # shutting down
                    pass
            elif param.name in RUNTIME_PARAMETERS:
                self._apply_runtime_parameter(param.name, param.value)

    def _vocabulary_parameter_applied(self, change: futures.Future) -> None:
        if not change.cancelled() and change.exception() is not None:
            self.get_logger().error(f"vocabulary parameter not applied, the classes stay as they were: {change.exception()}")

    def _apply_runtime_parameter(self, name: str, value) -> None:
        """A parameter that takes effect at once (configure-time ones apply on configure)."""
        pipeline, stream = self._pipeline, self._stream
        if pipeline is None or stream is None:
            return
        if name == "min_score":
            pipeline.min_score = value
            with self._output_lock:
                if self._classes is not None:
                    self._class_map.publish_label_info(self._classes.vocabulary, value)  # its threshold
        elif name == "cer_topk" and pipeline.segmenter.supports_cer:
            pipeline.set_cer_topk(value or None)
        elif name == "latency_budget_ms":
            pipeline.set_latency_budget(value)
        elif name == "max_rate_hz":
            stream.max_rate_hz = value
        elif name == "max_batch":
            stream.max_batch = value
        elif name == "batch_wait_ms":
            stream.batch_wait_s = value / 1000.0
        elif name == "smoothing_strength":
            pipeline.smoother.strength = value
        elif name == "smoothing_max_gap_s":
            pipeline.smoother.max_gap_s = value
        elif name == "segments_min_area_px":
            pipeline.segment_settings = replace(pipeline.segment_settings, min_area_px=value)
        elif name == "segments_stuff_classes":
            pipeline.segment_settings = replace(pipeline.segment_settings, stuff_classes=stuff_classes(value))

    def _current_vocabulary(self) -> tuple[Vocabulary | None, int]:
        with self._output_lock:
            classes, configuration = self._classes, self._configuration
        return (classes.vocabulary if classes else None), configuration

    def _install_vocabulary(self, vocabulary: Vocabulary, configuration: int) -> Vocabulary:
        with self._output_lock:
            if self._configuration != configuration:
                raise VocabularyError("the node was cleaned up or shut down while the vocabulary was encoded: not applied")
            vocabulary = self._install_classes(vocabulary)
        self.get_logger().info(f"vocabulary v{vocabulary.version}: {', '.join(vocabulary.names)}")
        return vocabulary

    def _install_classes(self, vocabulary: Vocabulary) -> Vocabulary:
        """Make ``vocabulary`` current under the next version, with its mask topics and class map:
        every consumer of a vocabulary learns of it here, once. Under the output lock: a frame
        labeled with it is published after its class map."""
        with self._output_lock:
            vocabulary = self._vocabularies.install(vocabulary)
            self._classes = class_state(self, vocabulary, self._cameras, self._classes, self._active)
            self._class_map.publish(vocabulary, self._param("min_score"))
        return vocabulary

    # -- frames out (the publishing thread) ---------------------------------------------

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
            messages = frame_messages(tag.header, outputs, self._param("model"))
            for publisher, msg in ((camera.label_pub, messages.label), (camera.color_pub, messages.color), (camera.overlay_pub, messages.overlay),
                                   (camera.confidence_pub, messages.confidence)):
                if msg is not None:
                    publisher.publish(msg)
            # The class state cannot be swapped meanwhile (the lock); masks of another vocabulary are not published.
            classes = self._classes
            if messages.masks and classes is not None and classes.vocabulary.version == outputs.vocabulary.version:
                for class_id, mask in messages.masks.items():
                    classes.masks[camera.name].publishers[classes.mask_topics[class_id]].publish(mask)
            if tag.camera_info is not None:
                tag.camera_info.header = tag.header  # the paired one: same stamp within the slop
                camera.camera_info_pub.publish(tag.camera_info)
            if messages.points is not None:
                camera.points_pub.publish(messages.points)
            for publisher, msg in ((camera.detections_pub, messages.detections), (camera.detections_3d_pub, messages.detections_3d),
                                   (camera.detection_markers_pub, messages.detection_markers), (camera.instances_pub, messages.instances)):
                if msg is not None and publisher is not None:
                    publisher.publish(msg)
            info = self._with_node_times(messages.info, result, (time.perf_counter() - start) * 1000.0)
            camera.info_pub.publish(info)
        stats.frame_processed(info.end_to_end_ms)

    def _with_node_times(self, info, result: StreamResult, publish_ms: float):
        """The frame's info with what only the node knows: camera, batch, queue and end-to-end times."""
        ticket = result.ticket
        info.camera = ticket.camera
        info.batch_size, info.model_pass = ticket.batch_size, ticket.model_pass
        info.queue_ms = result.queue_ms
        info.postprocess_ms += publish_ms
        stamp = rclpy.time.Time.from_msg(info.header.stamp, clock_type=self.get_clock().clock_type)
        info.end_to_end_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        return info

    def _frame_failed(self, stats: FrameStats, message: str) -> None:
        stats.frame_failed()
        self._last_frame_error, self._last_frame_error_at = message, time.monotonic()
        self.get_logger().error(f"dropped frame, {message}", throttle_duration_sec=LOG_THROTTLE_S)

    def _node_state(self) -> NodeState:
        """What /diagnostics reports, read once per period."""
        pipeline, classes = self._pipeline, self._classes
        return NodeState(
            configure_error=self._configure_error,
            configured=pipeline is not None,
            active=self._active,
            device=str(pipeline.device) if pipeline else "none",
            weights_note=self._weights_note,
            vocabulary_size=len(classes.vocabulary.names) if classes else 0,
            vocabulary_version=classes.vocabulary.version if classes else 0,
            cer_topk=(pipeline.cer_topk or 0) if pipeline else 0,
            cameras=list(self._cameras),
            last_frame_error=self._last_frame_error,
            last_frame_error_at=self._last_frame_error_at,
            partner_names=self._input_settings().partner_names,
            values={name: self._param(name) for name in ("model", "latency_budget_ms", "max_batch")},
        )


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
    is, even in the clean-up.) Last, the process's DDS participant is deleted
    (:func:`~ovseg_ros.ros.environment.destroy_participant`), so nothing of it is left in ``/dev/shm``.
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)  # written in whichever thread the signal lands
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    context = Context()  # its own, so that it can be destroyed at the end whoever holds the node
    rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        failed = _run_until_signal(context, wake_read, wake_write)
    finally:
        context.try_shutdown()
        destroy_participant(context)
    return 1 if failed else 0


def _run_until_signal(context: Context, wake_read: int, wake_write: int) -> bool:
    """The node and its executor, from start-up to an orderly shutdown; True if the executor
    failed. Its objects are gone when it returns (the participant lives as long as they do)."""
    node = OvsegNode(context=context)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
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
    shutdown_executor(executor)  # the callbacks running finish, answers go out
    if not node.finalized:  # else a lifecycle manager shut it down already
        node.trigger_shutdown()
    node.destroy_node()
    return bool(failures)
