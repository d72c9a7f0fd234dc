"""rosbag2 files without ROS: the sample camera bag, and the types our output bags hold.

Uses the PyPI ``rosbags`` package, which reads and writes real rosbag2 (mcap) files that
``ros2 bag play`` accepts.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

SAMPLE_TOPIC = "/camera/image_raw"
SAMPLE_FRAME_ID = "camera_optical_frame"


def typestore(msg_dir: Path | None = None, packages: tuple[str, ...] = ("vision_msgs",)) -> Typestore:
    """ROS 2 Jazzy message types (Kilted's are the same for every type here: of rosbags'
    stores only nav_msgs/Goals differs), the message types of ``packages`` that rosbags does
    not ship (from their installed ``share/<package>/msg``, found by the ament index), and
    ``ovseg_ros/msg/*`` from ``msg_dir`` when given."""
    from ament_index_python.packages import get_package_share_directory

    store = get_typestore(Stores.ROS2_JAZZY)
    folders = [(package, Path(get_package_share_directory(package)) / "msg") for package in packages]
    if msg_dir is not None:
        folders.append(("ovseg_ros", Path(msg_dir)))
    types = {}
    for package, folder in folders:
        for path in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


def synthetic_frame(index: int, height: int = 480, width: int = 640) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame ``index`` of a synthetic camera sequence.

    A textured floor-and-wall scene with a box and a disc moving across it: enough
    structure and motion to show segmentation and temporal behaviour, fully deterministic.
    """
    rng = np.random.default_rng(1234)  # the same texture every frame: only the objects move
    texture = rng.integers(0, 40, size=(height, width, 1), dtype=np.int16)
    frame = np.empty((height, width, 3), dtype=np.int16)
    horizon = height * 2 // 5
    frame[:horizon] = (150, 160, 175)  # wall
    frame[horizon:] = (110, 90, 70)  # floor
    frame += texture
    t = index / 10.0
    box_x = int((0.1 + 0.6 * ((t * 0.25) % 1.0)) * width)
    cv2.rectangle(frame, (box_x, horizon + 40), (box_x + width // 6, horizon + 40 + height // 4), (200, 60, 40), -1)
    disc_y = int(horizon + (0.5 + 0.4 * np.sin(t)) * (height - horizon) * 0.8)
    cv2.circle(frame, (width * 3 // 4, disc_y), height // 10, (40, 170, 60), -1)
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_sample_bag(path: Path, frames: int = 40, rate_hz: float = 10.0, height: int = 480, width: int = 640) -> Path:
    """Write a rosbag2 (mcap) of ``frames`` rgb8 images on :data:`SAMPLE_TOPIC` at ``rate_hz``."""
    store = typestore()
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    start_ns = 1_700_000_000_000_000_000
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(SAMPLE_TOPIC, Image.__msgtype__, typestore=store)
        for index in range(frames):
            stamp_ns = start_ns + int(index * 1e9 / rate_hz)
            pixels = synthetic_frame(index, height, width)
            msg = Image(
                header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=SAMPLE_FRAME_ID),
                height=height,
                width=width,
                encoding="rgb8",
                is_bigendian=0,
                step=width * 3,
                data=pixels.reshape(-1),
            )
            writer.write(connection, stamp_ns, store.serialize_cdr(msg, Image.__msgtype__))
    return path
