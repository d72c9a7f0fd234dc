"""Label every image frame of a recorded rosbag2 offline, into a new bag.

    python -m ovseg_ros.tools.label_bag IN OUT [--model NAME] [--weights PATH] [--device DEV]
        [--vocabulary CLASS [CLASS ...] | --vocabulary-file FILE] [--topics TOPIC [TOPIC ...]]
        [--outputs label,info,class_map,color,overlay,confidence] [--storage mcap|sqlite3] [--overwrite]

Reads IN (rosbag2, mcap or sqlite3) and writes OUT (the same storage unless ``--storage``):
every message of IN copied through unchanged (same bytes, bag timestamps, QoS), and for
every frame on the chosen image topics (``sensor_msgs/Image`` and ``CompressedImage``;
default: all of them) the messages the node would publish, under the camera's namespace
(``/cam/image_raw`` -> ``/cam/segmentation/label``), with the frame's header and bag
timestamp. No frame is dropped and nothing waits for a clock: frames go through the node's
:class:`~ovseg_ros.frame_pipeline.FramePipeline` one after the other, as fast as the model
goes, and their messages are built by :mod:`ovseg_ros.messages`, as the node's are.

Outputs (``--outputs``; default label, info, class_map):
    label       <ns>/segmentation/label        sensor_msgs/Image mono8 (255 = unlabeled) or mono16
    info        <ns>/segmentation/info         ovseg_ros/SegmentationInfo (queue_ms, end_to_end_ms: 0)
    class_map   <ns>/segmentation/label_info   ovseg_ros/ClassMap, transient local: once per camera
    color, overlay, confidence                 <ns>/segmentation/<name>, sensor_msgs/Image

Frames are labeled one at a time: :class:`FramePipeline` has no batch API. Each camera has
a temporal smoother of its own (``--smoothing``, as the node's parameter). A frame that
cannot be decoded (bad encoding, size or compressed data) is logged, skipped and counted;
its message is still copied. OUT must not exist (``--overwrite`` replaces an existing bag);
the bag is written beside it first and moved into place once complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from sensor_msgs.msg import CompressedImage, Image
from tqdm import tqdm

from ovseg_ros.bag import typestore
from ovseg_ros.frame_pipeline import FrameOutputs, FramePipeline, OutputRequest
from ovseg_ros.image_codec import ImageError
from ovseg_ros.messages import class_map_msg, image_data, image_msg, info_msg
from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.models.checkpoint import file_digest
from ovseg_ros.parameters import PARAMETERS_BY_NAME
from ovseg_ros.segmenter import Segmenter
from ovseg_ros.smoothing import TemporalSmoother
from ovseg_ros.tools.harness import package_share
from ovseg_ros.vocabulary import TextEmbeddingCache, VocabularyManager, default_cache_dir, load_class_list

IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
#: output name -> (topic under the camera's namespace, message type)
OUTPUTS = {
    "label": ("segmentation/label", "sensor_msgs/msg/Image"),
    "info": ("segmentation/info", "ovseg_ros/msg/SegmentationInfo"),
    "class_map": ("segmentation/label_info", "ovseg_ros/msg/ClassMap"),
    "color": ("segmentation/color", "sensor_msgs/msg/Image"),
    "overlay": ("segmentation/overlay", "sensor_msgs/msg/Image"),
    "confidence": ("segmentation/confidence", "sensor_msgs/msg/Image"),
}
DEFAULT_OUTPUTS = ("label", "info", "class_map")
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
EXIT_OUT_EXISTS = 2
_NO_TIME = QosTime(sec=0, nsec=0)
#: The node's class map QoS (reliable, transient local, depth 1), recorded so that
#: ``ros2 bag play`` latches it as the node does.
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _NO_TIME, _NO_TIME, QosLiveliness.AUTOMATIC, _NO_TIME, False)


class LabelBagError(RuntimeError):
    """A bag that cannot be labeled as asked (no image topic, clashing cameras, unknown type)."""


@dataclass
class Camera:
    """One labeled image topic: its pipeline (own smoother) and output connections."""

    topic: str
    namespace: str  # "/cam" for /cam/image_raw; "" for a top-level topic
    pipeline: FramePipeline
    outputs: dict[str, Connection] = field(default_factory=dict)  # output name -> connection in OUT
    class_map_version: int = 0  # vocabulary version of the last class map written

    def write(self, writer: Writer, timestamp: int, header, outputs: FrameOutputs, model: str) -> None:
        """The node's messages for one frame, at the frame's bag ``timestamp``."""
        connections = self.outputs
        if "class_map" in connections and self.class_map_version != outputs.vocabulary.version:
            writer.write(connections["class_map"], timestamp, serialize_message(class_map_msg(outputs.vocabulary, header.stamp)))
            self.class_map_version = outputs.vocabulary.version
        if "label" in connections:
            writer.write(connections["label"], timestamp, serialize_message(image_msg(header, outputs.labels)))
        for name in ("color", "overlay", "confidence"):
            if name in connections:
                writer.write(connections[name], timestamp, serialize_message(image_msg(header, getattr(outputs, name))))
        if "info" in connections:
            writer.write(connections["info"], timestamp, serialize_message(info_msg(header, outputs, model)))


@dataclass
class LabelingSummary:
    """What a run did: frames labeled and skipped per run, wall seconds of the labeling loop."""

    frames_total: int = 0
    frames_labeled: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per skipped frame: topic, stamp, why
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


def choose_image_topics(connections: list[Connection], topics: list[str] | None) -> dict[str, str]:
    """Topic -> message type of the image topics to label.

    ``topics`` given: exactly those (each must be an image topic of the bag). Otherwise
    every image topic, except that a camera recorded both raw and compressed is labeled
    from its raw topic (same frames). Two topics whose outputs would share a namespace are refused.
    """
    images = {c.topic: c.msgtype for c in connections if c.msgtype in IMAGE_TYPES}
    if topics:
        unknown = [topic for topic in topics if topic not in images]
        if unknown:
            raise LabelBagError(f"not image topics of the bag: {', '.join(unknown)} (image topics: {', '.join(sorted(images)) or 'none'})")
        chosen = {topic: images[topic] for topic in topics}
    else:
        chosen = {topic: msgtype for topic, msgtype in images.items() if not (topic.endswith("/compressed") and topic[: -len("/compressed")] in images)}
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


def storage_of(bag: Path) -> str:
    """``mcap`` or ``sqlite3``: the storage identifier of a rosbag2 directory (or file)."""
    if bag.is_dir():
        metadata = yaml.safe_load((bag / "metadata.yaml").read_text())
        return metadata["rosbag2_bagfile_information"]["storage_identifier"]
    return {".mcap": "mcap", ".db3": "sqlite3"}.get(bag.suffix, bag.suffix)


def build_segmenter(model: str, weights: str, device: str, precision: str, short_edge: int, cer_topk: int, cpu_threads: int) -> tuple[Segmenter, str]:
    """The model facade as the node configures it for these parameters; and a weights note."""
    checkpoint = resolve_weights(model, weights)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)  # default: all cores, no executor to leave one for
    network = build_model(model, checkpoint)
    digest = file_digest(checkpoint) if checkpoint is not None else "random"
    segmenter = Segmenter(
        network,
        device=device,
        precision=precision,
        short_edge=short_edge,
        text_cache=TextEmbeddingCache(default_cache_dir(), model, digest),
        cer_topk=(cer_topk or None) if Segmenter.model_has_cer(network) else None,  # SED's; SAN has none
    )
    return segmenter, str(checkpoint) if checkpoint is not None else "RANDOM weights: labels are meaningless"


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
    model: str,
    topics: list[str] | None = None,
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS,
    storage: str | None = None,
    smoothing: str = "none",
    palette: str = "name",
    min_score: float = 0.0,
    overlay_alpha: float = 0.5,
    progress: bool | None = None,
) -> LabelingSummary:
    """Write ``out_bag`` (which must not exist): ``in_bag`` copied, every frame of ``topics`` labeled.

    Frames are labeled with the current vocabulary of ``vocabularies``; ``progress`` None
    shows the bar on a terminal only.
    """
    store = typestore(package_share() / "msg")
    request = OutputRequest(color="color" in outputs, overlay="overlay" in outputs, confidence="confidence" in outputs, overlay_alpha=overlay_alpha)
    summary = LabelingSummary()
    with Reader(in_bag) as reader:
        chosen = choose_image_topics(reader.connections, topics)
        plugin = STORAGES[storage or storage_of(in_bag)]
        with Writer(out_bag, version=9, storage_plugin=plugin) as writer:
            copies = {connection.id: copy_connection(writer, connection, store) for connection in reader.connections}
            cameras: dict[str, Camera] = {}
            for topic, msgtype in sorted(chosen.items()):
                smoother = TemporalSmoother(
                    smoothing, strength=PARAMETERS_BY_NAME["smoothing_strength"].default, max_gap_s=PARAMETERS_BY_NAME["smoothing_max_gap_s"].default
                )
                camera = cameras[topic] = Camera(topic, camera_namespace(topic, msgtype), FramePipeline(segmenter, vocabularies, smoother, palette, min_score))
                for name in outputs:
                    subtopic, output_type = OUTPUTS[name]
                    qos = [LATCHED_QOS] if name == "class_map" else []
                    camera.outputs[name] = writer.add_connection(f"{camera.namespace}/{subtopic}", output_type, typestore=store, offered_qos_profiles=qos)
            summary.frames_total = sum(c.msgcount for c in reader.connections if c.topic in chosen)
            bar = tqdm(total=summary.frames_total, unit="frame", desc="labeling", dynamic_ncols=True, disable=None if progress is None else not progress)
            start = time.perf_counter()
            for connection, timestamp, data in reader.messages():
                writer.write(copies[connection.id], timestamp, data)
                summary.messages_copied += 1
                camera = cameras.get(connection.topic)
                if camera is None:
                    continue
                why = _label_frame(camera, writer, timestamp, bytes(data), IMAGE_TYPES[connection.msgtype], request, model)
                if why is not None:
                    summary.skipped.append(f"{connection.topic} at bag time {timestamp}: {why}")
                    bar.write(f"skipped frame {summary.skipped[-1]}", file=sys.stderr)
                else:
                    summary.frames_labeled += 1
                bar.update()
            summary.seconds = time.perf_counter() - start
            bar.close()
    return summary


def _label_frame(camera: Camera, writer: Writer, timestamp: int, data: bytes, msg_type: type, request: OutputRequest, model: str) -> str | None:
    """Label one frame and write its outputs; why not, for a frame that cannot be read."""
    try:
        msg = deserialize_message(data, msg_type)
    except Exception as exc:  # rclpy raises its own error types for a malformed CDR buffer
        return f"not a valid {msg_type.__name__} message ({type(exc).__name__}: {exc})"
    stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    try:
        outputs = camera.pipeline.process(image_data(msg), stamp_s, request)
    except ImageError as exc:
        return f"bad image: {exc}"
    camera.write(writer, timestamp, msg.header, outputs, model)
    return None


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
    parser.add_argument("--storage", choices=tuple(STORAGES), help="storage of OUT (default: IN's)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is a bag")
    args = parser.parse_args(argv)

    outputs = tuple(name.strip() for name in args.outputs.split(",") if name.strip())
    unknown = [name for name in outputs if name not in OUTPUTS]
    if unknown or not outputs:
        parser.error(f"--outputs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(OUTPUTS)}")
    if not args.in_bag.exists():
        parser.error(f"{args.in_bag} does not exist")
    staging = _prepare_out(args.out_bag, args.in_bag, args.overwrite)
    if staging is None:
        return EXIT_OUT_EXISTS
    smoothing = args.smoothing if args.smoothing != "auto" else ("flow" if args.model.startswith("san_") else "none")

    start = time.perf_counter()
    segmenter, weights_note = build_segmenter(args.model, args.weights, args.device, args.precision, args.input_short_edge, args.cer_topk, args.cpu_threads)
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabulary = vocabularies.install(vocabularies.encode(read_vocabulary(args.vocabulary, args.vocabulary_file)))
    print(
        f"label_bag: model {args.model} on {segmenter.device} ({weights_note}), smoothing {smoothing}, "
        f"{len(vocabulary.names)} classes, ready in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    try:
        summary = label_bag(
            args.in_bag, staging / args.out_bag.name, segmenter, vocabularies, args.model, args.topics, outputs, args.storage,
            smoothing, args.palette, args.min_score, args.overlay_alpha,
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
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
