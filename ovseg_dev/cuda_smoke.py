"""The device check's first row: tiny models through every CUDA path of the frame path, with host syncs counted.

    python -m ovseg_dev.cuda_smoke --device cuda      # on the GPU machine (device_check call 1)
    python -m ovseg_dev.cuda_smoke --device cpu       # the same paths on the CPU (no sync counts)

Each path runs the real :class:`~ovseg_ros.engine.frame_pipeline.FramePipeline` (or
:class:`~ovseg_ros.engine.frame_stream.FrameStream`) on tiny SED / SAN models: warm-up frames first,
then measured frames under ``torch.cuda.set_sync_debug_mode("warn")``, whose warnings are
counted per frame and traced to the line that caused them. A path fails when it raises, when
its outputs are wrong in kind (dtype, shape, empty cloud), or when it synchronises with the
host more often than it should:

* SED with CER: 3 per frame by design (the kept-class count that sizes each decoder stage's bucket);
* a frame whose point cloud is requested: 1 (the compact copy, sized by the count downloaded with the frame);
* everything else: 0 (uploads from pinned memory without blocking, constants made once).

Prints one markdown table (the device check parses it) and exits 1 if a path failed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import ovseg_ros

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.engine.frame_pipeline import DepthData, FrameOutputs, FramePipeline, OutputRequest, RawImageData
from ovseg_ros.engine.frame_stream import FrameStream, FrameTicket
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.points import PinholeIntrinsics
from ovseg_ros.engine.builder import PipelineSettings, build_pipeline

HEIGHT, WIDTH = 120, 160
CLASSES = ["wall", "floor", "person", "box", "chair", "table"]
OTHER_CLASSES = ["sky", "road", "car"]
#: Host syncs per frame by design (see the module docstring).
CER_SYNCS = 3
POINTS_SYNCS = 1
SYNC_WARNING = "synchronizing"  # torch's text: "called a synchronizing CUDA operation"
PACKAGE_DIR = str(Path(ovseg_ros.__file__).resolve().parent)


@dataclass
class PathResult:
    name: str
    frames: int = 0
    syncs: int | None = None  # None: not countable (CPU)
    expected_per_frame: int = 0
    sources: Counter = field(default_factory=Counter)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and (self.syncs is None or self.syncs <= self.expected_per_frame * self.frames)


def rgb_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> RawImageData:
    return RawImageData("rgb8", height, width, width * 3, synthetic_frame(index, height, width).tobytes())


def depth_frame(encoding: str, height: int = HEIGHT, width: int = WIDTH) -> DepthData:
    """A plane 1.5 m away (16UC1 millimetres or 32FC1 metres), with a hole of no measurement."""
    if encoding == "16UC1":
        pixels = np.full((height, width), 1500, np.uint16)
    else:
        pixels = np.full((height, width), 1.5, np.float32)
    pixels[: height // 4, : width // 4] = 0
    intrinsics = PinholeIntrinsics(0.8 * width, 0.8 * width, width / 2, height / 2, width, height)
    return DepthData(RawImageData(encoding, height, width, width * pixels.itemsize, pixels.tobytes()), intrinsics)


class SyncCounter:
    """Counts the host synchronisations torch reports while it is entered (CUDA only; any thread)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.sources: Counter = Counter()
        self._records: list | None = None

    def __enter__(self) -> SyncCounter:
        if self.cuda:
            torch.cuda.synchronize()
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)
            for record in self._records:
                if SYNC_WARNING in str(record.message):
                    self.sources[f"{Path(record.filename).name}:{record.lineno}"] += 1

    @property
    def count(self) -> int | None:
        return sum(self.sources.values()) if self.cuda else None


def make_pipeline(model: str, device: str, precision: str, cer_topk: int | None = None, smoothing: str = "none") -> FramePipeline:
    pipeline, _ = build_pipeline(PipelineSettings(model, device=device, precision=precision, input_short_edge=HEIGHT, cer_topk=cer_topk or 0, smoothing=smoothing))
    pipeline.vocabularies.install(pipeline.vocabularies.encode(CLASSES))
    return pipeline


def every_output(pipeline: FramePipeline, points: bool = False) -> OutputRequest:
    version = pipeline.vocabularies.current.version
    return OutputRequest(color=True, overlay=True, confidence=True, masks=(0, 2, 4), masks_version=version, points=points)


def check_outputs(outputs: FrameOutputs, request: OutputRequest, height: int = HEIGHT, width: int = WIDTH) -> None:
    """Raise AssertionError unless the frame has every requested output, of the right kind."""
    assert outputs.labels.shape == (height, width) and outputs.labels.dtype == np.uint8, (outputs.labels.shape, outputs.labels.dtype)
    assert abs(float(outputs.pixel_fractions.sum()) - 1.0) < 1e-3, outputs.pixel_fractions
    if request.color:
        assert outputs.color.shape == (height, width, 3) and outputs.overlay.shape == (height, width, 3)
        assert outputs.confidence.shape == (height, width)
    if request.masks:
        assert sorted(outputs.masks) == sorted(request.masks)
        for class_id, mask in outputs.masks.items():
            assert np.array_equal(mask == 255, outputs.labels == class_id)
    if request.points:
        points = outputs.points
        assert points is not None and 0 < len(points) < height * width, "no point cloud"
        assert np.allclose(points["z"], 1.5, atol=1e-3), "depth 1.5 m"
        assert outputs.class_points is not None


def run_frames(pipeline: FramePipeline, request: OutputRequest, frames: int, cuda: bool, depth: DepthData | None = None) -> tuple[int | None, Counter]:
    for index in range(2):  # warm-up: caches per vocabulary, allocator, kernels
        check_outputs(pipeline.process(rgb_frame(index), index / 30.0, request, depth=depth), request)
    with SyncCounter(cuda) as counter:
        for index in range(2, 2 + frames):
            outputs = pipeline.process(rgb_frame(index), index / 30.0, request, depth=depth)
    check_outputs(outputs, request)
    return counter.count, counter.sources


def path_frame_path(model: str, precision: str, cer_topk: int | None, smoothing: str, depth: str | None):
    def run(device: str, frames: int) -> tuple[int | None, Counter]:
        # fp16 autocast is a CUDA path: on the CPU the path runs in fp32 rather than not at all.
        used = "fp32" if precision == "fp16" and not device.startswith("cuda") else precision
        pipeline = make_pipeline(model, device, used, cer_topk, smoothing)
        request = every_output(pipeline, points=depth is not None)
        return run_frames(pipeline, request, frames, device.startswith("cuda"), depth_frame(depth) if depth else None)

    return run


def path_batch_of_two_sizes(device: str, frames: int) -> tuple[int | None, Counter]:
    """Two cameras of different aspect ratios in one infer_batch (two model passes), SAN bf16."""
    pipeline = make_pipeline("san_tiny_dev", device, "bf16" if device.startswith("cuda") else "fp32")
    request = every_output(pipeline)
    sizes = [(HEIGHT, WIDTH), (90, 160)]

    def batch(index: int) -> list[FrameOutputs]:
        prepared = [pipeline.prepare(rgb_frame(index, h, w), source=f"cam{n}") for n, (h, w) in enumerate(sizes)]
        return [pipeline.finish(f) for f in pipeline.infer_batch(prepared, [index / 30.0] * 2, [request] * 2)]

    batch(0)
    with SyncCounter(device.startswith("cuda")) as counter:
        for index in range(1, 1 + frames):
            outputs = batch(index)
    for out, (h, w) in zip(outputs, sizes):
        check_outputs(out, request, h, w)
    return (None if counter.count is None else counter.count // 2), counter.sources  # per frame


def path_stream_vocabulary_swap(device: str, frames: int) -> tuple[int | None, Counter]:
    """FrameStream on its threads while another thread swaps the vocabulary back and forth:
    every frame labeled with one whole vocabulary (the first frames after a swap read text
    features written on the encoding thread's stream)."""
    pipeline = make_pipeline("sed_tiny_dev", device, "bf16" if device.startswith("cuda") else "fp32", cer_topk=8)
    stats = {"cam": FrameStats()}
    stream = FrameStream(pipeline, stats)
    encoded = [pipeline.vocabularies.encode(CLASSES), pipeline.vocabularies.encode(OTHER_CLASSES)]
    results, stop = [], threading.Event()

    def swap() -> None:
        turn = 0
        while not stop.wait(0.02):
            turn += 1
            pipeline.vocabularies.install(encoded[turn % 2])

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        with SyncCounter(device.startswith("cuda")) as counter:
            for index in range(frames):
                stream.submit(FrameTicket(rgb_frame(index), index / 30.0, OutputRequest(confidence=True), camera="cam"))
                result = stream.next_result(timeout=60.0)
                assert result is not None, "no result within 60 s"
                if result.error is not None:
                    raise result.error
                results.append(result.outputs)
    finally:
        stop.set()
        swapper.join(5.0)
        stream.close(10.0)
    for outputs in results:  # labels, fractions and names of one vocabulary
        assert len(outputs.pixel_fractions) == len(outputs.vocabulary.names)
        assert set(np.unique(outputs.labels)) <= {*range(len(outputs.vocabulary.names)), 255}
    assert {outputs.vocabulary.names for outputs in results} <= {tuple(CLASSES), tuple(OTHER_CLASSES)}
    return counter.count, counter.sources


#: name -> (run(device, frames), expected host syncs per frame)
PATHS: dict[str, tuple[Callable, int]] = {
    "sed_bf16_cer8_all_outputs_points16": (path_frame_path("sed_tiny_dev", "bf16", 8, "none", "16UC1"), CER_SYNCS + POINTS_SYNCS),
    "sed_fp16_all_outputs": (path_frame_path("sed_tiny_dev", "fp16", None, "none", None), 0),
    "sed_fp32_ema_all_outputs": (path_frame_path("sed_tiny_dev", "fp32", None, "ema", None), 0),
    "san_bf16_flow_all_outputs": (path_frame_path("san_tiny_dev", "bf16", None, "flow", None), 0),
    "san_bf16_points32f": (path_frame_path("san_tiny_dev", "bf16", None, "none", "32FC1"), POINTS_SYNCS),
    "san_batch_two_sizes": (path_batch_of_two_sizes, 0),
    "sed_stream_vocabulary_swap": (path_stream_vocabulary_swap, CER_SYNCS),
}


def run_path(name: str, device: str, frames: int) -> PathResult:
    run, expected = PATHS[name]
    result = PathResult(name, frames, expected_per_frame=expected)
    start = time.perf_counter()
    try:
        result.syncs, result.sources = run(device, frames)
    except Exception as exc:  # noqa: BLE001 -- a path's failure is the finding; the others still run
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        ours = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(PACKAGE_DIR)]
        if ours:
            result.error += f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno})"
    result.seconds = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (auto: cuda if available)")
    parser.add_argument("--frames", type=int, default=5, help="measured frames per path")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    print(f"CUDA smoke: torch {torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else "")
          + f", {args.frames} measured frames per path; host syncs " + ("counted with torch.cuda.set_sync_debug_mode('warn')" if cuda else "not countable on the CPU"))
    print("| path | frames | host syncs per frame | expected | result | seconds | where the syncs come from |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name in args.paths:
        result = run_path(name, device, args.frames)
        results.append(result)
        per_frame = "n/a (CPU)" if result.syncs is None else f"{result.syncs / max(result.frames, 1):.1f}"
        verdict = "ok" if result.passed else f"FAIL: {result.error}" if result.error else "FAIL: too many syncs"
        sources = ", ".join(f"{where} x{count}" for where, count in result.sources.most_common(6)) or "–"
        print(f"| {name} | {result.frames} | {per_frame} | {result.expected_per_frame} | {verdict} | {result.seconds:.1f} | {sources} |", flush=True)
    failed = [r.name for r in results if not r.passed]
    print(f"smoke: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
