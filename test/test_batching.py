"""Batched labeling (offline): SAN's batch pass, FramePipeline.infer_batch and label_bag --batch
give the outputs of one frame at a time."""

import numpy as np
import pytest
import torch
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image

from ovseg_ros.bag import synthetic_frame
from ovseg_ros.frame_pipeline import FramePipeline, OutputRequest, RawImageData
from ovseg_ros.image_codec import message_bytes
from ovseg_ros.models import build_model
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.segmenter import Segmenter
from ovseg_ros.smoothing import TemporalSmoother
from ovseg_ros.tools import label_bag
from ovseg_ros.vocabulary import VocabularyManager

from test_label_bag import COMPRESSED_TOPIC, INFO_TOPIC, OFFLINE_ARGS, RAW_TOPIC, compressed_frame, raw_frame, read_bag, write_bag

VOCABULARY = ["wall", "floor", "box"]
HEIGHT, WIDTH = 60, 80


@pytest.fixture(scope="module")
def san():
    return build_model("san_tiny_dev").eval()


@pytest.mark.parametrize("size", [(64, 96), (70, 100)], ids=["multiple_of_32", "padded"])
def test_san_batch_equals_one_image_at_a_time(san, size):
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    with torch.inference_mode():
        text = san.encode_text(VOCABULARY)
        batch = san.predict(images, text)
        batch_scores = san.forward_batch(images, text)
        for index in range(len(images)):
            alone = san.predict(images[index : index + 1], text)
            for name in ("mask_preds", "attn_biases", "mask_embs", "mask_logits"):
                assert torch.allclose(getattr(batch, name)[index], getattr(alone, name)[0], atol=1e-5), name
            assert torch.allclose(batch_scores[index].full((50, 75)), san(images[index : index + 1], text).full((50, 75)), atol=1e-5)
        assert not torch.allclose(batch_scores[0].full((50, 75)), batch_scores[1].full((50, 75)), atol=1e-3), "each image its own scores"
        with pytest.raises(ValueError, match="forward_batch"):
            san(images, text)


def frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> list[RawImageData]:
    return [RawImageData("rgb8", height, width, width * 3, synthetic_frame(index, height, width).tobytes()) for index in range(count)]


def make_pipeline(model: str, smoothing: str = "none") -> FramePipeline:
    segmenter = Segmenter(build_model(model), short_edge=HEIGHT)
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(VOCABULARY))
    # The random model (seeded weights) gives one class everywhere, its best scores spread over
    # 1.88..1.93: a min_score in between makes the labels depend on each frame's scores.
    return FramePipeline(segmenter, vocabularies, TemporalSmoother(smoothing), min_score=1.905)


def assert_same_outputs(batched, alone):
    assert len(batched) == len(alone)
    for got, expected in zip(batched, alone):
        assert got.labels.dtype == expected.labels.dtype and np.array_equal(got.labels, expected.labels)
        assert np.array_equal(got.pixel_fractions, expected.pixel_fractions)
        assert np.array_equal(got.present_class_ids, expected.present_class_ids)
        assert np.array_equal(got.color, expected.color) and np.array_equal(got.confidence, expected.confidence)
        assert got.smoothing_reset == expected.smoothing_reset


def test_process_batch_equals_process_frame_by_frame():
    pipeline = make_pipeline("san_tiny_dev")
    images, stamps = frames(4), [0.1 * i for i in range(4)]
    request = OutputRequest(color=True, confidence=True)
    batched = pipeline.process_batch(images, stamps, request)
    alone = [pipeline.process(image, stamp, request) for image, stamp in zip(images, stamps)]
    assert_same_outputs(batched, alone)
    unlabeled = [np.mean(outputs.labels == 255) for outputs in alone]
    assert all(0.02 < share < 0.98 for share in unlabeled) and len(set(unlabeled)) == len(images), f"labels depend on the scores: {unlabeled}"
    assert all(outputs.timings_ms["model"] > 0 and "wait" not in outputs.timings_ms for outputs in batched)


def test_a_batch_of_one_model_input_size_may_mix_image_sizes():
    """48 x 64 and 60 x 80 both reach the model at 60 x 80; each is labeled at its own size."""
    pipeline = make_pipeline("san_tiny_dev")
    images = frames(2) + frames(1, 48, 64)
    batched = pipeline.process_batch(images, [0.0, 0.1, 0.2])
    assert_same_outputs(batched, [pipeline.process(image, 0.0) for image in images])
    assert batched[2].labels.shape == (48, 64)


def test_a_batch_of_mixed_sizes_is_refused():
    pipeline = make_pipeline("san_tiny_dev")
    prepared = [pipeline.prepare(image) for image in frames(1) + frames(1, 90, 160)]
    with pytest.raises(ValueError, match="one model input size"):
        pipeline.infer_batch(prepared, [0.0, 0.1])
    with pytest.raises(ValueError, match="stamps"):
        pipeline.infer_batch(prepared[:1], [0.0, 0.1])


def test_frames_go_one_at_a_time_with_smoothing_on():
    """Smoothing blends each frame into the next: in order, frame by frame."""
    batched_pipeline, alone_pipeline = make_pipeline("san_tiny_dev", "ema"), make_pipeline("san_tiny_dev", "ema")
    images, stamps = frames(3), [0.1 * i for i in range(3)]
    batched = batched_pipeline.process_batch(images, stamps)
    assert_same_outputs(batched, [alone_pipeline.process(image, stamp) for image, stamp in zip(images, stamps)])


def test_sed_batches_its_clip_tower_and_decodes_each_image_with_its_own_cer():
    """SED's decoder uses the class axis as its batch axis: the CLIP tower takes the batch,
    the cost volume and CER each image, so each frame keeps its own classes."""
    batched_pipeline, alone_pipeline = make_pipeline("sed_tiny_dev", "none"), make_pipeline("sed_tiny_dev", "none")
    for pipeline in (batched_pipeline, alone_pipeline):
        pipeline.set_cer_topk(1)
        pipeline.min_score = 0.0  # SED's scores are probabilities: the labels are the argmax
    assert batched_pipeline.segmenter.batches
    images, stamps = frames(3), [0.1 * i for i in range(3)]
    batched = batched_pipeline.process_batch(images, stamps)
    assert_same_outputs(batched, [alone_pipeline.process(image, stamp) for image, stamp in zip(images, stamps)])
    assert all(outputs.cer_topk == 1 for outputs in batched)


def test_label_bag_batches_give_the_bag_of_one_frame_at_a_time(tmp_path, capsys, monkeypatch):
    """Two interleaved cameras, a corrupt frame inside a batch, a frame of another model input
    size that ends a batch: the same messages (labels byte-identical) at the same places and stamps."""
    batch_sizes = []
    batch_pass = Segmenter.scores_batch

    def recorded_batch_pass(self, images, text_features):
        batch_sizes.append(len(images))
        return batch_pass(self, images, text_features)

    monkeypatch.setattr(Segmenter, "scores_batch", recorded_batch_pass)
    truncated = raw_frame(3)
    truncated.data = message_bytes(bytes(100))
    wider = raw_frame(6)  # 90 x 160: the model sees 120 x 213, not 120 x 160
    wider.height, wider.width, wider.step = 90, 160, 160 * 3
    wider.data = message_bytes(synthetic_frame(6, 90, 160))
    camera_info = CameraInfo()
    raws = [raw_frame(0), raw_frame(1), raw_frame(2), truncated, raw_frame(4), raw_frame(5), wider, raw_frame(7)]
    messages = []
    for index, frame in enumerate(raws):
        messages.append((RAW_TOPIC, "sensor_msgs/msg/Image", frame))
        if index % 2:
            messages.append((COMPRESSED_TOPIC, "sensor_msgs/msg/CompressedImage", compressed_frame(index)))
        if index == 2:
            messages.append((INFO_TOPIC, "sensor_msgs/msg/CameraInfo", camera_info))
    write_bag(tmp_path / "in", messages)

    bags = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        assert label_bag.main([str(tmp_path / "in"), str(out), *OFFLINE_ARGS, "--outputs", "label,info,class_map,color", "--batch", str(batch)]) == 0
        captured = capsys.readouterr()
        assert f"batch {batch}" in captured.err and "offline: 11/12 frames labeled" in captured.out
        assert captured.err.count("skipped frame") == 1 and "bad image" in captured.err
        bags[batch] = out
    # /cam: 0-2, (3 corrupt) 4-5 (6 is wider: alone, then 7 alone); /cam2: 1, 3, 5 (7 alone).
    assert batch_sizes == [3, 3, 2], "batch 1 runs frame by frame, batch 3 in batches"
    with label_bag.Reader(bags[1]) as alone, label_bag.Reader(bags[3]) as batched:
        alone_messages = [(c.topic, t, bytes(d)) for c, t, d in alone.messages()]
        batched_messages = [(c.topic, t, bytes(d)) for c, t, d in batched.messages()]
    assert [(topic, t) for topic, t, _ in batched_messages] == [(topic, t) for topic, t, _ in alone_messages], "same messages, same order and stamps"
    for (topic, _, got), (_, _, expected) in zip(batched_messages, alone_messages):
        if topic.endswith("/segmentation/info"):  # its stage times differ from run to run
            got, expected = deserialize_message(got, SegmentationInfo), deserialize_message(expected, SegmentationInfo)
            assert (got.header, got.class_names, list(got.present_class_ids), list(got.pixel_fractions)) == (
                expected.header, expected.class_names, list(expected.present_class_ids), list(expected.pixel_fractions))
        elif topic.endswith("/segmentation/label_info"):  # rclpy leaves CDR padding bytes as they were
            got, expected = deserialize_message(got, ClassMap), deserialize_message(expected, ClassMap)
            assert (got.header, got.class_names, got.vocabulary_version) == (expected.header, expected.class_names, expected.vocabulary_version)
        elif topic.startswith("/cam") and "/segmentation/" in topic:  # labels and colours
            got, expected = deserialize_message(got, Image), deserialize_message(expected, Image)
            assert (got.header, got.encoding, got.height, got.width, got.step) == (expected.header, expected.encoding, expected.height, expected.width, expected.step)
            assert bytes(got.data) == bytes(expected.data), f"{topic} of frame {got.header.stamp.sec} differs"
        else:  # copied: the same bytes
            assert got == expected, f"{topic} differs"
    labels = [bytes(deserialize_message(data, Image).data) for _, data in read_bag(bags[3])["/cam/segmentation/label"]]
    assert len(labels) == len(raws) - 1 and len(set(labels)) == len(labels), "every frame its own labels"


def test_batch_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        label_bag.main([str(tmp_path), str(tmp_path / "out"), "--batch", "-1"])
