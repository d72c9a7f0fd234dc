"""Batched labeling: SAN's batch pass, FramePipeline.infer_batch (frames of several cameras and
sizes, each with its own request and smoothing past, one vocabulary and one CER K a call) and
label_bag --batch give the outputs of one frame at a time."""

import numpy as np
import pytest
import torch
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.engine.frame_pipeline import FramePipeline, OutputRequest, RawImageData
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.models import build_model
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.engine.segmenter import Segmenter
from ovseg_ros.engine.smoothing import TemporalSmoother
from ovseg_ros.commands import label_bag
from ovseg_ros.engine.vocabulary import VocabularyManager

from bag_support import COMPRESSED_TOPIC, INFO_TOPIC, OFFLINE_ARGS, RAW_TOPIC, compressed_frame, raw_frame, read_bag, write_bag

VOCABULARY = ["wall", "floor", "box"]
CLASSES = ["wall", "floor", "box", "door", "window", "chair", "table", "lamp"]
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


@pytest.fixture
def passes(monkeypatch):
    """The model calls of the pipelines, in order: the number of images of each."""
    calls = []
    one, batch = Segmenter.scores, Segmenter.scores_batch

    def scores(self, image, text_features, cer_topk=None):
        calls.append(1)
        return one(self, image, text_features, cer_topk)

    def scores_batch(self, images, text_features, cer_topk=None):
        calls.append(len(images))
        return batch(self, images, text_features, cer_topk)

    monkeypatch.setattr(Segmenter, "scores", scores)
    monkeypatch.setattr(Segmenter, "scores_batch", scores_batch)
    return calls


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


def test_process_batch_equals_process_frame_by_frame(passes):
    pipeline = make_pipeline("san_tiny_dev")
    images, stamps = frames(4), [0.1 * i for i in range(4)]
    request = OutputRequest(color=True, confidence=True)
    batched = pipeline.process_batch(images, stamps, [request] * 4)
    assert passes == [4]
    alone = [pipeline.process(image, stamp, request) for image, stamp in zip(images, stamps)]
    assert_same_outputs(batched, alone)
    unlabeled = [np.mean(outputs.labels == 255) for outputs in alone]
    assert all(0.02 < share < 0.98 for share in unlabeled) and len(set(unlabeled)) == len(images), f"labels depend on the scores: {unlabeled}"
    assert all(outputs.timings_ms["model"] > 0 and "wait" not in outputs.timings_ms for outputs in batched)


def test_a_batch_of_one_model_input_size_may_mix_image_sizes():
    """48 x 64 and 60 x 80 both reach the model at 60 x 80; each is labeled at its own size."""
    pipeline = make_pipeline("san_tiny_dev")
    images = frames(2) + frames(1, 48, 64)
    batched = pipeline.process_batch(images, [0.0, 0.1, 0.2], [OutputRequest()] * 3)
    assert_same_outputs(batched, [pipeline.process(image, 0.0) for image in images])
    assert batched[2].labels.shape == (48, 64)


def test_frames_of_several_model_input_sizes_are_grouped_one_pass_per_size(passes):
    """Three cameras: 60 x 80 (model 60 x 80), 90 x 160 (model 60 x 107) and 48 x 64 (60 x 80
    too), interleaved: one pass per model input size, in order of first appearance, each
    frame's outputs those of it alone, in the input's order."""
    pipeline = make_pipeline("san_tiny_dev")
    small, wide, smaller = frames(3), frames(2, 90, 160), frames(1, 48, 64)
    images = [small[0], wide[0], small[1], smaller[0], wide[1], small[2]]
    request = OutputRequest(color=True, confidence=True)
    batched = pipeline.process_batch(images, [0.1 * i for i in range(6)], [request] * 6)
    assert passes == [4, 2], "the 60 x 80 frames first (first seen), then the 60 x 107 ones"
    alone = [pipeline.process(image, 0.0, request) for image in images]
    assert passes[2:] == [1] * 6
    assert_same_outputs(batched, alone)
    assert [outputs.labels.shape for outputs in batched] == [(60, 80), (90, 160), (60, 80), (48, 64), (90, 160), (60, 80)]
    pipeline.process_batch([wide[0], small[0]], [0.0, 0.1], [request] * 2)
    assert passes[8:] == [1, 1], "a size of one frame: a pass of its own"


def test_a_batch_needs_a_stamp_and_a_request_per_frame():
    pipeline = make_pipeline("san_tiny_dev")
    prepared = [pipeline.prepare(image) for image in frames(2)]
    with pytest.raises(ValueError, match="stamps"):
        pipeline.infer_batch(prepared, [0.0], [OutputRequest()] * 2)
    with pytest.raises(ValueError, match="requests"):
        pipeline.infer_batch(prepared, [0.0, 0.1], [OutputRequest()])


def test_each_frame_gets_the_outputs_it_asked_for(passes):
    pipeline = make_pipeline("san_tiny_dev")
    version = pipeline.vocabularies.current.version
    requests = [OutputRequest(color=True), OutputRequest(masks=(0, 2), masks_version=version), OutputRequest(confidence=True, overlay=True)]
    batched = pipeline.process_batch(frames(3), [0.0, 0.1, 0.2], requests)
    assert passes == [3]
    colored, masked, rest = batched
    assert colored.color is not None and colored.overlay is None and colored.confidence is None and colored.masks == {}
    assert masked.color is None and masked.overlay is None and masked.confidence is None and sorted(masked.masks) == [0, 2]
    assert np.array_equal(masked.masks[2], np.where(masked.labels == 2, 255, 0).astype(np.uint8))
    assert rest.color is None and rest.overlay is not None and rest.confidence is not None and rest.masks == {}
    for outputs, image, request in zip(batched, frames(3), requests):
        alone = pipeline.process(image, 0.0, request)
        assert np.array_equal(outputs.labels, alone.labels) and np.array_equal(outputs.overlay, alone.overlay)


@pytest.mark.parametrize("rear_size, expected_passes", [((HEIGHT, WIDTH), [6]), ((90, 160), [3, 3])], ids=["one_size", "two_sizes"])
def test_smoothing_on_each_camera_blends_its_own_frames_in_one_call(passes, rear_size, expected_passes):
    """Two cameras interleaved, three frames each, in one call with ema smoothing: each camera's
    outputs are those of a pipeline of its own, frame by frame (one past for both would differ)."""
    batched_pipeline = make_pipeline("san_tiny_dev", "ema")
    front, rear = frames(3), [RawImageData("rgb8", *rear_size, rear_size[1] * 3, synthetic_frame(index + 5, *rear_size).tobytes()) for index in range(3)]
    images = [image for pair in zip(front, rear) for image in pair]
    sources = ["front", "rear"] * 3
    stamps = [0.1 * (i // 2) + 0.01 * (i % 2) for i in range(6)]
    prepared = [batched_pipeline.prepare(image, source=source) for image, source in zip(images, sources)]
    batched = [batched_pipeline.finish(inferred) for inferred in batched_pipeline.infer_batch(prepared, stamps, [OutputRequest(color=True)] * 6)]
    assert passes == expected_passes
    alone = {"front": make_pipeline("san_tiny_dev", "ema"), "rear": make_pipeline("san_tiny_dev", "ema")}
    expected = [alone[source].process(image, stamp, OutputRequest(color=True)) for image, source, stamp in zip(images, sources, stamps)]
    assert_same_outputs(batched, expected)
    assert [outputs.smoothing_reset for outputs in batched] == ["no previous state"] * 2 + [None] * 4
    shared = make_pipeline("san_tiny_dev", "ema")  # one past for both cameras
    mixed = [shared.process(image, stamp) for image, stamp in zip(images, stamps)]
    assert any(not np.array_equal(a.labels, b.labels) or a.smoothing_reset != b.smoothing_reset for a, b in zip(batched, mixed))
    unsmoothed = [make_pipeline("san_tiny_dev").process(image, 0.0) for image in images[2:]]
    assert any(not np.array_equal(a.labels, b.labels) for a, b in zip(batched[2:], unsmoothed)), "smoothing changes labels"


def test_sed_batches_its_clip_tower_and_decodes_each_image_with_its_own_cer():
    """SED's decoder uses the class axis as its batch axis: the CLIP tower takes the batch,
    the cost volume and CER each image, so each frame keeps its own classes."""
    batched_pipeline, alone_pipeline = make_pipeline("sed_tiny_dev", "none"), make_pipeline("sed_tiny_dev", "none")
    for pipeline in (batched_pipeline, alone_pipeline):
        pipeline.set_cer_topk(1)
        pipeline.min_score = 0.0  # SED's scores are probabilities: the labels are the argmax
    assert batched_pipeline.segmenter.batches
    images, stamps = frames(3), [0.1 * i for i in range(3)]
    batched = batched_pipeline.process_batch(images, stamps, [OutputRequest()] * 3)
    assert_same_outputs(batched, [alone_pipeline.process(image, stamp) for image, stamp in zip(images, stamps)])
    assert all(outputs.cer_topk == 1 for outputs in batched)


def test_smoothing_follows_the_input_order_across_passes(passes):
    """A camera whose resolution changes within a call: smoothed in input order (each change
    restarts it), not in the order of the passes (which would blend its first and third frame)."""
    pipeline = make_pipeline("san_tiny_dev", "ema")
    images = [frames(1)[0], frames(1, 90, 160)[0], frames(2)[1]]
    stamps = [0.0, 0.1, 0.2]
    prepared = [pipeline.prepare(image, source="zoom") for image in images]
    batched = [pipeline.finish(inferred) for inferred in pipeline.infer_batch(prepared, stamps, [OutputRequest()] * 3)]
    assert passes == [2, 1]
    alone = make_pipeline("san_tiny_dev", "ema")
    assert_same_outputs(batched, [alone.process(image, stamp) for image, stamp in zip(images, stamps)])
    assert batched[0].smoothing_reset == "no previous state"
    assert all("resolution changed" in outputs.smoothing_reset for outputs in batched[1:])


def test_a_cer_budget_gives_every_frame_of_a_call_one_k(passes):
    """A budget no frame meets lowers K after two frames over it (p95 of a window of 30): the
    frames of one call all run at the K of its start, the next call at the lowered one."""
    pipeline, fixed = make_pipeline("sed_tiny_dev"), make_pipeline("sed_tiny_dev")
    pipeline.min_score = fixed.min_score = 0.0
    pipeline.vocabularies.install(pipeline.vocabularies.encode(CLASSES))
    fixed.vocabularies.install(fixed.vocabularies.encode(CLASSES))
    pipeline.set_cer_topk(4)
    pipeline.set_latency_budget(1e-6)
    images, stamps = frames(3), [0.1 * i for i in range(3)]
    first = pipeline.process_batch(images, stamps, [OutputRequest()] * 3)
    assert [outputs.cer_topk for outputs in first] == [4, 4, 4]
    assert pipeline.cer_topk == 2
    second = pipeline.process_batch(images, stamps, [OutputRequest()] * 3)
    assert [outputs.cer_topk for outputs in second] == [2, 2, 2]
    assert passes == [3, 3]
    for topk, batched in ((4, first), (2, second)):  # the model ran at the call's K: the same outputs as at a fixed K
        fixed.set_cer_topk(topk)
        assert_same_outputs(batched, [fixed.process(image, stamp) for image, stamp in zip(images, stamps)])


def test_one_vocabulary_labels_every_frame_of_a_call(monkeypatch):
    """A vocabulary installed while a call runs (here: by its first model pass) labels the
    next call; every frame of this one carries the vocabulary read at its start."""
    pipeline = make_pipeline("san_tiny_dev")
    before = pipeline.vocabularies.current
    one = Segmenter.scores_batch

    def install_during_the_pass(self, images, text_features, cer_topk=None):
        if pipeline.vocabularies.current is before:
            pipeline.vocabularies.install(pipeline.vocabularies.encode(["sky", "road"]))
        return one(self, images, text_features, cer_topk)

    monkeypatch.setattr(Segmenter, "scores_batch", install_during_the_pass)
    images = frames(2) + frames(2, 90, 160)  # two passes: the new vocabulary is in before the second
    batched = pipeline.process_batch(images, [0.0, 0.1, 0.2, 0.3], [OutputRequest()] * 4)
    assert pipeline.vocabularies.current is not before
    assert all(outputs.vocabulary is before for outputs in batched) and {len(outputs.pixel_fractions) for outputs in batched} == {3}
    after = pipeline.process_batch(images, [0.4, 0.5, 0.6, 0.7], [OutputRequest()] * 4)
    assert all(outputs.vocabulary is pipeline.vocabularies.current and outputs.vocabulary.version == before.version + 1 for outputs in after)


def test_label_bag_batches_give_the_bag_of_one_frame_at_a_time(tmp_path, capsys, monkeypatch):
    """Two interleaved cameras, a corrupt frame inside a batch, a frame of another model input
    size that ends a batch: the same messages (labels byte-identical) at the same places and stamps."""
    batch_sizes = []
    batch_pass = Segmenter.scores_batch

    def recorded_batch_pass(self, images, text_features, cer_topk=None):
        batch_sizes.append(len(images))
        return batch_pass(self, images, text_features, cer_topk)

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
