"""The inference facade: vocabulary handling, label encoding, CER switch, preprocessing."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from ovseg_ros.models import build_model
from ovseg_ros.models.sed import build_sed
from ovseg_ros.segmenter import Segmenter, resized_shape
from ovseg_ros.tools.check_parity import seeded_state_dict
from ovseg_ros.vocabulary import TextEmbeddingCache, VocabularyError, load_class_list

RGB = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    return Segmenter(build_model("san_tiny_dev"))


def test_set_vocabulary_then_segment_at_input_resolution(tiny):
    first = tiny.set_vocabulary(["wall", "floor", "box"])
    result = tiny.segment(RGB)
    assert result.vocabulary is first and first.version == 1
    assert result.labels.shape == (60, 80) and result.labels.dtype == np.uint8
    assert result.scores.shape == (3, 60, 80)
    assert np.array_equal(result.labels, result.scores.argmax(0).numpy())
    assert np.allclose(result.confidence, result.scores.max(0).values.numpy())
    assert tiny.set_vocabulary(["sky"]).version == 2


def test_more_than_254_classes_give_mono16_labels(tiny):
    vocabulary = tiny.encode_vocabulary([f"class {i}" for i in range(255)])
    result = tiny.segment(RGB, vocabulary)
    assert vocabulary.unlabeled_id == 65535 and result.labels.dtype == np.uint16


def test_min_score_marks_weak_pixels_unlabeled(tiny):
    vocabulary = tiny.encode_vocabulary(["wall", "floor"])
    tiny.min_score = float(np.median(tiny.segment(RGB, vocabulary).confidence))
    try:
        labels = tiny.segment(RGB, vocabulary).labels
    finally:
        tiny.min_score = 0.0
    assert 0.3 < np.mean(labels == 255) < 0.7


def test_bad_input_is_refused_clearly(tiny):
    with pytest.raises(VocabularyError):
        tiny.encode_vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="uint8 RGB"):
        tiny.segment(RGB[..., 0], tiny.encode_vocabulary(["a"]))
    with pytest.raises(ValueError, match="no category early rejection"):
        Segmenter(build_model("san_tiny_dev"), cer_topk=8)


def test_shipped_class_lists():
    ade150, ade847 = load_class_list("ade150"), load_class_list("ade847")
    assert (len(ade150), len(ade847)) == (150, 847)
    assert ade150[:3] == ["wall", "building", "sky"] and ade847[1] == "building, edifice"


def test_resize_matches_detectron2_rounding():
    assert resized_shape(480, 640) == (640, 853)
    assert resized_shape(360, 500) == (640, 889)
    assert resized_shape(100, 4000) == (64, 2560)


def test_engine_imports_without_rclpy():
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import ovseg_ros.segmenter, ovseg_ros.models.sed, ovseg_ros.models.san, ovseg_ros.vocabulary, "
        "ovseg_ros.smoothing, ovseg_ros.rendering, ovseg_ros.image_codec, ovseg_ros.bag, ovseg_ros.tools.check_parity\n"
        "assert 'rclpy' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocessing_deviation_from_the_authors_path_is_small(fixtures_dir):
    """We resize the camera image on the device (torch, float) instead of with PIL (uint8).

    Measured against the authors' output on the same seeded weights: the probabilities move
    by a few 1e-2 at most near edges, and the labels agree almost everywhere.
    """
    case_dir = fixtures_dir / "sed_b_seed1"
    case = json.loads((case_dir / "case.json").read_text())
    reference = np.load(case_dir / "arrays.npz")
    segmenter = Segmenter(build_sed("convnext_base", state_dict=seeded_state_dict(case, case_dir)))
    rgb = cv2.cvtColor(cv2.imread(str(case_dir / "image.png")), cv2.COLOR_BGR2RGB)
    vocabulary = segmenter.encode_vocabulary(case["class_names"])
    with torch.inference_mode():
        probs = segmenter.model.predict(segmenter.preprocess(rgb), vocabulary.text_features).probs.numpy()
    labels = segmenter.segment(rgb, vocabulary).labels
    diff = np.abs(probs - reference["normal_probs"])
    agreement = float(np.mean(labels == reference["sem_seg_argmax"]))
    print(f"preprocessing deviation: max abs {diff.max():.2e}, mean abs {diff.mean():.2e}, argmax agreement {agreement:.5f}")
    assert diff.mean() < 1e-3 and agreement > 0.98



@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_and_stays_close_to_fp32(precision):
    fp32 = Segmenter(build_model("san_tiny_dev"))
    reduced = Segmenter(build_model("san_tiny_dev"), precision=precision)
    vocabulary = fp32.encode_vocabulary(["wall", "floor", "box"])
    reference, result = fp32.segment(RGB, vocabulary), reduced.segment(RGB, vocabulary)
    assert result.scores.dtype == torch.float32
    drift = float((result.scores - reference.scores).abs().max())
    print(f"{precision} drift vs fp32 (tiny SAN, CPU): {drift:.2e}")
    assert drift < 0.1
    with pytest.raises(ValueError, match="precision"):
        Segmenter(build_model("san_tiny_dev"), precision="int8")


def test_text_cache_never_serves_another_precisions_embeddings(tmp_path):
    """fp32 features cached first are not handed to bf16 / fp16 segmenters, nor theirs to fp32."""
    model, names = build_model("san_tiny_dev"), ["wall", "floor", "box"]

    def encode(precision, cached=True):
        cache = TextEmbeddingCache(tmp_path, model.variant, "random") if cached else None
        features = Segmenter(model, precision=precision, text_cache=cache).encode_vocabulary(names).text_features
        return features, cache

    fp32, _ = encode("fp32")
    for precision in ("bf16", "fp16", "fp32"):
        features, cache = encode(precision)
        assert (cache.hits, cache.misses) == ((3, 0) if precision == "fp32" else (0, 3)), precision
        assert torch.equal(features, encode(precision, cached=False)[0]), precision
        assert torch.equal(features, fp32) == (precision == "fp32"), precision
    assert encode("bf16")[1].hits == 3


def test_channels_last_gives_the_same_scores():
    vocabulary = None
    results = []
    for channels_last in (False, True):
        segmenter = Segmenter(build_model("san_tiny_dev"), channels_last=channels_last)
        vocabulary = vocabulary or segmenter.encode_vocabulary(["wall", "floor"])
        results.append(segmenter.segment(RGB, vocabulary).scores)
    assert torch.allclose(results[0], results[1], atol=1e-4)
