"""Offline bag labeling (ovseg_ros.commands.label_bag): every frame in, the node's messages out.

The bags are made here with rosbags: raw and compressed frames, a corrupt frame of each
kind, and a non-image topic; the last test sends the same frames to the node over DDS and
compares its outputs with the offline ones.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.commands import label_bag
from ovseg_ros.commands.node_driver import Peer

from node_settings import TEST_MODEL, answer_timeout, matched_image_publisher, serving_node
from bag_support import HEIGHT, WIDTH, VOCABULARY, SETTINGS, OFFLINE_ARGS, RAW_TOPIC, COMPRESSED_TOPIC, INFO_TOPIC, raw_frame, compressed_frame, write_bag, read_bag, header_key

def mixed_bag(path: Path, storage: StoragePlugin):
    """Raw frames with a corrupt one (data of the wrong size), compressed frames with a corrupt
    one (not a jpeg), and a camera_info between them."""
    truncated = raw_frame(2)
    truncated.data = message_bytes(bytes(100))
    camera_info = CameraInfo()
    camera_info.header = raw_frame(0).header
    messages = [
        ("sensor_msgs/msg/Image", raw_frame(0)),
        ("sensor_msgs/msg/CameraInfo", camera_info),
        ("sensor_msgs/msg/CompressedImage", compressed_frame(0)),
        ("sensor_msgs/msg/Image", raw_frame(1)),
        ("sensor_msgs/msg/Image", truncated),
        ("sensor_msgs/msg/CompressedImage", compressed_frame(1, jpeg=b"\xff\xd8 not a jpeg")),
        ("sensor_msgs/msg/Image", raw_frame(3)),
    ]
    topic_of = {"sensor_msgs/msg/Image": RAW_TOPIC, "sensor_msgs/msg/CompressedImage": COMPRESSED_TOPIC, "sensor_msgs/msg/CameraInfo": INFO_TOPIC}
    return write_bag(path, [(topic_of[kind], kind, msg) for kind, msg in messages], storage)


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_every_frame_is_labeled_with_its_stamps_and_the_originals_are_copied(tmp_path, capsys, storage):
    written = mixed_bag(tmp_path / "in", storage)
    out = tmp_path / "labeled"
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--outputs", "label,info,class_map,color"]) == 0
    captured = capsys.readouterr()
    assert f"offline: 4/6 frames labeled into {out}" in captured.out and "2 skipped" in captured.out
    assert captured.err.count("skipped frame") == 2 and "bad image" in captured.err

    metadata = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["storage_identifier"] == {StoragePlugin.MCAP: "mcap", StoragePlugin.SQLITE3: "sqlite3"}[storage]
    assert not list(tmp_path.glob(".*partial")), "the staging folder is gone"
    topics = read_bag(out)
    for topic in (RAW_TOPIC, COMPRESSED_TOPIC, INFO_TOPIC):  # copied: same bytes, same bag times
        assert topics[topic] == [(stamp, data) for t, stamp, data in written if t == topic]

    good_frames = {RAW_TOPIC: [0, 1, 3], COMPRESSED_TOPIC: [0]}
    for camera, namespace in ((RAW_TOPIC, "/cam"), (COMPRESSED_TOPIC, "/cam2")):
        kind = Image if camera == RAW_TOPIC else CompressedImage
        inputs = [(stamp, deserialize_message(data, kind)) for t, stamp, data in written if t == camera]
        good = [inputs[i] for i in good_frames[camera]]
        labels = [(stamp, deserialize_message(data, Image)) for stamp, data in topics[f"{namespace}/segmentation/label"]]
        colors = [(stamp, deserialize_message(data, Image)) for stamp, data in topics[f"{namespace}/segmentation/color"]]
        infos = [(stamp, deserialize_message(data, SegmentationInfo)) for stamp, data in topics[f"{namespace}/segmentation/info"]]
        for outputs in (labels, colors, infos):  # one per good frame, at its bag time, with its header
            assert [(stamp, header_key(msg.header)) for stamp, msg in outputs] == [(stamp, header_key(msg.header)) for stamp, msg in good]
        for (_, label), (_, info) in zip(labels, infos):
            assert (label.encoding, label.height, label.width) == ("mono8", HEIGHT, WIDTH)
            ids = np.frombuffer(bytes(label.data), np.uint8).reshape(HEIGHT, WIDTH)
            assert info.class_names == VOCABULARY and info.vocabulary_version == 1 and info.model == TEST_MODEL
            assert list(info.present_class_ids) == np.unique(ids[ids != 255]).tolist()
            assert np.allclose(info.pixel_fractions, [np.mean(ids == i) for i in range(len(VOCABULARY))])
        assert all(color.encoding == "rgb8" for _, color in colors)
        (class_map_stamp, class_map_data), = topics[f"{namespace}/segmentation/label_info"]  # once: the vocabulary never changes
        class_map = deserialize_message(class_map_data, ClassMap)
        assert class_map_stamp == good[0][0] and class_map.class_names == VOCABULARY and class_map.unlabeled_id == 255
    latched = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"] for t in metadata["topics_with_message_count"]}
    assert "transient_local" in str(latched["/cam/segmentation/label_info"])


def test_an_existing_out_is_refused_unless_overwrite(tmp_path, capsys):
    write_bag(tmp_path / "in", [(RAW_TOPIC, "sensor_msgs/msg/Image", raw_frame(0))])
    out = tmp_path / "labeled"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS]) == label_bag.EXIT_OUT_EXISTS
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--overwrite"]) == label_bag.EXIT_OUT_EXISTS
    assert "not a rosbag2 folder" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()

    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS]) == 0
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS]) == label_bag.EXIT_OUT_EXISTS
    assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--overwrite", "--outputs", "label"]) == 0
    assert set(read_bag(out)) == {RAW_TOPIC, "/cam/segmentation/label"}, "replaced by the second run's bag"


def test_image_topics_raw_preferred_and_clashing_cameras_refused():
    def connection(topic, msgtype):  # the two fields of a rosbags Connection it reads
        return SimpleNamespace(topic=topic, msgtype=msgtype)

    raw, compressed = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    both = [connection("/a/image_raw", raw), connection("/a/image_raw/compressed", compressed), connection("/b/image", compressed), connection("/a/camera_info", "sensor_msgs/msg/CameraInfo")]
    assert label_bag.choose_image_topics(both, None) == {"/a/image_raw": raw, "/b/image": compressed}
    assert label_bag.choose_image_topics(both, ["/a/image_raw/compressed"]) == {"/a/image_raw/compressed": compressed}
    with pytest.raises(label_bag.LabelBagError, match="both write /a/segmentation"):
        label_bag.choose_image_topics(both, ["/a/image_raw", "/a/image_raw/compressed"])
    with pytest.raises(label_bag.LabelBagError, match="not image topics"):
        label_bag.choose_image_topics(both, ["/a/camera_info"])
    assert label_bag.camera_namespace("/image_raw", raw) == ""


@pytest.mark.usefixtures("ros2_tools")  # the node imports message_filters, vision_msgs, diagnostic_updater
def test_offline_outputs_equal_the_nodes_for_the_same_frames(tmp_path):
    """The node (own process, over DDS) and label_bag label the same frames identically."""
    namespace, camera = "offline_vs_node", "/cam/image_raw"
    settings = [arg for key, value in SETTINGS.items() for arg in ("-p", f"{key}:={value}")]
    peer = Peer("label_bag_peer")
    try:
        labels = peer.record(f"/{namespace}/segmentation/label", Image)
        infos = peer.record(f"/{namespace}/segmentation/info", SegmentationInfo)
        with serving_node(peer, tmp_path, namespace, *settings, vocabulary=VOCABULARY, image_topic=camera) as node:
            publisher = matched_image_publisher(peer, camera)
            frames = [raw_frame(index) for index in (0, 4, 8)]
            for frame in frames:  # one at a time: the node's latest-frame policy drops nothing
                publisher.publish(frame)
                assert peer.wait_for(lambda frame=frame: any(header_key(i.header) == header_key(frame.header) for i in infos.decoded()), answer_timeout()), f"no answer to frame {frame.header.stamp.sec}\n{node.log_text()[-2000:]}"
            node_labels = {header_key(m.header): m for m in labels.decoded()}
            node_infos = {header_key(m.header): m for m in infos.decoded()}
    finally:
        peer.close()

    write_bag(tmp_path / "in", [(camera, "sensor_msgs/msg/Image", frame) for frame in frames])
    assert label_bag.main([str(tmp_path / "in"), str(tmp_path / "out"), *OFFLINE_ARGS]) == 0
    topics = read_bag(tmp_path / "out")
    offline_labels = [deserialize_message(data, Image) for _, data in topics["/cam/segmentation/label"]]
    offline_infos = [deserialize_message(data, SegmentationInfo) for _, data in topics["/cam/segmentation/info"]]
    assert len(offline_labels) == len(offline_infos) == len(frames)
    for frame, label, info in zip(frames, offline_labels, offline_infos):
        key = header_key(frame.header)
        live_label, live_info = node_labels[key], node_infos[key]
        assert header_key(label.header) == header_key(info.header) == key
        assert (label.encoding, label.height, label.width, label.step) == (live_label.encoding, live_label.height, live_label.width, live_label.step)
        assert bytes(label.data) == bytes(live_label.data), f"labels of frame {frame.header.stamp.sec} differ"
        assert (info.vocabulary_version, info.class_names, info.model, info.cer_topk) == (live_info.vocabulary_version, live_info.class_names, live_info.model, live_info.cer_topk)
        assert list(info.present_class_ids) == list(live_info.present_class_ids)
        assert list(info.pixel_fractions) == list(live_info.pixel_fractions)
    unlabeled = [np.mean(np.frombuffer(bytes(label.data), np.uint8) == 255) for label in offline_labels]
    assert all(0.05 < share < 0.95 for share in unlabeled) and len(set(unlabeled)) == len(frames), f"labels depend on the scores: {unlabeled}"


def test_progress_bar_and_another_storage(tmp_path, capsys):
    """The function API: tqdm's bar (frames/s) when asked, OUT in sqlite3 from an mcap IN."""
    written = write_bag(tmp_path / "in", [(RAW_TOPIC, "sensor_msgs/msg/Image", raw_frame(index)) for index in range(3)])
    settings = PipelineSettings(TEST_MODEL, device="cpu", input_short_edge=120, cer_topk=8, cpu_threads=1)
    pipeline, _ = build_pipeline(settings)
    pipeline.vocabularies.install(pipeline.vocabularies.encode(VOCABULARY))
    summary = label_bag.label_bag(tmp_path / "in", tmp_path / "out", pipeline.segmenter, pipeline.vocabularies, settings, storage="sqlite3", progress=True)
    assert (summary.frames_total, summary.frames_labeled, summary.skipped, summary.messages_copied) == (3, 3, [], 3)
    assert summary.frames_per_s > 0
    bar = capsys.readouterr().err
    assert "labeling" in bar and "3/3" in bar and "frame/s" in bar
    assert label_bag.storage_of(tmp_path / "out") == "sqlite3" and list((tmp_path / "out").glob("*.db3"))
    assert read_bag(tmp_path / "out")[RAW_TOPIC] == [(stamp, data) for _, stamp, data in written]
