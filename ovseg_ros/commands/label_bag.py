"""Label every image frame of a recorded rosbag2 offline, into a new bag.

    python -m ovseg_ros.commands.label_bag IN OUT [--model NAME] [--weights PATH] [--device DEV]
        [--vocabulary CLASS [CLASS ...] | --vocabulary-file FILE] [--topics TOPIC [TOPIC ...]]
        [--outputs label,info,class_map,color,overlay,confidence,points,detections,detections_3d,...] [--depth-topic [IMAGE_TOPIC=]TOPIC]
        [--camera-info-topic [IMAGE_TOPIC=]TOPIC] [--depth-slop-s S] [--points-stride N] [--points-min-score S]
        [--batch N] [--storage mcap|sqlite3] [--overwrite]

Reads IN (rosbag2, mcap or sqlite3) and writes OUT (the same storage unless ``--storage``):
every message of IN copied through unchanged (same bytes, bag timestamps, QoS), and for
every frame on the chosen image topics (``sensor_msgs/Image`` and ``CompressedImage``;
default: all of them) the messages the node would publish, under the camera's namespace
(``/cam/image_raw`` -> ``/cam/segmentation/label``), with the frame's header and bag
timestamp. No frame is dropped and nothing waits for a clock: frames go through the node's
:class:`~ovseg_ros.engine.frame_pipeline.FramePipeline` as fast as the model goes, and their
messages are built by :mod:`ovseg_ros.ros.conversions`, as the node's are.

Outputs (``--outputs``; default label, info, class_map):
    label       <ns>/segmentation/label        sensor_msgs/Image mono8 (255 = unlabeled) or mono16
    info        <ns>/segmentation/info         ovseg_ros/SegmentationInfo (queue_ms, end_to_end_ms: 0)
    class_map   <ns>/segmentation/label_info   ovseg_ros/ClassMap, transient local: once per camera
    color, overlay, confidence                 <ns>/segmentation/<name>, sensor_msgs/Image
    points      <ns>/segmentation/points       sensor_msgs/PointCloud2 (x, y, z, rgb, score, label), with depth
    detections  <ns>/segmentation/detections   vision_msgs/Detection2DArray: a segment each (class, score, box, track id)
    detections_3d, detection_markers           vision_msgs/Detection3DArray and their MarkerArray, with depth
    instances   <ns>/segmentation/instances    sensor_msgs/Image mono16, the segments' track ids

``points`` pairs each frame with the depth image (``--depth-topic``, registered to the
colour camera, 16UC1 mm or 32FC1 m) and the camera_info (``--camera-info-topic``) nearest
its stamp, each less than ``--depth-slop-s`` apart (as the node's ``use_depth``); info then
carries the per-class 3D summary. A frame without both (or with a bad one) is labeled
without a cloud and counted ("N frames without depth"). In a batch each frame is
back-projected with its own depth.

``--batch N`` labels up to N consecutive frames of one camera of one size with one pass of
the model (:meth:`FramePipeline.infer_batch`: SAN in one pass, SED's CLIP tower on the
batch and its decoder per image; default: 8 on CUDA, 1 otherwise). The outputs are the
same as frame by frame (smoothing, when on, runs after the model on each frame in order),
written in the input's order with the frames' stamps. Each camera has a temporal smoother of its own
(``--smoothing``, as the node's parameter). A frame that cannot be decoded (bad encoding,
size or compressed data) is logged, skipped and counted, alone (the rest of its batch is
labeled); its message is still copied. OUT must not exist (``--overwrite`` replaces an existing bag);
the bag is written beside it first and moved into place once complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tqdm import tqdm

from ovseg_ros.ros.bags import typestore
from ovseg_ros.engine.frame_pipeline import DepthData, FrameOutputs, FramePipeline, OutputRequest, PreparedFrame
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.ros.conversions import class_map_msg, depth_data, frame_messages, image_data, stamp_ns
from ovseg_ros.ros.parameters import PARAMETERS_BY_NAME
from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.engine.segmenter import Segmenter, build_segmenter
from ovseg_ros.engine.smoothing import smoothing_mode
from ovseg_ros.commands.node_driver import package_share
from ovseg_ros.engine.vocabulary import VocabularyManager, load_class_list

IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
#: output name -> (topic under the camera's namespace, message type)
OUTPUTS = {
    "label": ("segmentation/label", "sensor_msgs/msg/Image"),
    "info": ("segmentation/info", "ovseg_ros/msg/SegmentationInfo"),
    "class_map": ("segmentation/label_info", "ovseg_ros/msg/ClassMap"),
    "color": ("segmentation/color", "sensor_msgs/msg/Image"),
    "overlay": ("segmentation/overlay", "sensor_msgs/msg/Image"),
    "confidence": ("segmentation/confidence", "sensor_msgs/msg/Image"),
    "points": ("segmentation/points", "sensor_msgs/msg/PointCloud2"),
    "detections": ("segmentation/detections", "vision_msgs/msg/Detection2DArray"),
    "detections_3d": ("segmentation/detections_3d", "vision_msgs/msg/Detection3DArray"),
    "detection_markers": ("segmentation/detection_markers", "visualization_msgs/msg/MarkerArray"),
    "instances": ("segmentation/instances", "sensor_msgs/msg/Image"),
}
DEFAULT_OUTPUTS = ("label", "info", "class_map")
#: Outputs that pair each frame with its depth image and camera_info.
DEPTH_OUTPUTS = frozenset({"points", "detections_3d", "detection_markers"})
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
EXIT_OUT_EXISTS = 2
#: ``--batch`` on CUDA for a model that batches (SAN, SED).
DEFAULT_CUDA_BATCH = 8
_NO_TIME = QosTime(sec=0, nsec=0)
#: The node's class map QoS (reliable, transient local, depth 1), recorded so that
#: ``ros2 bag play`` latches it as the node does.
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _NO_TIME, _NO_TIME, QosLiveliness.AUTOMATIC, _NO_TIME, False)


class LabelBagError(RuntimeError):
    """A bag that cannot be labeled as asked (no image topic, clashing cameras, unknown type)."""


class HeldWrites:
    """Messages for OUT at one place in IN's order (``write`` as a rosbags ``Writer``'s),
    until :meth:`OrderedWriter.release` sends them."""

    def __init__(self) -> None:
        self.messages: list[tuple[Connection, int, bytes]] = []
        self.released = False

    def write(self, connection: Connection, timestamp: int, data: bytes) -> None:
        self.messages.append((connection, timestamp, data))


class OrderedWriter:
    """Writes OUT in IN's order while frames wait for their batch: a frame's outputs hold
    their place (:meth:`hold`), and every message after them waits until they are released."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._queue: deque[HeldWrites] = deque()

    def copy(self, connection: Connection, timestamp: int, data: bytes) -> None:
        """A message that is ready now (a copied input message)."""
        if not self._queue:
            self._writer.write(connection, timestamp, data)
            return
        ready = self.hold()
        ready.write(connection, timestamp, data)
        self.release(ready)

    def hold(self) -> HeldWrites:
        """The place of messages that are not ready yet."""
        held = HeldWrites()
        self._queue.append(held)
        return held

    def release(self, held: HeldWrites) -> None:
        """``held``'s messages are complete: write what is ready from the front of the queue."""
        held.released = True
        while self._queue and self._queue[0].released:
            for message in self._queue.popleft().messages:
                self._writer.write(*message)

    @property
    def pending(self) -> int:
        return len(self._queue)


@dataclass
class PendingFrame:
    """A decoded frame waiting for its batch."""

    header: object  # std_msgs/Header of the input message
    timestamp: int  # bag time
    stamp_s: float
    prepared: PreparedFrame
    place: HeldWrites | None = None  # where its outputs go in OUT, once held


@dataclass
class BagCamera:
    """One labeled image topic: its pipeline (own smoother), output connections and the
    frames of its next batch."""

    topic: str
    namespace: str  # "/cam" for /cam/image_raw; "" for a top-level topic
    pipeline: FramePipeline
    outputs: dict[str, Connection] = field(default_factory=dict)  # output name -> connection in OUT
    class_map_version: int = 0  # vocabulary version of the last class map written
    batch: list[PendingFrame] = field(default_factory=list)  # consecutive frames of one model input size
    partners: DepthPartners | None = None  # with points: its depth images and camera_infos

    def write(self, writer: Writer | HeldWrites, timestamp: int, header, outputs: FrameOutputs, model: str) -> None:
        """The node's messages for one frame (:func:`frame_messages`, as the node builds them), at
        the frame's bag ``timestamp``; the class map when the frame's vocabulary is new."""
        connections = self.outputs
        if "class_map" in connections and self.class_map_version != outputs.vocabulary.version:
            writer.write(connections["class_map"], timestamp, serialize_message(class_map_msg(outputs.vocabulary, header.stamp)))
            self.class_map_version = outputs.vocabulary.version
        messages = frame_messages(header, outputs, model)
        for name in ("label", "color", "overlay", "confidence", "points", "detections", "detections_3d", "detection_markers", "instances", "info"):
            msg = getattr(messages, name)
            if name in connections and msg is not None:  # a frame without depth has no points
                writer.write(connections[name], timestamp, serialize_message(msg))


@dataclass
class LabelingSummary:
    """What a run did: frames labeled and skipped per run, wall seconds of the labeling loop."""

    frames_total: int = 0
    frames_labeled: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per skipped frame: topic, stamp, why
    without_depth: list[str] = field(default_factory=list)  # with points: one line per frame labeled without a cloud
    messages_copied: int = 0
    seconds: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames_labeled / self.seconds if self.seconds > 0 else 0.0


def camera_namespace(topic: str, msgtype: str) -> str:
    """``/cam/image_raw`` -> ``/cam``; ``/cam/image_raw/compressed`` (CompressedImage) -> ``/cam``."""
    if msgtype == "sensor_msgs/msg/CompressedImage" and topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    return topic.rsplit("/", 1)[0]


def choose_image_topics(connections: list[Connection], topics: list[str] | None, depth_topics: Iterable[str] = ()) -> dict[str, str]:
    """Topic -> message type of the image topics to label.

    ``topics`` given: exactly those (each must be an image topic of the bag). Otherwise
    every image topic but depth images (``depth_topics``, and another camera's depth topic
    by :func:`depth_topic_candidates`), except that a camera recorded both raw and compressed
    is labeled from its raw topic (same frames). Two topics whose outputs would share a
    namespace are refused.
    """
    images = {c.topic: c.msgtype for c in connections if c.msgtype in IMAGE_TYPES}
    if topics:
        unknown = [topic for topic in topics if topic not in images]
        if unknown:
            raise LabelBagError(f"not image topics of the bag: {', '.join(unknown)} (image topics: {', '.join(sorted(images)) or 'none'})")
        chosen = {topic: images[topic] for topic in topics}
    else:
        not_cameras = set(depth_topics) | {
            candidate for topic, msgtype in images.items() for candidate in depth_topic_candidates(camera_namespace(topic, msgtype)) if candidate != topic
        }
        chosen = {
            topic: msgtype
            for topic, msgtype in images.items()
            if topic not in not_cameras and not (topic.endswith("/compressed") and topic[: -len("/compressed")] in images)
        }
    if not chosen:
        raise LabelBagError("the bag has no sensor_msgs/Image or CompressedImage topic")
    by_namespace: dict[str, str] = {}
    for topic, msgtype in sorted(chosen.items()):
        namespace = camera_namespace(topic, msgtype)
        if namespace in by_namespace:
            raise LabelBagError(
                f"{by_namespace[namespace]} and {topic} would both write {namespace}/segmentation/...: choose one with --topics"
            )
        by_namespace[namespace] = topic
    return chosen


def depth_topic_candidates(namespace: str) -> tuple[str, str]:
    """Where a camera's registered depth image is recorded by convention: ``<ns>/depth`` (the
    node's topic) and, for RealSense's ``/camera/color``, ``/camera/aligned_depth_to_color/image_raw``."""
    return f"{namespace}/depth", f"{namespace.rsplit('/', 1)[0]}/aligned_depth_to_color/image_raw"


def choose_depth_partners(
    connections: list[Connection], chosen: dict[str, str], depth_topics: dict[str | None, str], camera_info_topics: dict[str | None, str]
) -> dict[str, tuple[str, str]]:
    """Image topic -> (depth topic, camera_info topic) of each camera labeled with points.

    ``depth_topics`` and ``camera_info_topics`` map an image topic (None: the only camera) to
    its partner. Default depth: the one of :func:`depth_topic_candidates` in the bag (none or
    both: refused, it has to be named); default camera_info: ``<ns>/camera_info``.
    """
    types = {c.topic: c.msgtype for c in connections}
    for option, given in (("--depth-topic", depth_topics), ("--camera-info-topic", camera_info_topics)):
        unknown = [topic for topic in given if topic is not None and topic not in chosen]
        if unknown:
            raise LabelBagError(f"{option}: {', '.join(unknown)} is not a labeled image topic (labeled: {', '.join(sorted(chosen))})")
        if None in given and len(chosen) > 1:
            raise LabelBagError(f"{option} {given[None]}: several cameras are labeled ({', '.join(sorted(chosen))}); give IMAGE_TOPIC={given[None]}")
    pairs = {}
    for topic, msgtype in sorted(chosen.items()):
        namespace = camera_namespace(topic, msgtype)
        depth = depth_topics.get(topic, depth_topics.get(None))
        if depth is None:
            candidates = depth_topic_candidates(namespace)
            found = [candidate for candidate in candidates if types.get(candidate) == "sensor_msgs/msg/Image"]
            if len(found) != 1:
                raise LabelBagError(
                    f"{topic}: {'neither ' + ' nor '.join(candidates) + ' is' if not found else 'both ' + ' and '.join(candidates) + ' are'} "
                    f"in the bag; name its depth image with --depth-topic {topic}=TOPIC"
                )
            depth = found[0]
        camera_info = camera_info_topics.get(topic, camera_info_topics.get(None, f"{namespace}/camera_info"))
        for partner, expected in ((depth, "sensor_msgs/msg/Image"), (camera_info, "sensor_msgs/msg/CameraInfo")):
            if types.get(partner) != expected:
                raise LabelBagError(f"{topic}: {partner} is not a {expected} topic of the bag ({types.get(partner, 'absent')})")
        pairs[topic] = (depth, camera_info)
    return pairs


def _nearest(stamps: np.ndarray, target_ns: int, slop_ns: int) -> int | None:
    """Index of the stamp of ``stamps`` (ascending) nearest ``target_ns``, if less than
    ``slop_ns`` from it (0: equal only), as the node's sync slop; None otherwise."""
    right = int(np.searchsorted(stamps, target_ns))
    near = [index for index in (right - 1, right) if 0 <= index < len(stamps)]
    if not near:
        return None
    best = min(near, key=lambda index: abs(int(stamps[index]) - target_ns))
    gap = abs(int(stamps[best]) - target_ns)
    return best if gap == 0 or gap < slop_ns else None


@dataclass
class DepthPartners:
    """A camera's depth images and camera_infos, found by header stamp. The whole bag is known
    offline, so each frame pairs with the depth image and the camera_info nearest its stamp
    (each within the slop) instead of what a synchronizer has seen; the depth images stay in
    the bag (read by bag time when their frame comes), the camera_infos in memory."""

    depth_topic: str
    camera_info_topic: str
    slop_ns: int
    depth_stamps: np.ndarray  # (D,) int64 header stamps, ns, ascending
    depth_times: np.ndarray  # (D,) int64 bag times of those depth images
    info_stamps: np.ndarray  # (C,) int64 header stamps, ns, ascending
    infos: list[CameraInfo]  # (C,) parallel to info_stamps
    reader: Reader  # a reader of IN of its own: the main one is streaming
    depth_connection: Connection  # of ``reader``

    def depth_for(self, msg: Image | CompressedImage) -> DepthData | str:
        """The frame's depth image and colour intrinsics; why it has none."""
        stamp = stamp_ns(msg.header)
        depth_index, info_index = _nearest(self.depth_stamps, stamp, self.slop_ns), _nearest(self.info_stamps, stamp, self.slop_ns)
        missing = [topic for topic, index in ((self.depth_topic, depth_index), (self.camera_info_topic, info_index)) if index is None]
        if missing:
            return f"no {' and no '.join(missing)} within the slop of its stamp"
        bag_time, depth_stamp = int(self.depth_times[depth_index]), int(self.depth_stamps[depth_index])
        depths = (deserialize_message(bytes(data), Image) for _, _, data in self.reader.messages([self.depth_connection], start=bag_time, stop=bag_time + 1))
        depth = next(depth for depth in depths if stamp_ns(depth.header) == depth_stamp)
        try:
            return depth_data(msg, depth, self.infos[info_index])
        except ImageError as exc:
            return f"bad camera_info: {exc}"


def index_depth_partners(reader: Reader, partner_reader: Reader, pairs: dict[str, tuple[str, str]], slop_s: float) -> dict[str, DepthPartners]:
    """Image topic -> its :class:`DepthPartners`, from one pass over the partner topics of
    ``reader``; ``partner_reader`` (another reader of the bag) reads the depth images later.
    A partner message that cannot be deserialized is left out (its frames find another, or none)."""
    connections = {c.topic: c for c in reader.connections}
    topics = {topic for pair in pairs.values() for topic in pair}
    entries: dict[str, list[tuple[int, int, CameraInfo | None]]] = {topic: [] for topic in topics}  # (stamp, bag time, camera_info)
    for connection, timestamp, data in reader.messages([connections[topic] for topic in sorted(topics)]):
        kind = CameraInfo if connection.msgtype == "sensor_msgs/msg/CameraInfo" else Image
        try:
            msg = deserialize_message(bytes(data), kind)
        except Exception:  # rclpy raises its own error types for a malformed CDR buffer
            continue
        entries[connection.topic].append((stamp_ns(msg.header), timestamp, msg if kind is CameraInfo else None))
    partner_connections = {c.topic: c for c in partner_reader.connections}
    partners = {}
    for image_topic, (depth_topic, info_topic) in pairs.items():
        depths, infos = sorted(entries[depth_topic], key=lambda e: e[:2]), sorted(entries[info_topic], key=lambda e: e[:2])
        partners[image_topic] = DepthPartners(
            depth_topic,
            info_topic,
            round(slop_s * 1e9),
            np.array([e[0] for e in depths], np.int64),
            np.array([e[1] for e in depths], np.int64),
            np.array([e[0] for e in infos], np.int64),
            [e[2] for e in infos],
            partner_reader,
            partner_connections[depth_topic],
        )
    return partners


def storage_of(bag: Path) -> str:
    """``mcap`` or ``sqlite3``: the storage identifier of a rosbag2 directory (or file)."""
    if bag.is_dir():
        metadata = yaml.safe_load((bag / "metadata.yaml").read_text())
        return metadata["rosbag2_bagfile_information"]["storage_identifier"]
    return {".mcap": "mcap", ".db3": "sqlite3"}.get(bag.suffix, bag.suffix)


def copy_connection(writer: Writer, connection: Connection, store) -> Connection:
    """The same topic, type, definition and QoS in OUT (the definition from the typestore where IN lacks one)."""
    ext = connection.ext
    definition = {"msgdef": connection.msgdef.data, "rihs01": connection.digest} if connection.msgdef.data and connection.digest else {"typestore": store}
    return writer.add_connection(
        connection.topic,
        connection.msgtype,
        serialization_format=ext.serialization_format,
        offered_qos_profiles=ext.offered_qos_profiles,
        **definition,
    )


def label_bag(
    in_bag: Path,
    out_bag: Path,
    segmenter: Segmenter,
    vocabularies: VocabularyManager,
    settings: PipelineSettings,
    topics: list[str] | None = None,
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS,
    storage: str | None = None,
    overlay_alpha: float = 0.5,
    progress: bool | None = None,
    batch: int = 1,
    depth_topics: dict[str | None, str] | None = None,
    camera_info_topics: dict[str | None, str] | None = None,
    depth_slop_s: float = PARAMETERS_BY_NAME["depth_sync_slop_s"].default,
    points_stride: int = PARAMETERS_BY_NAME["points_stride"].default,
    points_min_score: float = PARAMETERS_BY_NAME["points_min_score"].default,
) -> LabelingSummary:
    """Write ``out_bag`` (which must not exist): ``in_bag`` copied, every frame of ``topics`` labeled.

    Frames are labeled by ``segmenter`` with the current vocabulary of ``vocabularies``, each
    camera through a frame path of its own (``settings``: smoothing, CER, palette, min score),
    up to ``batch`` consecutive frames of a camera at a time (see the module docstring);
    ``progress`` None shows the bar on a terminal only.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    store = typestore(package_share() / "msg")
    request = OutputRequest(
        color="color" in outputs, overlay="overlay" in outputs, confidence="confidence" in outputs, overlay_alpha=overlay_alpha,
        points="points" in outputs, points_stride=points_stride, points_min_score=points_min_score,
        segments=bool({"detections", "detections_3d", "detection_markers", "instances"} & set(outputs)), instances="instances" in outputs,
    )
    summary = LabelingSummary()
    with Reader(in_bag) as reader, ExitStack() as partner_bag:
        chosen = choose_image_topics(reader.connections, topics, (depth_topics or {}).values())
        partners: dict[str, DepthPartners] = {}
        if DEPTH_OUTPUTS & set(outputs):  # each camera's frames pair with its depth images and camera_infos
            pairs = choose_depth_partners(reader.connections, chosen, depth_topics or {}, camera_info_topics or {})
            partners = index_depth_partners(reader, partner_bag.enter_context(Reader(in_bag)), pairs, depth_slop_s)
        plugin = STORAGES[storage or storage_of(in_bag)]
        with Writer(out_bag, version=9, storage_plugin=plugin) as writer:
            copies = {connection.id: copy_connection(writer, connection, store) for connection in reader.connections}
            cameras: dict[str, BagCamera] = {}
            for topic, msgtype in sorted(chosen.items()):
                pipeline, _ = build_pipeline(settings, vocabularies, segmenter)  # the model shared, a smoother each
                camera = cameras[topic] = BagCamera(topic, camera_namespace(topic, msgtype), pipeline, partners=partners.get(topic))
                for name in outputs:
                    subtopic, output_type = OUTPUTS[name]
                    qos = [LATCHED_QOS] if name == "class_map" else []
                    camera.outputs[name] = writer.add_connection(f"{camera.namespace}/{subtopic}", output_type, typestore=store, offered_qos_profiles=qos)
            summary.frames_total = sum(c.msgcount for c in reader.connections if c.topic in chosen)
            bar = tqdm(total=summary.frames_total, unit="frame", desc="labeling", dynamic_ncols=True, disable=None if progress is None else not progress)
            ordered = OrderedWriter(writer)

            def label_batch(camera: BagCamera) -> None:
                frames, camera.batch = camera.batch, []
                inferred = camera.pipeline.infer_batch([frame.prepared for frame in frames], [frame.stamp_s for frame in frames], [request] * len(frames))
                for frame, frame_inferred in zip(frames, inferred):
                    camera.write(frame.place, frame.timestamp, frame.header, camera.pipeline.finish(frame_inferred), settings.model)
                    ordered.release(frame.place)
                summary.frames_labeled += len(frames)
                bar.update(len(frames))

            start = time.perf_counter()
            for connection, timestamp, data in reader.messages():
                ordered.copy(copies[connection.id], timestamp, data)
                summary.messages_copied += 1
                camera = cameras.get(connection.topic)
                if camera is None:
                    continue
                frame = _prepare_frame(camera, timestamp, bytes(data), IMAGE_TYPES[connection.msgtype], summary.without_depth)
                if isinstance(frame, str):
                    summary.skipped.append(f"{connection.topic} at bag time {timestamp}: {frame}")
                    bar.write(f"skipped frame {summary.skipped[-1]}", file=sys.stderr)
                    bar.update()
                    continue
                if camera.batch and camera.batch[0].prepared.model_input.shape != frame.prepared.model_input.shape:
                    label_batch(camera)  # a batch holds frames of one size
                frame.place = ordered.hold()
                camera.batch.append(frame)
                if len(camera.batch) >= batch:
                    label_batch(camera)
            for camera in cameras.values():
                if camera.batch:
                    label_batch(camera)
            assert ordered.pending == 0, "every held output was written"
            summary.seconds = time.perf_counter() - start
            bar.close()
    return summary


def _prepare_frame(camera: BagCamera, timestamp: int, data: bytes, msg_type: type, without_depth: list[str]) -> PendingFrame | str:
    """One frame decoded and prepared for its camera's batch (its place in OUT still to be
    held); why not, for a frame that cannot be read. With points, the frame is prepared with
    its depth; one that has none (or a bad one) is still labeled and noted in ``without_depth``."""
    try:
        msg = deserialize_message(data, msg_type)
    except Exception as exc:  # rclpy raises its own error types for a malformed CDR buffer
        return f"not a valid {msg_type.__name__} message ({type(exc).__name__}: {exc})"
    try:
        image, depth = image_data(msg), camera.partners.depth_for(msg) if camera.partners is not None else None
        no_depth = depth if isinstance(depth, str) else None
        if no_depth is None:
            try:
                prepared = camera.pipeline.prepare(image, depth)
            except ImageError as exc:
                if depth is None:
                    raise
                no_depth = f"bad depth image: {exc}"  # or a bad image: then preparing it alone fails too
        if no_depth is not None:
            prepared = camera.pipeline.prepare(image)
            without_depth.append(f"{camera.topic} at bag time {timestamp}: {no_depth}")
    except ImageError as exc:
        return f"bad image: {exc}"
    return PendingFrame(msg.header, timestamp, stamp_ns(msg.header) * 1e-9, prepared)


def read_vocabulary(names: list[str] | None, path: str | None) -> list[str]:
    """Class names from ``--vocabulary`` (one per argument), ``--vocabulary-file`` (one per line,
    ``#`` comments; or a shipped list: ade150, ade847), or the node's default."""
    if path:
        file = Path(path)
        if not file.is_file():
            return load_class_list(path)
        return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    return names or list(PARAMETERS_BY_NAME["vocabulary"].default)


def _prepare_out(out_bag: Path, in_bag: Path, overwrite: bool) -> Path | None:
    """The folder to write the new bag into (moved to ``out_bag`` when complete); None: refused."""
    if out_bag.resolve() == in_bag.resolve():
        print(f"label_bag: OUT {out_bag} is the input bag", file=sys.stderr)
        return None
    if out_bag.exists():
        if not overwrite:
            print(f"label_bag: {out_bag} exists; pass --overwrite to replace it", file=sys.stderr)
            return None
        if not (out_bag / "metadata.yaml").is_file():
            print(f"label_bag: {out_bag} exists and is not a rosbag2 folder (no metadata.yaml): not replaced", file=sys.stderr)
            return None
    staging = out_bag.parent / f".{out_bag.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a run that did not finish
    staging.mkdir(parents=True)
    return staging


def _topic_options(values: list[str] | None) -> dict[str | None, str]:
    """``--depth-topic`` values -> image topic (None: the only camera) -> topic."""
    by_camera: dict[str | None, str] = {}
    for value in values or ():
        image_topic, separator, topic = value.rpartition("=")
        by_camera[image_topic if separator else None] = topic
    return by_camera


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    default = {name: spec.default for name, spec in PARAMETERS_BY_NAME.items()}
    parser.add_argument("in_bag", type=Path, metavar="IN", help="input rosbag2 (folder, mcap or sqlite3)")
    parser.add_argument("out_bag", type=Path, metavar="OUT", help="output rosbag2 folder (must not exist)")
    parser.add_argument("--model", default=default["model"], help="segmentation model (default: %(default)s)")
    parser.add_argument("--weights", default="", help="checkpoint (default: $OVSEG_WEIGHTS_DIR/<model>.pth, else random weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--precision", default=default["precision"], choices=PARAMETERS_BY_NAME["precision"].choices)
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads on the CPU (default: all cores)")
    parser.add_argument("--input-short-edge", type=int, default=default["input_short_edge"])
    parser.add_argument("--cer-topk", type=int, default=default["cer_topk"], help="SED's category early rejection K, 0 = off")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--vocabulary", nargs="+", metavar="CLASS", help="class names, one per argument ('sofa, couch': synonyms of one class)")
    vocabulary.add_argument("--vocabulary-file", metavar="FILE", help="one class per line, or a shipped list: ade150, ade847")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="image topics to label (default: every image topic)")
    parser.add_argument("--outputs", default=",".join(DEFAULT_OUTPUTS), help=f"comma-separated, of {', '.join(OUTPUTS)} (default: %(default)s)")
    parser.add_argument("--smoothing", default="auto", choices=PARAMETERS_BY_NAME["smoothing"].choices, help="as the node's parameter (auto: flow for SAN, none for SED)")
    parser.add_argument("--palette", default=default["palette"], choices=PARAMETERS_BY_NAME["palette"].choices)
    parser.add_argument("--min-score", type=float, default=default["min_score"])
    parser.add_argument("--overlay-alpha", type=float, default=default["overlay_alpha"])
    parser.add_argument(
        "--batch", type=int, default=0, metavar="N",
        help=f"frames of a camera per pass of the model (default: {DEFAULT_CUDA_BATCH} on CUDA, else 1)",
    )
    parser.add_argument(
        "--depth-topic", action="append", metavar="[IMAGE_TOPIC=]TOPIC",
        help="with points: the camera's registered depth image (16UC1 mm, 32FC1 m), IMAGE_TOPIC= for one of several cameras "
        "(default: <ns>/depth or <parent>/aligned_depth_to_color/image_raw, whichever is in the bag)",
    )
    parser.add_argument(
        "--camera-info-topic", action="append", metavar="[IMAGE_TOPIC=]TOPIC", help="with points: the camera's camera_info (default: <ns>/camera_info)"
    )
    parser.add_argument(
        "--depth-slop-s", type=float, default=default["depth_sync_slop_s"],
        help="with points: a depth image and a camera_info pair with a frame less than this apart (s; 0: equal stamps), "
        "as the node's depth_sync_slop_s (default: %(default)s)",
    )
    parser.add_argument("--points-stride", type=int, default=default["points_stride"], help="with points: as the node's points_stride (default: %(default)s)")
    parser.add_argument(
        "--points-min-score", type=float, default=default["points_min_score"], help="with points: as the node's points_min_score (default: %(default)s)"
    )
    parser.add_argument("--storage", choices=tuple(STORAGES), help="storage of OUT (default: IN's)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is a bag")
    args = parser.parse_args(argv)

    outputs = tuple(name.strip() for name in args.outputs.split(",") if name.strip())
    unknown = [name for name in outputs if name not in OUTPUTS]
    if unknown or not outputs:
        parser.error(f"--outputs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(OUTPUTS)}")
    if not args.in_bag.exists():
        parser.error(f"{args.in_bag} does not exist")
    if args.points_stride < 1 or args.depth_slop_s < 0:
        parser.error(f"--points-stride must be at least 1 and --depth-slop-s not negative (got {args.points_stride}, {args.depth_slop_s})")
    if (args.depth_topic or args.camera_info_topic) and not DEPTH_OUTPUTS & set(outputs):
        parser.error(f"--depth-topic and --camera-info-topic are for --outputs with {' or '.join(sorted(DEPTH_OUTPUTS))}")
    if args.batch < 0:
        parser.error(f"--batch must be at least 1 (0: the default), not {args.batch}")
    staging = _prepare_out(args.out_bag, args.in_bag, args.overwrite)
    if staging is None:
        return EXIT_OUT_EXISTS
    settings = PipelineSettings(
        model=args.model, weights=args.weights, device=args.device, precision=args.precision, input_short_edge=args.input_short_edge,
        cpu_threads=args.cpu_threads, cer_topk=args.cer_topk, smoothing=args.smoothing, palette=args.palette, min_score=args.min_score,
        smoothing_strength=PARAMETERS_BY_NAME["smoothing_strength"].default, smoothing_max_gap_s=PARAMETERS_BY_NAME["smoothing_max_gap_s"].default,
    )  # fmt: skip

    start = time.perf_counter()
    # cpu_threads 0: torch's default, all cores (no executor here to leave one for).
    segmenter, checkpoint = build_segmenter(args.model, args.weights, args.device, args.precision, args.input_short_edge, args.cpu_threads)
    weights_note = str(checkpoint) if checkpoint is not None else "RANDOM weights: labels are meaningless"
    smoothing = smoothing_mode(args.smoothing, segmenter.model.auto_smoothing)
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabulary = vocabularies.install(vocabularies.encode(read_vocabulary(args.vocabulary, args.vocabulary_file)))
    batches = segmenter.batches
    batch = args.batch or (DEFAULT_CUDA_BATCH if segmenter.device.type == "cuda" and batches else 1)
    print(
        f"label_bag: model {args.model} on {segmenter.device} ({weights_note}), smoothing {smoothing}, "
        f"batch {batch}{'' if batches or batch == 1 else ' (frame by frame: a model without batches)'}, "
        f"{len(vocabulary.names)} classes, ready in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    try:
        summary = label_bag(
            args.in_bag, staging / args.out_bag.name, segmenter, vocabularies, settings, args.topics, outputs, args.storage,
            args.overlay_alpha, batch=batch,
            depth_topics=_topic_options(args.depth_topic), camera_info_topics=_topic_options(args.camera_info_topic),
            depth_slop_s=args.depth_slop_s, points_stride=args.points_stride, points_min_score=args.points_min_score,
        )
    except LabelBagError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"label_bag: {exc}", file=sys.stderr)
        return 1
    if args.out_bag.exists():  # --overwrite, checked to be a bag
        shutil.rmtree(args.out_bag)
    (staging / args.out_bag.name).rename(args.out_bag)
    staging.rmdir()
    print(
        f"offline: {summary.frames_labeled}/{summary.frames_total} frames labeled into {args.out_bag}, "
        f"{summary.frames_per_s:.2f} frames/s; {len(summary.skipped)} skipped; {summary.messages_copied} input messages copied"
        + (f"; {len(summary.without_depth)} frames without depth" if DEPTH_OUTPUTS & set(outputs) else "")
    )
    if summary.without_depth:
        print(f"label_bag: labeled without a cloud, e.g. {summary.without_depth[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
