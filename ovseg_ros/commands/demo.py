"""The main job on the built-in sample: replay a camera bag through the node, record its outputs, then label every frame offline.

    python -m ovseg_ros.commands.demo [--bag DIR] [--out DIR] [--model NAME] [--weights PATH]

1. makes the sample rosbag2 (synthetic camera sequence, mcap) if it is not there;
2. starts the node as its own process, exactly as ``ros2 launch ovseg_ros segment.launch.py``
   would (same executable, same parameters file);
3. replays the bag into it over DDS at the bag's rate and records the node's outputs into
   an output bag;
4. writes overlay PNGs and prints a one-screen summary (frames in/out, dropped, latency);
5. labels the same bag offline (:mod:`ovseg_ros.commands.label_bag`: every frame, no real-time
   pacing) into ``labeled_bag`` and says how many frames it labeled, how fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import SAMPLE_TOPIC, typestore, write_sample_bag
from ovseg_ros.commands import label_bag
from ovseg_ros.ros.environment import destroy_participant
from ovseg_ros.commands.node_driver import NodeProcess, Peer, package_share
from ovseg_ros.models import resolve_weights, weights_dir
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.ros.environment import isolated_ros_environment

OUTPUT_TOPICS = {
    "segmentation/label": "sensor_msgs/msg/Image",
    "segmentation/color": "sensor_msgs/msg/Image",
    "segmentation/info": "ovseg_ros/msg/SegmentationInfo",
}
READY_TIMEOUT_S = 300.0  # model construction on a slow CPU
OVERLAYS = 4


def read_frames(bag: Path) -> list[tuple[int, bytes]]:
    """(timestamp ns, raw CDR) of every message on the sample camera topic."""
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic == SAMPLE_TOPIC]
        if not connections:
            raise SystemExit(f"{bag} has no {SAMPLE_TOPIC} topic")
        return [(stamp, bytes(data)) for _, stamp, data in reader.messages(connections)]


def write_output_bag(path: Path, recordings, msg_dir: Path) -> None:
    store = typestore(msg_dir)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, recording in recordings.items():
            connection = writer.add_connection(f"/{topic}", OUTPUT_TOPICS[topic], typestore=store)
            for received_ns, data in recording.messages:
                writer.write(connection, received_ns, data)


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f}  max {max(values):7.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bag", type=Path, default=Path("data/sample_bag"), help="input rosbag2 (made if missing)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--model", default="", help="model (default: the params file's)")
    parser.add_argument("--weights", default="", help="checkpoint, or auto: download the release when the weights dir has none (default: the params file's / weights dir)")
    parser.add_argument("--frames", type=int, default=40, help="frames in a newly made sample bag")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the last answer")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, value in isolated_ros_environment(args.out.resolve() / "ros_home").items():
        os.environ.setdefault(name, value)  # a caller's (the tests') isolation wins
    if not args.bag.exists():
        print(f"making sample bag {args.bag} ({args.frames} frames)")
        args.bag.parent.mkdir(parents=True, exist_ok=True)
        write_sample_bag(args.bag, frames=args.frames)
    frames = read_frames(args.bag)

    peer = Peer("ovseg_demo")
    recordings = {topic: peer.record(f"/{topic}", Image if "Image" in kind else SegmentationInfo) for topic, kind in OUTPUT_TOPICS.items()}
    publisher = peer.node.create_publisher(Image, SAMPLE_TOPIC, 10)
    sent_ns: dict[tuple[int, int], int] = {}  # input stamp -> wall time it was published
    node = NodeProcess({"image_topic": SAMPLE_TOPIC, "model": args.model, "weights": args.weights}, args.out / "node.log")
    try:
        print(f"starting node: {' '.join(node.argv)}")
        ready = peer.wait_for(
            lambda: publisher.get_subscription_count() > 0 and peer.node.count_publishers("/segmentation/info") > 0 or node.process.poll() is not None,
            READY_TIMEOUT_S,
        )
        if not ready or node.process.poll() is not None:
            print(node.log_text()[-3000:])
            print("node did not come up", file=sys.stderr)
            return 1
        time.sleep(1.0)  # let discovery settle both ways before the first frame
        print(f"replaying {len(frames)} frames from {args.bag}")
        start_wall, start_bag = time.monotonic(), frames[0][0]
        for stamp, data in frames:
            time.sleep(max(0.0, (stamp - start_bag) / 1e9 - (time.monotonic() - start_wall)))
            sent_ns[deserialize_stamp(data)] = time.time_ns()
            publisher.publish(data)
        wait_for_last_answer(peer, recordings["segmentation/info"], deserialize_stamp(frames[-1][1]), args.drain_timeout)
    finally:
        exit_code = node.stop()
        peer.close()
        rclpy.try_shutdown()
        destroy_participant()

    output_bag = args.out / "output_bag"
    shutil.rmtree(output_bag, ignore_errors=True)
    write_output_bag(output_bag, recordings, package_share() / "msg")
    infos = recordings["segmentation/info"].decoded()
    latencies_ms = [(received - sent_ns[stamp_of(info)]) / 1e6 for (received, _), info in zip(recordings["segmentation/info"].messages, infos)]
    overlay_paths = write_overlays(args.out, frames, recordings["segmentation/color"].decoded())
    weights = resolve_weights(args.model or "sed_convnext_base", args.weights)
    print_summary(len(frames), infos, latencies_ms, recordings, output_bag, overlay_paths, weights, exit_code)
    offline_code = label_offline(args.bag, args.out / "labeled_bag", args.model, args.weights)
    return 0 if infos and exit_code == 0 and offline_code == 0 else 1


def label_offline(bag: Path, labeled_bag: Path, model: str, weights: str) -> int:
    """Every frame of ``bag`` through the same model, offline, into ``labeled_bag`` (replaced if
    there); label_bag prints the count and frames/s. The node has exited: all cores are free."""
    print(f"\nlabeling every frame of {bag} offline (python -m ovseg_ros.commands.label_bag)")
    argv = [str(bag), str(labeled_bag), "--overwrite", "--outputs", "label,info,class_map,color"]
    argv += ["--model", model] if model else []
    argv += ["--weights", weights] if weights else []
    return label_bag.main(argv)


def wait_for_last_answer(peer: Peer, infos, last_stamp: tuple[int, int], timeout: float) -> None:
    """Wait until the last frame is answered, or the node has been quiet for a while.

    Best-effort transport may lose the last frame; then "quiet" means no new output for
    three times the slowest model forward seen (at least 5 s).
    """
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        decoded = infos.decoded()
        if any(stamp_of(info) == last_stamp for info in decoded):
            return
        if len(decoded) != count:
            count, changed = len(decoded), time.monotonic()
        quiet_s = max(5.0, 3e-3 * max((info.model_ms for info in decoded), default=0.0))
        if decoded and time.monotonic() - changed > quiet_s:
            return
        time.sleep(0.5)


def stamp_of(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def deserialize_stamp(data: bytes) -> tuple[int, int]:
    return stamp_of(deserialize_message(data, Image))


def write_overlays(out: Path, frames, colors) -> list[Path]:
    """Blend a few colour outputs over their input frames (matched by header stamp)."""
    inputs = {stamp_of(msg): msg for msg in (deserialize_message(data, Image) for _, data in frames)}
    paths = []
    picks = np.linspace(0, len(colors) - 1, min(OVERLAYS, len(colors))).round().astype(int) if colors else []
    for index in sorted(set(picks)):
        color = colors[index]
        frame = inputs[stamp_of(color)]
        rgb = np.frombuffer(bytes(frame.data), np.uint8).reshape(frame.height, frame.width, 3)
        painted = np.frombuffer(bytes(color.data), np.uint8).reshape(color.height, color.width, 3)
        path = out / f"overlay_{index:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(cv2.addWeighted(rgb, 0.5, painted, 0.5, 0.0), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def print_summary(frames_in: int, infos, latencies_ms: list[float], recordings, output_bag: Path, overlays: list[Path], weights, exit_code: int) -> None:
    frames_out = len(infos)
    print()
    print("=" * 72)
    print(f"ovseg demo: model {infos[0].model if infos else '?'}")
    if weights is None:
        print("  WEIGHTS: none found, the model ran with RANDOM weights: labels are meaningless.")
        print(f"  Run `python -m ovseg_ros.commands.fetch_weights <model>` (into {weights_dir()}), or pass --weights.")
    print(f"  frames in {frames_in}   frames out {frames_out}   not answered {frames_in - frames_out} (latest-frame policy, best-effort transport)")
    if infos:
        print(f"  latency frame sent -> info received  {percentiles(latencies_ms)}")
        print(f"  model forward                        {percentiles([i.model_ms for i in infos])}")
        print(f"  vocabulary v{infos[-1].vocabulary_version}: {', '.join(infos[-1].class_names)}")
    print(f"  output bag {output_bag}: " + ", ".join(f"/{t} {len(r.messages)}" for t, r in recordings.items()))
    print(f"  overlays {', '.join(str(p) for p in overlays) or 'none'}")
    print(f"  node exit code {exit_code}")
    print("=" * 72)


if __name__ == "__main__":
    sys.exit(main())
