"""The frame path: one camera image in, everything the node publishes out, ROS-free.

    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("none"))
    outputs = pipeline.process(RawImageData("rgb8", 480, 640, 1920, data), stamp_s, OutputRequest(color=True))
    outputs.labels, outputs.color, outputs.pixel_fractions, outputs.timings_ms
    outputs = pipeline.process(image, stamp_s, OutputRequest(points=True), depth=DepthData(depth_image, intrinsics))
    outputs.points["x"], outputs.class_points.centroids                  # (N,) records, per-class 3D

A frame walks down through the stages, each called from here and in this order:

1. :meth:`FramePipeline.prepare`: decode (:mod:`~ovseg_ros.engine.image_codec`, and the depth image
   of a frame that has one, :func:`~ovseg_ros.engine.points.decode_depth`, on the CPU), upload
   through persistent pinned staging buffers, resize to the model's input
   (:meth:`Segmenter.preprocess`), on an upload stream of its own on CUDA.
2. :meth:`FramePipeline.infer`: model (:class:`Segmenter`), temporal smoothing of the coarse
   scores (:class:`TemporalSmoother`), labels by a chunked argmax at the image's size
   (:meth:`ClassScores.best`: no (T, H, W) scores ever exist), rendering of the requested
   outputs (:class:`Renderer`), with depth the labeled points and their per-class summary
   (:func:`~ovseg_ros.engine.points.back_project`), then one device-to-host copy per output into
   pinned buffers, all queued on the compute stream without waiting for it.
3. :meth:`FramePipeline.finish`: waits for that frame's copies (then copies the compact
   points, whose number it has just read); stage times from CUDA events.

:meth:`FramePipeline.process` runs the three in series; :class:`~ovseg_ros.engine.frame_stream.FrameStream`
runs them overlapped, on threads of their own. Both are the same frame path.
:meth:`FramePipeline.infer_batch` (and :meth:`~FramePipeline.process_batch`) labels several
frames with one vocabulary and one CER K, one pass of the model per model input size (SAN
whole, SED's CLIP tower), each frame with its own requested outputs: the node's frames
waiting from several cameras, and offline labeling. Each frame names its camera
(``source`` of :meth:`~FramePipeline.prepare`), whose temporal smoothing past is its own.
On the CPU the same code runs with tensors that share memory with numpy arrays, no
copies, and the renderer's cv2 paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ovseg_ros.engine.image_codec import decode_compressed, decode_image
from ovseg_ros.engine.cer_budget import CerBudget
from ovseg_ros.models.base import stage
from ovseg_ros.models.scores import ClassScores
from ovseg_ros.engine.points import POINT_DTYPE, ClassPoints, PinholeIntrinsics, back_project, class_summary, decode_depth, organized_points, points_of
from ovseg_ros.engine.rendering import Renderer
from ovseg_ros.engine.segments import Segment, SegmentSettings, find_segments, instance_image
from ovseg_ros.engine.tracking import SegmentTracker
from ovseg_ros.engine.segmenter import Segmenter
from ovseg_ros.engine.smoothing import TemporalSmoother
from ovseg_ros.engine.vocabulary import Vocabulary, VocabularyManager

#: Frames whose outputs may be alive at once (being published, in the stream's hand-off,
#: being inferred): the pinned output buffers are a ring this long, so a frame's arrays are
#: not overwritten while its messages are still being built.
OUTPUT_RING = 4


@dataclass(frozen=True)
class RawImageData:
    """The fields of a ``sensor_msgs/Image`` (``data`` may be any buffer: no copy is made of a
    writable one, such as a message's array; a read-only one, such as ``bytes``, is copied once)."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes | memoryview
    is_bigendian: bool = False


@dataclass(frozen=True)
class CompressedImageData:
    """The fields of a ``sensor_msgs/CompressedImage`` (jpeg, png or tiff; ``format`` as image_transport or a
    driver writes it, see :mod:`ovseg_ros.engine.image_codec`)."""

    format: str
    data: bytes | memoryview


ImageData = RawImageData | CompressedImageData


@dataclass(frozen=True)
class DepthData:
    """A frame's depth image registered to its colour camera (16UC1 mm or 32FC1 m, see
    :mod:`ovseg_ros.engine.points`) and the colour camera's intrinsics."""

    image: RawImageData
    intrinsics: PinholeIntrinsics


@dataclass(frozen=True)
class OutputRequest:
    """Which outputs to compute besides labels, class fractions and timings (they cost time).

    ``masks`` are class ids of vocabulary version ``masks_version``; they are rendered only
    when the frame is labeled with that version (after a vocabulary change the ids may mean
    other classes).
    """

    color: bool = False
    overlay: bool = False
    confidence: bool = False
    masks: tuple[int, ...] = ()
    masks_version: int = 0
    overlay_alpha: float = 0.5
    #: The labeled point cloud, for a frame with depth (its per-class summary comes with any
    #: frame with depth). ``points_stride``: every n-th pixel and row; pixels scoring below
    #: ``points_min_score`` give no point.
    points: bool = False
    points_stride: int = 2
    points_min_score: float = 0.0
    #: The cloud pixel-aligned instead: (H, W) records, stride 1, x/y/z NaN where there is no point.
    points_organized: bool = False
    #: The frame's segments (connected regions per class, stuff classes whole), with their
    #: scores, a 3D box for a frame with depth, and a track id (:mod:`~ovseg_ros.engine.segments`).
    segments: bool = False
    #: With segments: the (H, W) uint16 image of their track ids (0 = none).
    instances: bool = False


@dataclass
class FrameOutputs:
    """Everything published for one frame, as host arrays ready to copy into messages.

    Attributes:
        labels: (H, W) uint8 (<= 254 classes) or uint16; ``vocabulary.unlabeled_id`` = none.
        vocabulary: the vocabulary that labeled the frame.
        pixel_fractions: (T,) float32 share of the image's pixels per class.
        present_class_ids: (P,) uint16 ids with at least one pixel, ascending.
        color, overlay: (H, W, 3) uint8 RGB, when requested.
        confidence: (H, W) uint8, winning score x 255, when requested.
        masks: class id -> (H, W) uint8 (255 = class), for the requested ids.
        points: (N,) :data:`~ovseg_ros.engine.points.POINT_DTYPE` records (x, y, z, rgb, score,
            label), when requested and the frame has depth; (H, W) records when organized.
        class_points: the 3D summary of the present classes (parallel to
            ``present_class_ids``), for a frame with depth.
        segments: the frame's segments with their track ids, when requested (ordered by class,
            then first pixel); instances: (H, W) uint16 their track ids (0 = none), when requested.
        cer_topk: CER's K that this frame ran with (0: off, or a model without CER).
        smoothing_reset: why temporal smoothing restarted at this frame, or None.
        timings_ms: ``decode``, ``preprocess`` (upload, resize), ``model``, ``postprocess``
            (smoothing, argmax, rendering) and ``download`` (device to host).
    """

    labels: np.ndarray
    vocabulary: Vocabulary
    pixel_fractions: np.ndarray
    present_class_ids: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    points: np.ndarray | None = None
    class_points: ClassPoints | None = None
    segments: list[Segment] | None = None
    instances: np.ndarray | None = None
    cer_topk: int = 0
    smoothing_reset: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class PipelineError(RuntimeError):
    """A frame that cannot be processed for a reason other than its pixels (no vocabulary)."""


class StageClock:
    """Stage boundaries of one frame: CUDA events on the device (no synchronisation), wall
    time on the CPU, where every operation has finished when it returns. Host-only work
    (decoding) is timed on the host in either case (``host_ms``)."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []
        self.host_ms: dict[str, float] = {}

    def mark(self, name: str, stream: torch.cuda.Stream | None = None) -> None:
        """The end of stage ``name`` (the start, for the first mark)."""
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream)
            self._marks.append((name, event))
        else:
            self._marks.append((name, time.perf_counter()))

    def elapsed_ms(self) -> dict[str, float]:
        """Milliseconds per stage; on CUDA, once the last marked event has completed."""
        times = dict(self.host_ms)
        for (_, start), (name, end) in zip(self._marks, self._marks[1:]):
            times[name] = start.elapsed_time(end) if self._cuda else (end - start) * 1000.0
        return times


class PinnedRing:
    """Page-locked host buffers, reused: a fresh ``pin_memory()`` per frame costs more than
    the copy. ``slot`` picks one of ``size`` sets, so buffers of frames still in use are
    not overwritten.

    A set keeps a buffer per shape and dtype of each name, so cameras of several resolutions
    taking turns reuse their own buffers; at most ``shapes`` per name and slot, the least
    recently used making room (vocabularies of ever new class counts do not pile up).
    """

    def __init__(self, size: int, shapes: int = 8) -> None:
        self.size = size
        self.shapes = shapes
        self._buffers: dict[tuple, dict[tuple, torch.Tensor]] = {}  # (slot, name) -> (shape, dtype) -> buffer, oldest use first

    def buffer(self, slot: int, name: str, like: torch.Tensor) -> torch.Tensor:
        """A pinned buffer shaped and typed like ``like`` for ``name`` of ``slot``."""
        buffers = self._buffers.setdefault((slot % self.size, name), {})
        key = (tuple(like.shape), like.dtype)
        buffer = buffers.pop(key, None)
        if buffer is None:
            if len(buffers) >= self.shapes:
                del buffers[next(iter(buffers))]
            buffer = torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
        buffers[key] = buffer  # now the most recently used
        return buffer


@dataclass
class PreparedFrame:
    """A frame on the device, resized for the model (output of :meth:`FramePipeline.prepare`)."""

    rgb: np.ndarray  # (H, W, 3) uint8 host image (optical flow runs on the CPU)
    image: torch.Tensor  # (H, W, 3) uint8 on the device (the overlay's background)
    model_input: torch.Tensor  # (1, 3, H', W') float32 0..255
    clock: StageClock
    ready: torch.cuda.Event | None  # CUDA: the upload stream's work for this frame is queued before it
    depth: torch.Tensor | None = None  # (H_d, W_d) uint16 mm or float32 m on the device
    intrinsics: PinholeIntrinsics | None = None
    source: str = ""  # the camera: its frames are smoothed (and tracked) with its own past
    host_depth: np.ndarray | None = None  # the decoded depth image, for segments' 3D boxes on the host


@dataclass
class InferredFrame:
    """A frame whose outputs are queued for download (output of :meth:`FramePipeline.infer`).

    ``host`` holds the host arrays ``labels``, ``counts`` and the requested images (and with
    depth ``points_count`` and ``class_summary``); on CUDA the device may still be writing
    them until ``done``. ``device_points`` are the point records, copied once their number is known.
    """

    host: dict[str, np.ndarray]
    vocabulary: Vocabulary
    mask_ids: list[int]
    cer_topk: int
    smoothing_reset: str | None
    clock: StageClock
    done: torch.cuda.Event | None
    device_points: torch.Tensor | None = None
    slot: int = 0
    request: OutputRequest = OutputRequest()
    stamp_s: float = 0.0
    source: str = ""
    host_depth: np.ndarray | None = None  # with the intrinsics, for the segments' 3D boxes
    intrinsics: PinholeIntrinsics | None = None


class FramePipeline:
    """Decode, preprocess, model, smoothing, labels and rendering of camera frames.

    Args:
        segmenter: the model facade (device, precision, CER).
        vocabularies: whose :attr:`~VocabularyManager.current` vocabulary labels each frame,
            read once per frame.
        smoother: temporal smoothing of the coarse scores (mode ``"none"`` to switch it off),
            a past per camera (``source``).
        palette: class colours, ``"name"`` or ``"index"`` (see :mod:`ovseg_ros.engine.rendering`).
        min_score: pixels whose best score is below this are unlabeled.
        cer_topk: SED's category early rejection: classes outside the top K at every pixel
            are dropped between decoder stages (None: off); the most a frame uses. The pipeline
            is the one owner of K: it gives each model call its frame's K.
        latency_budget_ms: with CER, lower K while the model's p95 exceeds this
            (:class:`CerBudget`); 0 = off.
        torch_rendering: render with torch ops (None: on CUDA only; on the CPU cv2 is faster,
            but a machine without OpenCV can render with torch there too).

    :meth:`prepare` is called from one thread at a time and :meth:`infer` (and
    :meth:`infer_batch`) from one thread at a time (they may be two different threads);
    :meth:`finish` from any.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        vocabularies: VocabularyManager,
        smoother: TemporalSmoother,
        palette: str = "name",
        min_score: float = 0.0,
        latency_budget_ms: float = 0.0,
        torch_rendering: bool | None = None,
        cer_topk: int | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.vocabularies = vocabularies
        self.smoother = smoother
        self.palette = palette
        self.min_score = min_score
        self._latency_budget_ms = latency_budget_ms
        self.set_cer_topk(cer_topk)
        self.torch_rendering = torch_rendering
        self.device = segmenter.device
        self._cuda = self.device.type == "cuda"
        # A vocabulary change is noticed once on each thread that has consumers of it, at the
        # first frame labeled with it (frames carry their vocabulary: the frames of the old one
        # still in flight finish with it), and each consumer is told once.
        # By identity: a vocabulary not installed (a warm-up's) has version 0, as any other.
        self._inferring_vocabulary: Vocabulary | None = None  # infer's thread: renderer, smoother
        self._finishing_vocabulary: Vocabulary | None = None  # finish's thread (frames finish in order): CER budget, tracker
        self._renderer: Renderer | None = None
        if self._cuda:
            self._upload_stream = torch.cuda.Stream(self.device)
            self._compute_stream = torch.cuda.Stream(self.device)
            self._staging = PinnedRing(2)
            self._staging_free: list[torch.cuda.Event | None] = [None, None]
            self._downloads = PinnedRing(OUTPUT_RING)
        self._frames_prepared = 0
        self._frames_inferred = 0
        #: What makes a segment (settable at run time; read per frame).
        self.segment_settings = SegmentSettings()
        #: Track ids of each camera's segments, in frame order (finish).
        self.tracker = SegmentTracker()

    # -- stages ---------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self, image: ImageData, depth: DepthData | None = None, source: str = "") -> PreparedFrame:
        """Decode ``image`` (and ``depth``) of camera ``source`` and queue the upload and resize.
        Raises :class:`ImageError` for bad pixels or depth."""
        clock = StageClock(self.device)
        start = time.perf_counter()
        with stage("decode"):
            rgb = _writable(_decode(image))
            depth_pixels = None
            if depth is not None:
                depth.intrinsics.check()
                raw = depth.image
                depth_pixels = _writable(decode_depth(raw.encoding, raw.height, raw.width, raw.step, raw.data, raw.is_bigendian))
        clock.host_ms["decode"] = (time.perf_counter() - start) * 1000.0
        intrinsics = depth.intrinsics if depth is not None else None
        if not self._cuda:
            clock.mark("start")
            pixels = torch.from_numpy(rgb)
            with stage("preprocess"):
                model_input = self.segmenter.preprocess(pixels)
            clock.mark("preprocess")
            device_depth = torch.from_numpy(depth_pixels) if depth_pixels is not None else None
            return PreparedFrame(rgb, pixels, model_input, clock, None, device_depth, intrinsics, source, depth_pixels)

        slot = self._frames_prepared % 2
        self._frames_prepared += 1
        staging = self._staging.buffer(slot, "rgb", torch.from_numpy(rgb))
        depth_staging = self._staging.buffer(slot, "depth", torch.from_numpy(depth_pixels)) if depth_pixels is not None else None
        if self._staging_free[slot] is not None:
            self._staging_free[slot].synchronize()  # its copy of two frames ago has finished
        staging.numpy()[...] = rgb
        if depth_staging is not None:
            depth_staging.numpy()[...] = depth_pixels
        with torch.cuda.stream(self._upload_stream), stage("preprocess"):
            clock.mark("start", self._upload_stream)
            pixels = staging.to(self.device, non_blocking=True)
            device_depth = depth_staging.to(self.device, non_blocking=True) if depth_staging is not None else None
            uploaded = torch.cuda.Event()
            uploaded.record(self._upload_stream)
            self._staging_free[slot] = uploaded
            model_input = self.segmenter.preprocess(pixels)
            clock.mark("preprocess", self._upload_stream)
            ready = torch.cuda.Event()
            ready.record(self._upload_stream)
        return PreparedFrame(rgb, pixels, model_input, clock, ready, device_depth, intrinsics, source, depth_pixels)

    @torch.inference_mode()
    def infer(self, prepared: PreparedFrame, stamp_s: float, request: OutputRequest = OutputRequest(), vocabulary: Vocabulary | None = None) -> InferredFrame:
        """Label ``prepared`` with ``vocabulary`` (default: the current one) and queue its outputs' download."""
        return self.infer_batch([prepared], [stamp_s], [request], vocabulary)[0]

    def finish(self, inferred: InferredFrame) -> FrameOutputs:
        """The frame's outputs once its downloads have completed, with its stage times."""
        if inferred.done is not None:
            inferred.done.synchronize()
        host = inferred.host
        timings = inferred.clock.elapsed_ms()
        timings.pop("wait", None)  # between the upload and compute streams: queueing, not work
        if inferred.vocabulary is not self._finishing_vocabulary:
            self._finishing_vocabulary = inferred.vocabulary
            self._finish_with_new_vocabulary(inferred.vocabulary)
        if self.cer_budget is not None:
            self.cer_budget.observe(timings["model"], topk=inferred.cer_topk)
        labels, counts = host["labels"], host["counts"]
        names = inferred.vocabulary.names
        present_class_ids = np.flatnonzero(counts[: len(names)]).astype(np.uint16)
        points = class_points = None
        if "class_summary" in host:
            class_points = ClassPoints.from_summary(host["class_summary"], present_class_ids)
        if inferred.device_points is not None:
            points = points_of(self._compact_points_to_host(inferred), int(host["points_count"][0]))
        elif "organized_points" in host:
            points = host["organized_points"].view(POINT_DTYPE)[..., 0]
        segments = self._segments(inferred, labels, present_class_ids) if inferred.request.segments else None
        instances = instance_image(segments, *labels.shape) if segments is not None and inferred.request.instances else None
        return FrameOutputs(
            labels=labels.view(np.uint16) if labels.dtype == np.int16 else labels,  # ids >= 32768 travel wrapped
            vocabulary=inferred.vocabulary,
            pixel_fractions=(counts[: len(names)] / labels.size).astype(np.float32),
            present_class_ids=present_class_ids,
            color=host.get("color"),
            overlay=host.get("overlay"),
            confidence=host.get("confidence") if inferred.request.confidence else None,
            masks=dict(zip(inferred.mask_ids, host["masks"])) if inferred.mask_ids else {},
            points=points,
            class_points=class_points,
            segments=segments,
            instances=instances,
            cer_topk=inferred.cer_topk,
            smoothing_reset=inferred.smoothing_reset,
            timings_ms=timings,
        )

    def _segments(self, inferred: InferredFrame, labels: np.ndarray, present_class_ids: np.ndarray) -> list[Segment]:
        """The frame's segments on the host (labels and scores are there already), with their
        3D boxes from the decoded depth and their track ids (frames finish in order)."""
        labels = labels.view(np.uint16) if labels.dtype == np.int16 else labels
        segments = find_segments(
            labels, inferred.host["confidence"], inferred.vocabulary.names, self.segment_settings,
            present_class_ids=present_class_ids, depth=inferred.host_depth, intrinsics=inferred.intrinsics,
        )  # fmt: skip
        self.tracker.update(segments, inferred.stamp_s, labels.shape, inferred.source)
        return segments

    def process(
        self, image: ImageData, stamp_s: float, request: OutputRequest = OutputRequest(), vocabulary: Vocabulary | None = None, depth: DepthData | None = None
    ) -> FrameOutputs:
        """The three stages in series: one frame in, its outputs out."""
        return self.finish(self.infer(self.prepare(image, depth), stamp_s, request, vocabulary))

    @torch.inference_mode()
    def infer_batch(
        self, prepared: list[PreparedFrame], stamps_s: list[float], requests: list[OutputRequest], vocabulary: Vocabulary | None = None
    ) -> list[InferredFrame]:
        """:meth:`infer` of each frame (``requests``: one per frame), with one pass of the model
        per model input size where the model batches (:attr:`Segmenter.batches`: SAN whole,
        SED's CLIP tower): the frames waiting from several cameras, or a run of one camera's.

        Every frame of the call is labeled with the same vocabulary (``vocabulary``, default
        the current one, read once) and CER's K (:attr:`cer_topk`, read once). The frames are
        grouped by model input size, one pass per group in order of first appearance (a group
        of one frame, and every frame of a model without batches, has a pass of its own);
        temporal smoothing then runs on each frame in input order, each camera
        (``PreparedFrame.source``) with its own past. So the outputs, returned in input order,
        equal those of :meth:`infer` of each frame in turn (labels identical). A frame's
        ``model`` time is its group's whole pass (what a CER latency budget observes).

        Raises ValueError unless there is a stamp and a request per frame.
        """
        if not len(stamps_s) == len(requests) == len(prepared):
            raise ValueError(f"{len(prepared)} frames, {len(stamps_s)} stamps and {len(requests)} requests")
        vocabulary = vocabulary or self.vocabularies.current
        if vocabulary is None:
            raise PipelineError("no vocabulary is installed")
        cer_topk = self.cer_topk
        if vocabulary is not self._inferring_vocabulary:
            self._inferring_vocabulary = vocabulary
            self._infer_with_new_vocabulary(vocabulary)
        if not self._cuda:
            return self._infer_batch_on_device(prepared, vocabulary, stamps_s, requests, cer_topk)
        with torch.cuda.stream(self._compute_stream):
            self._wait_for_text_features(vocabulary)
            for frame in prepared:
                self._wait_for_upload(frame)
            inferred = self._infer_batch_on_device(prepared, vocabulary, stamps_s, requests, cer_topk)
            done = torch.cuda.Event()
            done.record(self._compute_stream)
        for frame in inferred:
            frame.done = done
        return inferred

    def process_batch(
        self, images: list[ImageData], stamps_s: list[float], requests: list[OutputRequest], vocabulary: Vocabulary | None = None
    ) -> list[FrameOutputs]:
        """:meth:`process` of each image (one request each), the model's passes batched as in
        :meth:`infer_batch`. Raises :class:`ImageError` if any image cannot be decoded (callers
        that skip bad frames alone prepare each one themselves, as ``label_bag`` does)."""
        prepared = [self.prepare(image) for image in images]
        return [self.finish(inferred) for inferred in self.infer_batch(prepared, stamps_s, requests, vocabulary)]

    def warm_up(self, vocabulary: Vocabulary, height: int = 480, width: int = 640) -> float:
        """One black frame through every stage (allocator, kernel selection); wall ms."""
        start = time.perf_counter()
        data = bytes(height * width * 3)
        every_output = OutputRequest(color=True, overlay=True, confidence=True, masks=(0,), masks_version=vocabulary.version)
        self.process(RawImageData("rgb8", height, width, width * 3, data), 0.0, every_output, vocabulary)
        self.smoother.reset()  # the warm-up frame is no camera's past
        if self.cer_budget is not None:
            self.cer_budget.reset()  # the warm-up frame's time is not the model's
        return (time.perf_counter() - start) * 1000.0

    @property
    def cer_topk(self) -> int | None:
        """CER's K for the next frame (the budget's, else the configured one; None: off)."""
        return self.cer_budget.topk if self.cer_budget is not None else None

    def set_cer_topk(self, cer_topk: int | None) -> None:
        """Change CER's (largest) K at run time; None switches CER off. Raises ValueError for a
        K below 1, or any K for a model without CER."""
        if cer_topk is not None and not self.segmenter.supports_cer:
            raise ValueError(f"{self.segmenter.model.variant} has no category early rejection (cer_topk is SED's)")
        if cer_topk is not None and cer_topk < 1:
            raise ValueError(f"cer_topk must be at least 1 (None: off), not {cer_topk}")
        self.cer_budget = CerBudget(cer_topk, self._latency_budget_ms) if cer_topk else None

    def set_latency_budget(self, budget_ms: float) -> None:
        """Change the latency budget at run time (0: off); kept over CER being switched off and on."""
        self._latency_budget_ms = budget_ms
        if self.cer_budget is not None:
            self.cer_budget.budget_ms = budget_ms

    # -- on the device ------------------------------------------------------------------

    def _wait_for_text_features(self, vocabulary: Vocabulary) -> None:
        """The compute stream waits until the vocabulary's text features are written (they were
        computed on the encoding thread's stream: the first frame after a change, or the warm-up
        frame, could otherwise read them half-written)."""
        if vocabulary.ready is not None:
            self._compute_stream.wait_event(vocabulary.ready)
        # Allocated on the encoding thread's stream, read on this one: not to be reused while
        # a frame still reads them after the vocabulary is replaced.
        vocabulary.text_features.record_stream(self._compute_stream)

    def _wait_for_upload(self, prepared: PreparedFrame) -> None:
        """The compute stream waits for ``prepared``'s upload and resize."""
        self._compute_stream.wait_event(prepared.ready)
        # Made on the upload stream, used on this one: not to be reused before this frame is done.
        for tensor in (prepared.image, prepared.model_input, prepared.depth):
            if tensor is not None:
                tensor.record_stream(self._compute_stream)

    def _infer_batch_on_device(
        self, prepared: list[PreparedFrame], vocabulary: Vocabulary, stamps_s: list[float], requests: list[OutputRequest], cer_topk: int | None
    ) -> list[InferredFrame]:
        first_slot = self._frames_inferred
        self._frames_inferred += len(prepared)
        if self._cuda:  # every frame of the batch has its outputs alive until it is finished
            self._downloads.size = max(self._downloads.size, len(prepared) + OUTPUT_RING - 1)
        groups: dict[object, list[int]] = {}  # frame indices of one model pass, in order of first appearance
        for index, frame in enumerate(prepared):
            groups.setdefault(tuple(frame.model_input.shape[-2:]) if self.segmenter.batches else index, []).append(index)
        # Smoothing blends each camera's frames in input order; without it a group is labeled
        # right after its pass.
        order = range(len(prepared)) if self.smoother.mode != "none" else [index for indices in groups.values() for index in indices]
        passes = iter(groups.values())
        held: dict[int, ClassScores] = {}  # scores of the frames not labeled yet
        inferred: list[InferredFrame | None] = [None] * len(prepared)
        for index in order:
            if index not in held:  # its group's pass, the next one, has not run yet
                # The next pass (its CUDA graphs) may overwrite the outputs of those before: a
                # frame still to be labeled keeps its coarse map, all that smoothing labels from.
                held = {i: scores.with_coarse(scores.coarse()) for i, scores in held.items()}
                indices = next(passes)
                held.update(zip(indices, self._model_pass([prepared[i] for i in indices], vocabulary, cer_topk)))
            inferred[index] = self._label_on_device(prepared[index], held.pop(index), vocabulary, stamps_s[index], requests[index], first_slot + index, cer_topk)
        return inferred

    def _model_pass(self, prepared: list[PreparedFrame], vocabulary: Vocabulary, cer_topk: int | None) -> list[ClassScores]:
        """Scores of each of ``prepared`` (frames of one model input size) from one call of the model."""
        for frame in prepared:
            frame.clock.mark("wait")  # since its preprocessing: the frames prepared after it, passes before its own
        if len(prepared) == 1:
            scores = [self.segmenter.scores(prepared[0].model_input, vocabulary.text_features, cer_topk)]
        else:
            images = torch.cat([frame.model_input for frame in prepared]).contiguous(memory_format=self.segmenter.memory_format)
            scores = self.segmenter.scores_batch(images, vocabulary.text_features, cer_topk)
        for frame in prepared:
            frame.clock.mark("model")  # the whole pass, for each frame
        return scores

    def _label_on_device(
        self, prepared: PreparedFrame, scores: ClassScores, vocabulary: Vocabulary, stamp_s: float, request: OutputRequest, slot: int, cer_topk: int | None
    ) -> InferredFrame:
        prepared.clock.mark("wait")  # the frames before it in the batch being postprocessed
        smoothing_reset = None
        if self.smoother.mode != "none":
            with stage("smoothing"):
                coarse = self.smoother.update(scores.coarse(), prepared.rgb, stamp_s, prepared.source)
                smoothing_reset = self.smoother.last_reset_reason
                scores = scores.with_coarse(coarse)
        with stage("postprocess"):
            confidence, best = scores.best(tuple(prepared.rgb.shape[:2]))
            unlabeled = vocabulary.unlabeled_id
            labels = best.to(torch.uint8 if unlabeled == 255 else torch.int32)
            if self.min_score > 0:
                labels.masked_fill_(confidence < self.min_score, unlabeled)  # no host sync, unlike boolean indexing
            renderer = self._renderer
            counts = renderer.class_counts(labels)
            device_outputs = {"labels": labels if unlabeled == 255 else labels.to(torch.int16), "counts": counts}
            if request.color or request.overlay:
                color = renderer.colorize(labels)
                if request.color:
                    device_outputs["color"] = color
                if request.overlay:
                    device_outputs["overlay"] = renderer.overlay(prepared.image, color, request.overlay_alpha)
            if request.confidence or request.segments:  # segments take their scores from it, on the host
                device_outputs["confidence"] = renderer.confidence(confidence)
            mask_ids = list(request.masks) if request.masks_version == vocabulary.version else []
            if mask_ids:
                device_outputs["masks"] = renderer.masks(labels, mask_ids)
            cloud = None
            if prepared.depth is not None:
                with stage("points"):
                    cloud = back_project(
                        labels, confidence, prepared.image, prepared.depth, prepared.intrinsics, len(vocabulary.names), request.points_stride, request.points_min_score
                    )
                    device_outputs["class_summary"] = class_summary(cloud)
                if request.points and request.points_organized:
                    device_outputs["organized_points"] = organized_points(
                        labels, confidence, prepared.image, prepared.depth, prepared.intrinsics, request.points_min_score
                    )
                elif request.points:
                    device_outputs["points_count"] = cloud.count
        prepared.clock.mark("postprocess")
        with stage("download"):
            host = {name: self._to_host(tensor, name, slot) for name, tensor in device_outputs.items()}
        prepared.clock.mark("download")
        device_points = cloud.records if cloud is not None and request.points and not request.points_organized else None
        return InferredFrame(host, vocabulary, mask_ids, cer_topk or 0, smoothing_reset, prepared.clock, None, device_points, slot, request, stamp_s, prepared.source, prepared.host_depth, prepared.intrinsics)

    def _to_host(self, tensor: torch.Tensor, name: str, slot: int) -> np.ndarray:
        """A host array of ``tensor``: on CUDA a queued copy into a pinned buffer; on the CPU a view."""
        if not self._cuda:
            return tensor.numpy()
        buffer = self._downloads.buffer(slot, name, tensor)
        buffer.copy_(tensor, non_blocking=True)
        return buffer.numpy()

    def _compact_points_to_host(self, inferred: InferredFrame) -> np.ndarray:
        """The point records on the host: on the CPU a view; on CUDA one copy of the valid rows
        only (their number was downloaded with the frame, and the frame is done)."""
        records = inferred.device_points
        if not self._cuda:
            return records.numpy()
        count = int(inferred.host["points_count"][0])
        buffer = self._downloads.buffer(inferred.slot, "points", records)
        buffer[:count].copy_(records[:count])
        return buffer.numpy()

    def _infer_with_new_vocabulary(self, vocabulary: Vocabulary) -> None:
        """The consumers on infer's thread, at the first frame labeled with ``vocabulary``."""
        self._renderer = Renderer(list(vocabulary.names), self.palette, self.device, torch_ops=self.torch_rendering)
        self.smoother.reset(f"vocabulary version {vocabulary.version}")

    def _finish_with_new_vocabulary(self, vocabulary: Vocabulary) -> None:
        """The consumers on finish's thread, at the first frame labeled with ``vocabulary``."""
        if self.cer_budget is not None:
            self.cer_budget.forget()  # another class count: the p95s measured at each K no longer hold
        self.tracker.reset(f"vocabulary version {vocabulary.version}")


def _writable(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` themselves, or a copy where they view a read-only buffer (a frame given as
    ``bytes``, the warm-up's): torch.from_numpy takes writable arrays only."""
    return pixels if pixels.flags.writeable else pixels.copy()


def _decode(image: ImageData) -> np.ndarray:
    if isinstance(image, CompressedImageData):
        return decode_compressed(image.format, image.data)
    return decode_image(image.encoding, image.height, image.width, image.step, image.data, image.is_bigendian)
