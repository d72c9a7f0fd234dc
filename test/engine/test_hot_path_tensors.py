"""No tensor is built from Python values on the per-frame path.

On CUDA, ``torch.tensor(values, device=cuda)`` (and ``new_tensor``, ``as_tensor`` of Python
data) is a blocking copy from pageable host memory: a host synchronisation per frame. Such
constants belong in module buffers or caches made once (per model, per vocabulary, per set of
subscribed masks). A TorchFunctionMode sees every such call the frame path makes, on the CPU
as on the GPU, so the count here is the count there. (Device-only syncs, such as SED's CER
count reads, are counted by the device check's smoke row.)
"""

import numpy as np
import pytest
from torch.overrides import TorchFunctionMode

from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.engine.frame_pipeline import DepthData, OutputRequest, RawImageData
from ovseg_ros.engine.points import PinholeIntrinsics

HEIGHT, WIDTH = 60, 80
FROM_PYTHON_VALUES = {"tensor", "new_tensor", "as_tensor"}


class TensorsFromPythonValues(TorchFunctionMode):
    """Records the calls that build a tensor from Python values (with where they came from)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in FROM_PYTHON_VALUES:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def frame(index: int) -> RawImageData:
    rgb = np.random.default_rng(index).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    return RawImageData("rgb8", HEIGHT, WIDTH, WIDTH * 3, rgb.tobytes())


def depth() -> DepthData:
    millimetres = np.full((HEIGHT, WIDTH), 1500, np.uint16)
    return DepthData(RawImageData("16UC1", HEIGHT, WIDTH, WIDTH * 2, millimetres.tobytes()), PinholeIntrinsics(60.0, 60.0, 40.0, 30.0, WIDTH, HEIGHT))


@pytest.mark.parametrize(
    "model, smoothing, cer_topk",
    [("san_tiny_dev", "flow", None), ("sed_tiny_dev", "ema", 2)],
)
def test_steady_frames_build_no_tensor_from_python_values(model, smoothing, cer_topk):
    # Torch ops for rendering on the CPU too: the path CUDA takes.
    settings = PipelineSettings(model, device="cpu", input_short_edge=64, cer_topk=cer_topk or 0, smoothing=smoothing, torch_rendering=True)
    pipeline, _ = build_pipeline(settings)
    vocabularies = pipeline.vocabularies
    vocabulary = vocabularies.install(vocabularies.encode(["wall", "floor", "person", "chair"]))
    request = OutputRequest(color=True, overlay=True, confidence=True, masks=(0, 2), masks_version=vocabulary.version, points=True)
    pipeline.process(frame(0), 0.0, request, depth=depth())  # first frame: caches per vocabulary and mask set
    with TensorsFromPythonValues() as mode:
        for index in range(1, 4):
            outputs = pipeline.process(frame(index), index / 30.0, request, depth=depth())
    assert sorted(outputs.masks) == [0, 2] and outputs.points is not None and outputs.overlay is not None
    assert mode.calls == [], f"tensors built from Python values on the frame path: {mode.calls}"
