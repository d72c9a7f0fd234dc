"""The frame path, ROS-free: FramePipeline stage by stage (FrameStream: test_frame_stream.py)."""

import array
import warnings

import numpy as np
import pytest
import torch

from ovseg_ros.engine.frame_pipeline import CompressedImageData, FramePipeline, OutputRequest, PipelineError, RawImageData
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.models import build_model
from ovseg_ros.engine.rendering import Renderer
from ovseg_ros.engine.segmenter import Segmenter
from ovseg_ros.engine.smoothing import TemporalSmoother
from ovseg_ros.engine.vocabulary import VocabularyManager

HEIGHT, WIDTH = 48, 64
RGB = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
EVERYTHING = dict(color=True, overlay=True, confidence=True)


def raw(rgb: np.ndarray = RGB) -> RawImageData:
    return RawImageData("rgb8", rgb.shape[0], rgb.shape[1], rgb.shape[1] * 3, rgb.tobytes())


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(build_model("san_tiny_dev"), short_edge=64)


@pytest.fixture
def pipeline(segmenter):
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    return FramePipeline(segmenter, vocabularies, TemporalSmoother("none"))


def test_labels_are_the_models_argmax_at_the_image_size(pipeline, segmenter):
    outputs = pipeline.process(raw(), 0.0)
    vocabulary = pipeline.vocabularies.current
    assert outputs.vocabulary is vocabulary and vocabulary.version == 1
    assert outputs.labels.shape == (HEIGHT, WIDTH) and outputs.labels.dtype == np.uint8
    with torch.inference_mode():
        full = segmenter.scores(segmenter.preprocess(torch.from_numpy(RGB)), vocabulary.text_features).full((HEIGHT, WIDTH))
    assert np.array_equal(outputs.labels, full.argmax(0).numpy())
    counts = np.bincount(outputs.labels.ravel(), minlength=3)
    assert np.allclose(outputs.pixel_fractions, counts / outputs.labels.size)
    assert outputs.present_class_ids.tolist() == np.flatnonzero(counts).tolist()
    assert set(outputs.timings_ms) == {"decode", "preprocess", "model", "postprocess", "download"}


def test_only_requested_outputs_are_rendered(pipeline):
    bare = pipeline.process(raw(), 0.0)
    assert bare.color is None and bare.overlay is None and bare.confidence is None and bare.masks == {}
    version = pipeline.vocabularies.current.version
    full = pipeline.process(raw(), 0.0, OutputRequest(**EVERYTHING, masks=(0, 2), masks_version=version, overlay_alpha=1.0))
    renderer = Renderer(["wall", "floor", "box"])
    assert np.array_equal(full.color, renderer.colorize(torch.from_numpy(full.labels)).numpy())
    assert np.array_equal(full.overlay, full.color)  # alpha 1: the colours alone
    assert full.confidence.dtype == np.uint8 and full.confidence.shape == (HEIGHT, WIDTH)
    assert sorted(full.masks) == [0, 2]
    assert np.array_equal(full.masks[2], np.where(full.labels == 2, 255, 0).astype(np.uint8))


def test_masks_of_another_vocabulary_version_are_not_rendered(pipeline):
    """Mask ids name classes of one version: after a change they may mean other classes."""
    old = pipeline.vocabularies.current.version
    pipeline.vocabularies.install(pipeline.vocabularies.encode(["sky", "road"]))
    outputs = pipeline.process(raw(), 0.0, OutputRequest(masks=(0,), masks_version=old))
    assert outputs.masks == {} and outputs.vocabulary.names == ("sky", "road")


def test_more_than_254_classes_give_uint16_labels(pipeline):
    pipeline.vocabularies.install(pipeline.vocabularies.encode([f"class {i}" for i in range(300)]))
    outputs = pipeline.process(raw(), 0.0, OutputRequest(color=True))
    assert outputs.labels.dtype == np.uint16 and outputs.vocabulary.unlabeled_id == 65535
    assert outputs.labels.max() < 300 and len(outputs.pixel_fractions) == 300
    assert abs(float(outputs.pixel_fractions.sum()) - 1.0) < 1e-5


def test_min_score_marks_weak_pixels_unlabeled(pipeline, segmenter):
    with torch.inference_mode():
        text = pipeline.vocabularies.current.text_features
        best = segmenter.scores(segmenter.preprocess(torch.from_numpy(RGB)), text).full((HEIGHT, WIDTH)).max(0).values
    pipeline.min_score = float(best.median())
    labels = pipeline.process(raw(), 0.0).labels
    assert 0.2 < np.mean(labels == 255) < 0.8


def test_bad_frames_raise_clear_errors(pipeline):
    with pytest.raises(ImageError, match="expected step x height"):
        pipeline.prepare(RawImageData("rgb8", HEIGHT, WIDTH, WIDTH * 3, b"\0" * 10))
    with pytest.raises(ImageError, match="cannot decode"):
        pipeline.prepare(CompressedImageData("jpeg", b"not a jpeg"))
    prepared = pipeline.prepare(raw())
    pipeline.vocabularies.attach(None)
    with pytest.raises(PipelineError, match="no vocabulary"):
        pipeline.infer(prepared, 0.0)


def test_smoothing_runs_on_the_coarse_scores(segmenter):
    """With all weight on the past, the second frame is labeled with the first one's scores.

    (The tiny model's scores are all below 1.85 on a white image and above it on a black
    one; min_score 1.85 makes that visible in the labels.)"""
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    white, black = np.full_like(RGB, 255), np.zeros_like(RGB)

    def pipeline(smoother):
        return FramePipeline(segmenter, vocabularies, smoother, min_score=1.85)

    smoothed = pipeline(TemporalSmoother("ema", strength=1.0, confidence_gate=0.0))
    first = smoothed.process(raw(white), 0.0)
    assert first.smoothing_reset == "no previous state" and np.all(first.labels == 255)
    assert np.all(pipeline(TemporalSmoother("none")).process(raw(black), 0.05).labels != 255)
    second = smoothed.process(raw(black), 0.05)
    assert second.smoothing_reset is None and np.all(second.labels == 255)
    after_gap = smoothed.process(raw(black), 2.0)
    assert after_gap.smoothing_reset.startswith("gap of") and np.all(after_gap.labels != 255)


def test_each_camera_is_smoothed_with_its_own_past(segmenter):
    """One pipeline, two cameras: the black camera's frame is not held back by the white one's
    past (all weight on the past would make it unlabeled, as above), but by its own."""
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("ema", strength=1.0, confidence_gate=0.0), min_score=1.85)
    white, black = np.full_like(RGB, 255), np.zeros_like(RGB)

    def process(rgb, stamp_s, source):
        prepared = pipeline.prepare(raw(rgb), source=source)
        assert prepared.source == source
        return pipeline.finish(pipeline.infer(prepared, stamp_s))

    assert np.all(process(white, 0.0, "left").labels == 255)
    right = process(black, 0.05, "right")
    assert right.smoothing_reset == "no previous state" and np.all(right.labels != 255)
    assert np.all(process(black, 0.1, "left").labels == 255), "left blends with its own (white) past"
    again = process(white, 0.1, "right")
    assert again.smoothing_reset is None and np.all(again.labels != 255), "right blends with its own (black) past"


def test_a_vocabulary_change_reaches_each_consumer_once_at_its_first_frame(segmenter):
    """Smoothing and tracking restart, and the colours are the new classes', at the first frame
    labeled with the new vocabulary; a frame still labeled with the old one renders with its own."""
    vocabularies = VocabularyManager(segmenter.encode_text)
    old = vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("ema"))
    request = OutputRequest(color=True, segments=True)

    def frame(index: int, vocabulary=None):
        outputs = pipeline.process(raw(), 0.05 * index, request, vocabulary)
        expected = Renderer(list(outputs.vocabulary.names)).colorize(torch.from_numpy(outputs.labels)).numpy()
        assert np.array_equal(outputs.color, expected), "rendered with the frame's vocabulary"
        return outputs.smoothing_reset, pipeline.tracker.last_reset_reason

    pipeline.warm_up(vocabularies.encode(["lamp", "desk"]), HEIGHT, WIDTH)  # not installed: version 0, as the node's
    assert frame(0) == ("no previous state", "no previous tracks"), "the warm-up leaves no past"
    assert frame(1) == (None, None)
    new = vocabularies.install(vocabularies.encode(["sky", "road", "car", "person"]))
    assert frame(2) == (f"vocabulary version {new.version}",) * 2
    assert frame(3) == (None, None), "told once, not at every frame"
    assert frame(4, old) == (f"vocabulary version {old.version}",) * 2


def test_the_warm_up_frame_runs_with_a_vocabulary_not_installed_yet(segmenter):
    """The node's configure warms up with the vocabulary it has just encoded (version 0), before
    installing it; the first frame of the installed one then starts afresh."""
    vocabularies = VocabularyManager(segmenter.encode_text)
    encoded = vocabularies.encode(["wall", "floor", "box"])
    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("ema"))
    assert encoded.version == 0 and pipeline.warm_up(encoded, HEIGHT, WIDTH) > 0
    vocabularies.install(encoded)
    outputs = pipeline.process(raw(), 0.0, OutputRequest(color=True, segments=True))
    assert outputs.smoothing_reset == "no previous state" and pipeline.tracker.last_reset_reason == "no previous tracks"
    assert np.array_equal(outputs.color, Renderer(["wall", "floor", "box"]).colorize(torch.from_numpy(outputs.labels)).numpy())


def test_frames_in_read_only_buffers_reach_torch_as_copies_and_writable_ones_as_views(pipeline):
    """torch.from_numpy takes writable arrays only: a ``bytes`` frame is copied (no warning), a
    message's writable buffer (an array.array) is not."""
    message_data = memoryview(array.array("B", RGB.tobytes()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable"
        from_bytes = pipeline.prepare(raw())
        from_message = pipeline.prepare(RawImageData("rgb8", HEIGHT, WIDTH, WIDTH * 3, message_data))
    assert np.array_equal(from_bytes.rgb, RGB) and from_bytes.rgb.flags.writeable
    assert np.shares_memory(from_message.rgb, np.frombuffer(message_data, dtype=np.uint8)), "no copy of a writable buffer"
