"""The engine without OpenCV, as on the GPU check machine (robots have it).

A subprocess blocks ``import cv2`` (``sys.modules["cv2"] = None``) before importing the
engine: rgb8 decoding, preprocessing, the model, smoothing ``none``/``ema`` and the torch
rendering path must work; every path that needs cv2 must say so in its error.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ovseg_ros.engine.rendering import Renderer
from ovseg_ros.engine.smoothing import TemporalSmoother

HEIGHT, WIDTH = 48, 64
NAMES = ["wall", "floor", "box"]

WITHOUT_CV2 = textwrap.dedent(f"""
    import json, sys
    sys.modules["cv2"] = None  # import cv2 now raises ImportError
    import numpy as np, torch
    from ovseg_ros.engine.frame_pipeline import CompressedImageData, FramePipeline, OutputRequest, RawImageData
    from ovseg_ros.engine.image_codec import ImageError, decode_compressed, decode_image
    from ovseg_ros.models import build_model
    from ovseg_ros.engine.rendering import Renderer
    from ovseg_ros.engine.segments import find_segments
    from ovseg_ros.engine.segmenter import Segmenter
    from ovseg_ros.engine.smoothing import TemporalSmoother
    from ovseg_ros.engine.vocabulary import VocabularyManager

    def error_of(call):
        try:
            call()
        except (ImageError, ImportError) as exc:
            return f"{{type(exc).__name__}}: {{exc}}"
        return None

    rgb = np.random.default_rng(0).integers(0, 256, size=({HEIGHT}, {WIDTH}, 3), dtype=np.uint8)
    raw = RawImageData("rgb8", {HEIGHT}, {WIDTH}, {WIDTH} * 3, rgb.tobytes())
    result = {{"cv2_blocked": error_of(lambda: __import__("cv2")) is not None,
              "rgb8_decoded": bool(np.array_equal(decode_image("rgb8", {HEIGHT}, {WIDTH}, {WIDTH} * 3, rgb.tobytes()), rgb)),
              "bgr8_error": error_of(lambda: decode_image("bgr8", {HEIGHT}, {WIDTH}, {WIDTH} * 3, rgb.tobytes())),
              "compressed_error": error_of(lambda: decode_compressed("png", b"not empty")),
              "flow_error": error_of(lambda: TemporalSmoother("flow")),
              "cv2_renderer_error": error_of(lambda: Renderer({NAMES!r}, torch_ops=False)),
              "segments_error": error_of(lambda: find_segments(rgb[..., 0], np.ones(rgb.shape[:2], np.float32), {NAMES!r}))}}

    torch.manual_seed(0)
    scores = torch.rand(3, {HEIGHT}, {WIDTH})
    ema = TemporalSmoother("ema", strength=0.5)
    ema.update(scores, None, 0.0)
    result["ema"] = ema.update(scores.flip(0), None, 0.1).tolist()

    renderer = Renderer({NAMES!r}, torch_ops=True)
    labels = torch.from_numpy(rgb[..., 0] % 4)  # 3 = a value that is no class: unlabeled colour
    color = renderer.colorize(labels)
    result["rendered"] = {{"color": color.tolist(), "overlay": renderer.overlay(torch.from_numpy(rgb), color, 0.3).tolist(),
                          "masks": renderer.masks(labels, [0, 2]).tolist(), "counts": renderer.class_counts(labels).tolist(),
                          "confidence": renderer.confidence(scores[0]).tolist()}}

    segmenter = Segmenter(build_model("san_tiny_dev"), short_edge=64)
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode({NAMES!r}))
    pipeline = FramePipeline(segmenter, vocabularies, TemporalSmoother("ema"))
    prepared = pipeline.prepare(raw)
    result["model_input_shape"] = list(prepared.model_input.shape)
    result["compressed_frame_error"] = error_of(lambda: pipeline.prepare(CompressedImageData("jpeg", b"not empty")))
    # On the CPU the pipeline's renderer takes the cv2 path (on CUDA, the torch one).
    result["cpu_infer_error"] = error_of(lambda: pipeline.infer(prepared, 0.0))
    torch_rendering = FramePipeline(segmenter, vocabularies, TemporalSmoother("ema"), torch_rendering=True)
    outputs = torch_rendering.process(raw, 0.0, OutputRequest(color=True, overlay=True, confidence=True))
    result["whole_frame"] = [list(outputs.labels.shape), list(outputs.color.shape), float(outputs.pixel_fractions.sum())]
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def without_cv2() -> dict:
    run = subprocess.run([sys.executable, "-c", WITHOUT_CV2], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_engine_imports_and_decodes_rgb8_without_cv2(without_cv2):
    assert without_cv2["cv2_blocked"]
    assert without_cv2["rgb8_decoded"]
    assert without_cv2["model_input_shape"] == [1, 3, 64, round(64 * WIDTH / HEIGHT)]


def test_a_whole_frame_with_torch_rendering_needs_no_cv2(without_cv2):
    labels_shape, color_shape, fractions = without_cv2["whole_frame"]
    assert labels_shape == [HEIGHT, WIDTH] and color_shape == [HEIGHT, WIDTH, 3] and abs(fractions - 1.0) < 1e-5


def test_paths_that_need_cv2_say_so(without_cv2):
    for key in ("bgr8_error", "compressed_error", "compressed_frame_error"):
        assert without_cv2[key].startswith("ImageError: ") and "needs OpenCV" in without_cv2[key], key
    assert "bgr8" in without_cv2["bgr8_error"]
    assert without_cv2["flow_error"].startswith("ImportError: smoothing mode 'flow' needs OpenCV")
    assert without_cv2["segments_error"].startswith("ImportError: segments need OpenCV")
    for key in ("cv2_renderer_error", "cpu_infer_error"):
        assert without_cv2[key].startswith("ImportError: ") and "torch_ops=True" in without_cv2[key], key


def test_ema_and_torch_rendering_without_cv2_match_the_engine_with_it(without_cv2):
    torch.manual_seed(0)
    scores = torch.rand(3, HEIGHT, WIDTH)
    ema = TemporalSmoother("ema", strength=0.5)
    ema.update(scores, None, 0.0)
    assert np.array_equal(np.array(without_cv2["ema"], np.float32), ema.update(scores.flip(0), None, 0.1).numpy())

    rgb = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    labels = torch.from_numpy(rgb[..., 0] % 4)
    cv2_path = Renderer(NAMES, torch_ops=False)  # here cv2 is installed: the reference
    color = cv2_path.colorize(labels)
    rendered = without_cv2["rendered"]
    assert np.array_equal(np.array(rendered["color"], np.uint8), color.numpy())
    assert np.array_equal(np.array(rendered["overlay"], np.uint8), cv2_path.overlay(torch.from_numpy(rgb), color, 0.3).numpy())
    assert np.array_equal(np.array(rendered["masks"], np.uint8), cv2_path.masks(labels, [0, 2]).numpy())
    assert rendered["counts"] == cv2_path.class_counts(labels).tolist()
    assert np.array_equal(np.array(rendered["confidence"], np.uint8), cv2_path.confidence(scores[0]).numpy())
