"""Bags the offline-labeling tests make and read, and the settings they label them with."""

from pathlib import Path
import cv2
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from sensor_msgs.msg import CompressedImage, Image
from ovseg_ros.ros.bags import synthetic_frame, typestore
from ovseg_ros.engine.image_codec import message_bytes
from node_settings import TEST_MODEL

HEIGHT, WIDTH = 120, 160
VOCABULARY = ["wall", "floor", "box"]
# The same configuration offline and in the node: no resize (fast), no smoothing, one thread
# (the node's default on 2 cores; another thread count could flip a near-tie). The random
# test model gives one class everywhere; its best scores spread over 1.89..2.0, so a min_score
# in between leaves a frame-dependent part of each frame unlabeled: labels that depend on the scores.
SETTINGS = {"input_short_edge": 120, "smoothing": "none", "cpu_threads": 1, "min_score": 1.94}
OFFLINE_ARGS = [
    "--model", TEST_MODEL, "--device", "cpu", "--vocabulary", *VOCABULARY,
    *[arg for key, value in SETTINGS.items() for arg in (f"--{key.replace('_', '-')}", str(value))],
]
RAW_TOPIC, COMPRESSED_TOPIC, INFO_TOPIC = "/cam/image_raw", "/cam2/image_raw/compressed", "/cam/camera_info"
START_NS = 1_700_000_000_000_000_000


def raw_frame(index: int, frame_id: str = "cam") -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 250_000_000
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step = HEIGHT, WIDTH, "rgb8", WIDTH * 3
    msg.data = message_bytes(synthetic_frame(index, HEIGHT, WIDTH))
    return msg


def compressed_frame(index: int, jpeg: bytes | None = None) -> CompressedImage:
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + index, 500_000_000
    msg.header.frame_id = "cam2"
    msg.format = "jpeg"
    if jpeg is None:
        jpeg = cv2.imencode(".jpg", cv2.cvtColor(synthetic_frame(index, HEIGHT, WIDTH), cv2.COLOR_RGB2BGR))[1].tobytes()
    msg.data = message_bytes(jpeg)
    return msg


def write_bag(path: Path, messages: list[tuple[str, str, object]], storage: StoragePlugin = StoragePlugin.MCAP) -> list[tuple[str, int, bytes]]:
    """(topic, type, rclpy message) in order, 0.1 s apart; returns (topic, bag time, CDR) as written."""
    store = typestore()
    written = []
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connections = {}
        for index, (topic, msgtype, msg) in enumerate(messages):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            data = serialize_message(msg)
            writer.write(connections[topic], START_NS + index * 100_000_000, data)
            written.append((topic, START_NS + index * 100_000_000, data))
    return written


def read_bag(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Topic -> (bag time, CDR) in order."""
    with Reader(path) as reader:
        topics: dict[str, list[tuple[int, bytes]]] = {c.topic: [] for c in reader.connections}
        for connection, timestamp, data in reader.messages():
            topics[connection.topic].append((timestamp, bytes(data)))
    return topics


def header_key(header) -> tuple:
    return header.stamp.sec, header.stamp.nanosec, header.frame_id
