"""Offline bag labeling with depth (label_bag --outputs ...,points): each frame paired with the
depth image and camera_info nearest its stamp, its labeled cloud and the 3D summary written
as the node's (same FramePipeline, same messages code).

The bag is made here: raw frames, a 16UC1 depth topic of a plane at a known distance, and
camera_infos of known intrinsics; one frame's depth is recorded beyond the slop.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.engine.frame_pipeline import DepthData, OutputRequest
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.ros.conversions import image_data, info_msg, raw_image_data
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.ros.conversions import intrinsics_from_camera_info, point_cloud_msg
from ovseg_ros.commands import label_bag

from node_settings import TEST_MODEL
from bag_support import HEIGHT, OFFLINE_ARGS, SETTINGS, VOCABULARY, WIDTH, header_key, raw_frame, read_bag, write_bag

IMAGE_TOPIC, DEPTH_TOPIC, INFO_TOPIC = "/cam/image_raw", "/cam/depth", "/cam/camera_info"
FX, FY, CX, CY = 100.0, 110.0, 79.5, 59.5
PLANE_MM = 1500
LATE_FRAME = 2  # its depth image is stamped 0.1 s after it: beyond the 0.02 s slop


def stamped_like(msg, frame: Image, offset_ns: int = 0):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(frame.header.stamp.sec * 10**9 + frame.header.stamp.nanosec + offset_ns, 10**9)
    msg.header.frame_id = frame.header.frame_id
    return msg


def camera_info(frame: Image) -> CameraInfo:
    msg = stamped_like(CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob"), frame)
    msg.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    msg.p = [FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def plane_depth(frame: Image, offset_ns: int = 0) -> Image:
    """16UC1: a wall facing the camera at PLANE_MM, no measurement (0) in the top 10 rows."""
    depth = np.full((HEIGHT, WIDTH), PLANE_MM, np.dtype("<u2"))
    depth[:10] = 0
    msg = stamped_like(Image(), frame, offset_ns)
    msg.height, msg.width, msg.encoding, msg.step = HEIGHT, WIDTH, "16UC1", WIDTH * 2
    msg.data = message_bytes(depth)
    return msg


def depth_bag(path, storage: StoragePlugin):
    """Frames 0..3 with a camera_info each; depth of frame 0 recorded after it, of frame 1
    5 ms off its stamp (within the slop), of frame LATE_FRAME 0.1 s off (beyond)."""
    frames = [raw_frame(index) for index in range(4)]
    offsets = {0: 0, 1: 5_000_000, LATE_FRAME: 100_000_000, 3: 0}
    messages = []
    for index, frame in enumerate(frames):
        partners = [(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", camera_info(frame)), (DEPTH_TOPIC, "sensor_msgs/msg/Image", plane_depth(frame, offsets[index]))]
        colour = [(IMAGE_TOPIC, "sensor_msgs/msg/Image", frame)]
        messages += colour + partners if index == 0 else partners + colour
    return frames, write_bag(path, messages, storage)


def cloud_fields(cloud: PointCloud2) -> dict[str, np.ndarray]:
    """The fields of a PointCloud2, read by its PointField offsets and types."""
    types = {PointField.FLOAT32: "<f4", PointField.UINT16: "<u2"}
    rows = np.frombuffer(bytes(cloud.data), np.uint8).reshape(cloud.width, cloud.point_step)
    return {f.name: rows[:, f.offset : f.offset + np.dtype(types[f.datatype]).itemsize].copy().view(types[f.datatype]).ravel() for f in cloud.fields}


@pytest.mark.parametrize(("storage", "batch"), [(StoragePlugin.MCAP, 1), (StoragePlugin.SQLITE3, 2)], ids=["mcap", "sqlite3-batch2"])
def test_paired_frames_get_their_cloud_and_summary_the_unpaired_one_labels_only(tmp_path, capsys, storage, batch):
    frames, written = depth_bag(tmp_path / "in", storage)
    out = tmp_path / "labeled"
    args = [str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--outputs", "label,info,points", "--batch", str(batch)]
    assert label_bag.main(args) == 0  # depth and camera_info found by the conventions: /cam/depth, /cam/camera_info
    captured = capsys.readouterr()
    assert f"offline: 4/4 frames labeled into {out}" in captured.out and "; 1 frames without depth" in captured.out
    assert f"{IMAGE_TOPIC} at bag time" in captured.err and f"no {DEPTH_TOPIC} within the slop" in captured.err

    topics = read_bag(out)
    for topic in (IMAGE_TOPIC, DEPTH_TOPIC, INFO_TOPIC):
        assert topics[topic] == [(stamp, data) for t, stamp, data in written if t == topic], "copied unchanged"
    assert "/cam/depth/segmentation/label" not in topics, "the depth topic is not labeled as a camera"
    frame_times = [stamp for t, stamp, _ in written if t == IMAGE_TOPIC]
    paired = [index for index in range(4) if index != LATE_FRAME]
    clouds = [(stamp, deserialize_message(data, PointCloud2)) for stamp, data in topics["/cam/segmentation/points"]]
    assert [(stamp, header_key(cloud.header)) for stamp, cloud in clouds] == [(frame_times[i], header_key(frames[i].header)) for i in paired]
    labels = {header_key(m.header): m for m in (deserialize_message(data, Image) for _, data in topics["/cam/segmentation/label"])}
    infos = {header_key(m.header): m for m in (deserialize_message(data, SegmentationInfo) for _, data in topics["/cam/segmentation/info"])}
    assert set(labels) == set(infos) == {header_key(frame.header) for frame in frames}, "every frame labeled, the unpaired one too"

    sampled = np.zeros((HEIGHT, WIDTH), bool)
    sampled[10::2, ::2] = True  # stride 2 (the node's default), no depth in the top 10 rows
    for (_, cloud), index in zip(clouds, paired):
        assert cloud.header == frames[index].header and (cloud.height, cloud.point_step, cloud.is_dense) == (1, 24, True)
        points = cloud_fields(cloud)
        assert cloud.width == sampled.sum()
        assert np.allclose(points["z"], PLANE_MM / 1000.0, atol=1e-6), "z: the plane's distance"
        u = np.rint(points["x"] / points["z"] * FX + CX).astype(int)
        v = np.rint(points["y"] / points["z"] * FY + CY).astype(int)
        assert np.array_equal(np.sort(v * WIDTH + u), np.flatnonzero(sampled)), "one point per sampled pixel"
        assert np.abs(points["x"] - (u - CX) * PLANE_MM / 1000.0 / FX).max() < 1e-4  # x, y to 0.1 mm from the intrinsics
        assert np.abs(points["y"] - (v - CY) * PLANE_MM / 1000.0 / FY).max() < 1e-4
        label = np.frombuffer(bytes(labels[header_key(cloud.header)].data), np.uint8).reshape(HEIGHT, WIDTH)
        assert np.array_equal(points["label"], label[v, u]), "each point has the label of its pixel"

        info = infos[header_key(cloud.header)]
        assert len(info.present_class_ids) and len(info.class_point_counts) == len(info.present_class_ids)
        assert sum(info.class_point_counts) == (points["label"] < len(VOCABULARY)).sum()
        for row, class_id in enumerate(info.present_class_ids):
            own = points["label"] == class_id
            assert np.allclose(info.class_centroids[3 * row : 3 * row + 3], [np.median(points[axis][own]) for axis in "xyz"], atol=1e-5)
    unpaired = infos[header_key(frames[LATE_FRAME].header)]
    assert len(unpaired.present_class_ids) and not len(unpaired.class_point_counts) and not len(unpaired.class_centroids)

    # The same bytes as FramePipeline + point_cloud_msg give for each paired frame, and the same summary fields.
    pipeline, _ = build_pipeline(PipelineSettings(TEST_MODEL, device="cpu", input_short_edge=SETTINGS["input_short_edge"], cer_topk=8, cpu_threads=1, min_score=SETTINGS["min_score"]))
    pipeline.vocabularies.install(pipeline.vocabularies.encode(VOCABULARY))
    request = OutputRequest(points=True, points_stride=2, points_min_score=0.0)
    for (_, cloud_data), index in zip(topics["/cam/segmentation/points"], paired):
        frame = frames[index]
        depth = DepthData(raw_image_data(plane_depth(frame)), intrinsics_from_camera_info(camera_info(frame), WIDTH, HEIGHT))
        outputs = pipeline.process(image_data(frame), frame.header.stamp.sec + frame.header.stamp.nanosec * 1e-9, request, depth=depth)
        cloud, expected_cloud = deserialize_message(cloud_data, PointCloud2), point_cloud_msg(frame.header, outputs.points)
        assert cloud == expected_cloud and bytes(cloud.data) == bytes(expected_cloud.data), f"cloud of frame {index}"  # (CDR padding bytes vary)
        expected, info = info_msg(frame.header, outputs, TEST_MODEL), infos[header_key(frame.header)]
        for name in ("present_class_ids", "class_point_counts", "class_centroids", "class_extent_min", "class_extent_max"):
            assert list(getattr(info, name)) == list(getattr(expected, name)), name


def test_explicit_depth_topics_per_camera_and_a_missing_default_refused(tmp_path, capsys):
    frames, _ = depth_bag(tmp_path / "in", StoragePlugin.MCAP)
    out = tmp_path / "labeled"
    explicit = ["--depth-topic", f"{IMAGE_TOPIC}={DEPTH_TOPIC}", "--camera-info-topic", INFO_TOPIC, "--depth-slop-s", "0.2", "--points-stride", "4"]
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--outputs", "points", *explicit]) == 0
    assert "; 0 frames without depth" in capsys.readouterr().out, "0.2 s of slop pairs the late depth image too"
    clouds = [deserialize_message(data, PointCloud2) for _, data in read_bag(out)["/cam/segmentation/points"]]
    assert [header_key(c.header) for c in clouds] == [header_key(f.header) for f in frames]
    assert all(cloud.width == len(range(12, HEIGHT, 4)) * len(range(0, WIDTH, 4)) for cloud in clouds), "stride 4 (rows 10, 11: no depth)"

    args = [str(tmp_path / "in"), str(tmp_path / "other"), *OFFLINE_ARGS, "--outputs", "points", "--camera-info-topic", "/cam/none"]
    assert label_bag.main(args) == 1
    assert "/cam/none is not a sensor_msgs/msg/CameraInfo topic of the bag (absent)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_depth_topic_choice():
    def connection(topic, msgtype):  # the two fields of a rosbags Connection it reads
        return SimpleNamespace(topic=topic, msgtype=msgtype)

    image, info = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
    realsense = [
        connection("/camera/color/image_raw", image), connection("/camera/color/camera_info", info),
        connection("/camera/aligned_depth_to_color/image_raw", image), connection("/cam/image_raw", image), connection("/cam/camera_info", info),
    ]
    chosen = label_bag.choose_image_topics(realsense, None)
    assert chosen == {"/camera/color/image_raw": image, "/cam/image_raw": image}, "aligned depth is not a camera"
    assert label_bag.choose_depth_partners(realsense, {"/camera/color/image_raw": image}, {}, {}) == {
        "/camera/color/image_raw": ("/camera/aligned_depth_to_color/image_raw", "/camera/color/camera_info")
    }
    with pytest.raises(label_bag.LabelBagError, match="/cam/image_raw: neither /cam/depth nor /aligned_depth_to_color/image_raw is in the bag"):
        label_bag.choose_depth_partners(realsense, chosen, {}, {})
    with pytest.raises(label_bag.LabelBagError, match="several cameras are labeled"):
        label_bag.choose_depth_partners(realsense, chosen, {None: "/camera/aligned_depth_to_color/image_raw"}, {})
    named = {"/cam/image_raw": "/camera/aligned_depth_to_color/image_raw", "/camera/color/image_raw": "/camera/aligned_depth_to_color/image_raw"}
    assert label_bag.choose_depth_partners(realsense, chosen, named, {})["/cam/image_raw"] == ("/camera/aligned_depth_to_color/image_raw", "/cam/camera_info")
    with pytest.raises(label_bag.LabelBagError, match="/nope is not a labeled image topic"):
        label_bag.choose_depth_partners(realsense, chosen, {**named, "/nope": "/cam/depth"}, {})
    both = [connection("/a/color/image_raw", image), connection("/a/color/depth", image), connection("/a/aligned_depth_to_color/image_raw", image)]
    with pytest.raises(label_bag.LabelBagError, match="both /a/color/depth and /a/aligned_depth_to_color/image_raw are in the bag"):
        label_bag.choose_depth_partners(both, label_bag.choose_image_topics(both, None), {}, {})
    assert label_bag._topic_options(["/d", "/cam/image_raw=/cam/depth"]) == {None: "/d", "/cam/image_raw": "/cam/depth"}


def test_detections_of_a_bag_as_the_node_publishes_them(tmp_path):
    """--outputs detections,detections_3d,instances: every frame's detections (3D for the frames
    with depth), the same messages as the frame path and frame_messages give the frame, ids
    carried from frame to frame by the camera's tracker, and the instance image of those ids."""
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    from ovseg_ros.ros.conversions import frame_messages

    frames, _ = depth_bag(tmp_path / "in", StoragePlugin.MCAP)
    out = tmp_path / "labeled"
    args = [str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--outputs", "label,detections,detections_3d,instances"]
    assert label_bag.main(args) == 0
    topics = read_bag(out)
    detections = {header_key(m.header): m for m in (deserialize_message(d, Detection2DArray) for _, d in topics["/cam/segmentation/detections"])}
    boxes = {header_key(m.header): m for m in (deserialize_message(d, Detection3DArray) for _, d in topics["/cam/segmentation/detections_3d"])}
    instances = {header_key(m.header): m for m in (deserialize_message(d, Image) for _, d in topics["/cam/segmentation/instances"])}
    assert set(detections) == set(instances) == {header_key(frame.header) for frame in frames}, "every frame"
    assert set(boxes) == {header_key(frames[i].header) for i in range(4) if i != LATE_FRAME}, "3D for the frames with depth"

    # The frame path on the same frames, in order, one camera: the same messages.
    pipeline, _ = build_pipeline(PipelineSettings(TEST_MODEL, device="cpu", input_short_edge=SETTINGS["input_short_edge"], cer_topk=8, cpu_threads=1,
                                                  min_score=SETTINGS["min_score"], smoothing=SETTINGS["smoothing"]))
    pipeline.vocabularies.install(pipeline.vocabularies.encode(VOCABULARY))
    request = OutputRequest(segments=True, instances=True)
    for index, frame in enumerate(frames):
        depth = None
        if index != LATE_FRAME:
            intrinsics = intrinsics_from_camera_info(camera_info(frame), WIDTH, HEIGHT)
            depth = DepthData(raw_image_data(plane_depth(frame)), intrinsics)
        stamp = frame.header.stamp.sec + frame.header.stamp.nanosec * 1e-9
        messages = frame_messages(frame.header, pipeline.process(image_data(frame), stamp, request, depth=depth), TEST_MODEL)
        key = header_key(frame.header)
        assert detections[key] == messages.detections and instances[key] == messages.instances
        if depth is not None:
            assert boxes[key] == messages.detections_3d and all(d.bbox.center.position.z == pytest.approx(PLANE_MM / 1000.0, abs=1e-3) for d in boxes[key].detections)
    ids = [{d.id for d in detections[header_key(frame.header)].detections} for frame in frames]
    assert all(ids) and all(i.isdigit() for i in set().union(*ids))
