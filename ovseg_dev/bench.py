"""Benchmarks that print figures (speed goals live here, not in timed tests).

    python -m ovseg_dev.bench model --model sed_convnext_base --vocab ade150 ade847 --cer 0 8 1 [--distinct 8]
    python -m ovseg_dev.bench pipeline --model san_tiny_dev --size 640x480 1280x720
    python -m ovseg_dev.bench text --model sed_convnext_base --vocab ade150
    python -m ovseg_dev.bench node --model sed_convnext_base [--long]
    python -m ovseg_dev.bench all            # model, then node, in one run
    python -m ovseg_dev.bench cameras --model sed_tiny_dev --cameras 1 2 4   # one node batching N cameras vs N nodes
    python -m ovseg_dev.bench streams --model sed_convnext_base --cameras 1 2 4   # the same without ROS (GPU check)

``model``: per-stage latency of one frame through the
:class:`~ovseg_ros.engine.frame_pipeline.FramePipeline` (labels only, no smoothing) for every
(vocabulary, CER top-K) combination, measured in one run, with the ratios between them. Stage times come from the ``ovseg.*`` profiler labels in the model code
(``torch.profiler``; device time on CUDA, CPU time otherwise); ``total`` is wall time
without the profiler.

Text features are random unit vectors of the model's shape unless ``--encode-text`` is
given: with random weights they label nothing anyway, without CER the decoder's cost does
not depend on their values, and encoding 847 x 80 prompts takes minutes on a CPU (it is
cached per class in real use). With CER it does: random scores let most classes through
(every class in the top K at any pixel goes on), and only ``--weights`` with
``--encode-text`` show which classes the trained model really rejects; ``--distinct N`` forces
rejection with random weights: the T classes share N distinct random text features, so
copies tie and only K copies of each pixel's best class go on. With CER, each row says how many classes
each decoder stage ran on. A configuration that runs out of memory (on the CPU, e.g.
under ``ulimit -v``) is reported as such and the others still run. Peak memory is per
configuration: allocated tensors on CUDA; on the CPU the process's RSS, whose kernel
high-water mark is reset per configuration (so ``/usr/bin/time`` reports the last one's).

``pipeline``: the frame path's throughput, serial (:meth:`FramePipeline.process` per frame)
vs overlapped (:class:`~ovseg_ros.engine.frame_stream.FrameStream` fed faster than it can go), at
each image size, with labels only and with every output requested (colour, overlay,
confidence, 3 masks); each delivered frame is also encoded into message bytes as the node
does, so publishing is counted. Per-stage medians come from the frames' own timings.

``streams``: N cameras through the frame path without ROS, saturated: one pipeline whose
FrameStream batches them (one model) vs one pipeline and stream per camera (N models in
one process), frames/s in total and per camera, and the models' memory; the node-level
version over DDS is ``cameras``.

``text``: text encoding (:meth:`~ovseg_ros.engine.segmenter.Segmenter.encode_text`) of a class list
with an empty :class:`~ovseg_ros.engine.vocabulary.TextEmbeddingCache` (in a temporary directory)
and again with the cache filled, as the node encodes a vocabulary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ovseg_ros.engine.frame_pipeline import FramePipeline, OutputRequest, RawImageData
from ovseg_ros.engine.frame_stream import FrameStream, FrameTicket
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.image_codec import encode_image, message_bytes
from ovseg_ros.models.checkpoint import file_digest
from ovseg_ros.engine.builder import PipelineSettings, build_pipeline
from ovseg_ros.engine.segmenter import COMPILE_MODES, Segmenter, build_segmenter
from ovseg_ros.engine.vocabulary import TextEmbeddingCache, Vocabulary, load_class_list

STAGE_PREFIX = "ovseg."


@dataclass
class StageTimes:
    vocab: str
    classes: int
    topk: int  # CER top-K, 0 = off
    compile: str  # "off" or the torch.compile mode
    stages_ms: dict[str, float]  # per frame, median over repeats
    total_ms: float | None  # wall time per frame, median over repeats, no profiler; None: out of memory
    peak_gb: float  # peak memory while this configuration ran
    kept: list[int]  # with CER: the classes each SED decoder stage ran on (last frame)

    @property
    def label(self) -> str:
        text = f"{self.vocab} ({self.classes}), CER {'top-' + str(self.topk) if self.topk else 'off'}"
        text += f", compile {self.compile}" if self.compile != "off" else ""
        return text + (f", kept {'/'.join(map(str, self.kept))}" if self.kept else "")


def machine_description(device: torch.device) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        text += f"; {torch.cuda.get_device_name(device)}"
    return text


def pipeline_for(args: argparse.Namespace, compile_setting: str | None = None) -> tuple[FramePipeline, Path | None]:
    """The frame path as the node builds it (CER off until a row sets it), without smoothing
    (its cost is bench_smoothing's); compiled as ``compile_setting`` (default: the one ``--compile``)."""
    compile_setting = compile_setting or only_compile_setting(args)
    compile_mode = None if compile_setting == "off" else compile_setting
    return build_pipeline(PipelineSettings(args.model, args.weights, args.device, args.precision, cpu_threads=args.threads, compile_mode=compile_mode))


def only_compile_setting(args: argparse.Namespace) -> str:
    """The ``--compile`` setting of a command that runs one (only ``model`` compares several)."""
    if len(args.compile) != 1:
        raise SystemExit(f"bench {args.command}: --compile takes one mode here, not {' '.join(args.compile)}")
    return args.compile[0]


def camera_frame(width: int, height: int) -> RawImageData:
    rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return RawImageData("rgb8", height, width, width * 3, rgb.tobytes())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM


def peak_memory_gb(device: torch.device) -> float:
    """Since :func:`reset_peak_memory`: tensors allocated on CUDA, the process's RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kilobytes = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return kilobytes / 2**20


def is_out_of_memory(error: RuntimeError) -> bool:
    """A failed tensor allocation: CUDA's OutOfMemoryError or the CPU allocator's error."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def cer_kept_counts(segmenter: Segmenter) -> list[int]:
    """A list that every SED frame refills with the number of classes each decoder stage ran
    on under CER; it stays empty with CER off and for models without CER."""
    counts: list[int] = []
    if segmenter.supports_cer:
        def record(module, inputs, output) -> None:
            counts[:] = [len(kept) for kept in output.kept_per_stage]

        segmenter.model.decoder.register_forward_hook(record)
    return counts


def random_vocabulary(segmenter: Segmenter, names: list[str], distinct: int = 0) -> Vocabulary:
    """Unit-norm random text features shaped as the model's encoder would give them; with
    ``distinct`` > 0 only that many different ones, repeated (ties force CER to reject)."""
    shape = segmenter.model.encode_text(names[:1]).shape[1:]
    generator = torch.Generator().manual_seed(0)
    rows = min(distinct, len(names)) if distinct else len(names)
    features = F.normalize(torch.randn((rows, *shape), generator=generator), dim=-1)
    features = features.repeat((len(names) + rows - 1) // rows, *([1] * len(shape)))[: len(names)]
    return Vocabulary(tuple(names), features.to(segmenter.device), 1)


def stage_times_ms(rows, cuda: bool) -> dict[str, float]:
    """Milliseconds per ``ovseg.*`` stage from a profiler's ``key_averages()`` rows, each counted once.

    With CUDA, each label has two rows: the host range (``device_type`` CPU), whose
    ``device_time_total`` sums the kernels launched inside it and its children, and the GPU
    annotation (``device_type`` CUDA), which spans its first to last kernel; adding both would
    count every kernel twice. The host row's kernel sum is used (nesting-safe, and the kernels
    of compiled graphs run inside it count); without CUDA, its ``cpu_time_total``. Stages of the
    same name (the pipeline's and a model's own ``postprocess``) add up.
    """
    stages: dict[str, float] = {}
    for row in rows:
        if not row.key.startswith(STAGE_PREFIX) or row.device_type != DeviceType.CPU:
            continue
        micros = row.device_time_total if cuda else row.cpu_time_total
        name = row.key.removeprefix(STAGE_PREFIX)
        stages[name] = stages.get(name, 0.0) + micros / 1000.0
    return stages


def profile_frames(pipeline: FramePipeline, frame: RawImageData, vocabulary: Vocabulary, repeats: int) -> tuple[dict[str, float], float]:
    """Per-stage ms (profiler, :func:`stage_times_ms`) and wall ms, per frame (medians over ``repeats``)."""
    device = pipeline.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    per_frame = []
    for _ in range(repeats):
        with profile(activities=activities) as prof:
            pipeline.process(frame, 0.0, vocabulary=vocabulary)
        per_frame.append(stage_times_ms(prof.key_averages(), cuda=device.type == "cuda"))
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline.process(frame, 0.0, vocabulary=vocabulary)  # returns once the outputs are on the host
        walls.append((time.perf_counter() - start) * 1000.0)
    names = sorted({name for frame in per_frame for name in frame})
    return {name: statistics.median(frame.get(name, 0.0) for frame in per_frame) for name in names}, statistics.median(walls)


def bench_model(args: argparse.Namespace) -> int:
    """Every (compile mode, vocabulary, CER K) combination of the arguments, in one run; one
    freshly built model per compile mode (its first warm-up frames compile)."""
    load_at_start = os.getloadavg()[0]
    width, height = (int(v) for v in args.image.lower().split("x"))
    frame = camera_frame(width, height)
    results = []
    for compile_setting in args.compile:
        pipeline, weights = pipeline_for(args, compile_setting)
        results += model_rows(args, pipeline, frame, compile_setting)
        segmenter = pipeline.segmenter
        del pipeline  # one model on the device at a time
    print_model_table(args, segmenter, weights, (height, width), results, (load_at_start, os.getloadavg()[0]))
    return 0


def model_rows(args: argparse.Namespace, pipeline: FramePipeline, frame: RawImageData, compile_setting: str) -> list[StageTimes]:
    segmenter = pipeline.segmenter
    kept_counts = cer_kept_counts(segmenter)
    results = []
    for vocab_name in args.vocab:
        names = load_class_list(vocab_name)
        if args.encode_text:
            vocabulary = pipeline.vocabularies.install(pipeline.vocabularies.encode(names))
        else:
            vocabulary = pipeline.vocabularies.install(random_vocabulary(segmenter, names, args.distinct))
        for topk in args.cer:
            if topk and not segmenter.supports_cer:
                continue
            if segmenter.supports_cer:
                pipeline.set_cer_topk(topk or None)
            kept_counts.clear()
            reset_peak_memory(segmenter.device)
            try:
                for _ in range(args.warmup):
                    pipeline.process(frame, 0.0, vocabulary=vocabulary)
                stages, total = profile_frames(pipeline, frame, vocabulary, args.repeats)
                outcome = f"{total:.1f} ms"
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                stages, total, outcome = {}, None, f"out of memory: {str(error).splitlines()[0]}"
            result = StageTimes(vocab_name, len(names), topk, compile_setting, stages, total, peak_memory_gb(segmenter.device), list(kept_counts))
            results.append(result)
            print(f"measured {result.label}: {outcome}", file=sys.stderr, flush=True)
    return results


def print_model_table(args, segmenter: Segmenter, weights, size: tuple[int, int], results: list[StageTimes], load: tuple[float, float]) -> None:
    stage_names = [name for name in ("decode", "preprocess", "backbone", "cost_map", "side_adapter", "recognition", "decoder", "postprocess", "download") if any(name in r.stages_ms for r in results)]
    features = "encoded" if args.encode_text else (f"random, {args.distinct} distinct (forced rejection)" if args.distinct else "random")
    print(f"\nmodel {args.model}, weights {weights or 'random'}, {segmenter.device} {args.precision}, compile {' / '.join(args.compile)}, image {size[1]}x{size[0]}, "
          f"{args.warmup} warmup + {args.repeats} repeats (median), text features {features}")
    print(f"machine: {machine_description(segmenter.device)}; torch {torch.__version__}; "
          f"load average {load[0]:.2f} at start, {load[1]:.2f} at end")
    memory = "peak GB (CUDA allocated)" if segmenter.device.type == "cuda" else "peak GB (RSS)"
    print("| configuration | " + " | ".join(stage_names) + f" | total (wall) | {memory} |")
    print("|" + "---|" * (len(stage_names) + 3))
    for r in results:
        cells = [f"{r.stages_ms[name]:.1f}" if name in r.stages_ms else "–" for name in stage_names]
        total = "out of memory" if r.total_ms is None else f"{r.total_ms:.1f}"
        print(f"| {r.label} | " + " | ".join(cells) + f" | {total} | {r.peak_gb:.1f} |")
    measured = [r for r in results if r.total_ms is not None]
    if len(measured) > 1:
        base = measured[0]
        print("\nratios (wall time unless named, same run):")
        for r in measured[1:]:
            print(f"  {r.label} / {base.label}: {r.total_ms / base.total_ms:.2f}x")
        for r in measured:
            eager = next((o for o in measured if (o.vocab, o.topk, o.compile) == (r.vocab, r.topk, "off")), None)
            if r.compile != "off" and eager is not None:
                print(f"  {r.label} vs eager: total {r.total_ms / eager.total_ms:.2f}x")
        for r in measured:
            off = next((o for o in measured if o.vocab == r.vocab and not o.topk and o.compile == r.compile), None)
            if r.topk and off is not None:
                print(f"  {r.label} vs CER off: total {r.total_ms / off.total_ms:.2f}x, "
                      f"decoder {r.stages_ms['decoder'] / off.stages_ms['decoder']:.2f}x")


def publish_like_the_node(outputs) -> int:
    """Encode every output into message bytes as the node does; bytes built."""
    images = [outputs.labels, outputs.color, outputs.overlay, outputs.confidence, *outputs.masks.values()]
    return sum(len(message_bytes(encode_image(image)[2])) for image in images if image is not None)


def serial_throughput(pipeline: FramePipeline, frame: RawImageData, request: OutputRequest, frames: int) -> tuple[float, list[dict]]:
    """Frames per second of process() + publishing, one frame after the other; per-frame timings."""
    timings = []
    start = time.perf_counter()
    for index in range(frames):
        outputs = pipeline.process(frame, index / 30.0, request)
        publish_like_the_node(outputs)
        timings.append(outputs.timings_ms)
    return frames / (time.perf_counter() - start), timings


def bench_pipeline(args: argparse.Namespace) -> int:
    load_at_start = os.getloadavg()[0]
    pipeline, weights = pipeline_for(args)
    names = load_class_list(args.vocab)[: args.classes or None]
    vocabulary = pipeline.vocabularies.install(random_vocabulary(pipeline.segmenter, names))
    print(f"\nframe path, model {args.model}, weights {weights or 'random'}, {pipeline.device} {args.precision}, "
          f"{args.vocab} ({len(names)} classes, random text features), {args.frames} frames per row, "
          "overlapped fed by a camera at 4x the serial rate")
    print(f"machine: {machine_description(pipeline.device)}; torch {torch.__version__}; load average {load_at_start:.2f} at start")
    print("| image | outputs | serial frames/s | overlapped frames/s | overlapped / serial | decode | preprocess | model | postprocess | download (ms, serial medians) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.size:
        width, height = (int(v) for v in size.lower().split("x"))
        frame = camera_frame(width, height)
        every = OutputRequest(color=True, overlay=True, confidence=True, masks=(0, 1, 2), masks_version=vocabulary.version)
        for label, request in (("labels", OutputRequest()), ("all", every)):
            pipeline.process(frame, 0.0, request)  # warm-up at this size
            serial, timings = serial_throughput(pipeline, frame, request, args.frames)
            # A camera four times as fast as the serial path: there is always a newer frame.
            overlapped = streams_throughput([pipeline], 1, frame, request, args.frames, camera_hz=4.0 * serial)
            stages = [statistics.median(t[name] for t in timings) for name in ("decode", "preprocess", "model", "postprocess", "download")]
            print(f"| {width}x{height} | {label} | {serial:.2f} | {overlapped['total']:.2f} | {overlapped['total'] / serial:.2f}x | "
                  + " | ".join(f"{ms:.2f}" for ms in stages) + " |")
            print(f"  overlapped counters: {overlapped['counts']}", file=sys.stderr)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


def streams_throughput(pipelines: list[FramePipeline], cameras: int, frame: RawImageData, request: OutputRequest, frames: int, camera_hz: float) -> dict:
    """``cameras`` cameras at ``camera_hz`` through the frame path, saturated: with one pipeline,
    one FrameStream batches them all (``max_batch`` = cameras); with one pipeline per camera,
    each has a stream of its own (each taken by a publishing thread of its own, as in one node
    per camera). Total and per-camera frames/s over ``frames`` frames per camera after every
    camera's first two, the mean batch size, and each camera's frame counters."""
    names = [f"cam{index}" for index in range(cameras)]
    stats = {name: FrameStats() for name in names}
    if len(pipelines) == 1:
        streams = [FrameStream(pipelines[0], stats, max_batch=cameras)]
        stream_of = dict.fromkeys(names, streams[0])
    else:
        streams = [FrameStream(pipeline, {name: stats[name]}) for pipeline, name in zip(pipelines, names)]
        stream_of = dict(zip(names, streams))
    lock, stop = threading.Lock(), threading.Event()
    delivered, batch_sizes, window = dict.fromkeys(names, 0), [], {}

    def camera(name: str) -> None:
        index = 0
        while not stop.is_set():
            stats[name].frame_received()
            stream_of[name].submit(FrameTicket(frame, index / camera_hz, request, camera=name))
            index += 1
            time.sleep(1.0 / camera_hz)

    def publisher(stream: FrameStream) -> None:
        while not stop.is_set():
            result = stream.next_result(timeout=0.5)
            if result is None:
                continue
            if result.error is not None:
                raise RuntimeError(f"stream stopped: {result.error}")
            publish_like_the_node(result.outputs)
            stats[result.ticket.camera].frame_processed(0.0)
            with lock:
                delivered[result.ticket.camera] += 1
                if "start" not in window and min(delivered.values()) >= 2:  # every camera under way
                    window["start"], window["counts"] = time.perf_counter(), dict(delivered)
                elif "start" in window:
                    batch_sizes.append(result.ticket.batch_size)
                    if sum(delivered.values()) - sum(window["counts"].values()) >= frames * cameras and "end" not in window:
                        window["end"], window["final"] = time.perf_counter(), dict(delivered)

    threads = [threading.Thread(target=publisher, args=(stream,), daemon=True) for stream in streams]
    threads += [threading.Thread(target=camera, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600.0
    while "end" not in window and time.monotonic() < deadline and all(thread.is_alive() for thread in threads[: len(streams)]):
        time.sleep(0.05)
    stop.set()
    for stream in streams:
        stream.close(10.0)
    if "end" not in window:
        raise RuntimeError(f"{cameras} cameras: the streams stopped or took over 600 s")
    seconds = window["end"] - window["start"]
    per_camera = [(window["final"][name] - window["counts"][name]) / seconds for name in names]
    return {"total": sum(per_camera), "per_camera": per_camera, "batch": statistics.mean(batch_sizes), "counts": {name: stats[name].counts() for name in names}}


def bench_streams(args: argparse.Namespace) -> int:
    """N cameras through one FramePipeline batching them vs one pipeline (and model) per camera."""
    load_at_start = os.getloadavg()[0]
    width, height = (int(v) for v in args.image.lower().split("x"))
    frame = camera_frame(width, height)
    names = load_class_list(args.vocab)[: args.classes or None]
    pipelines = []
    for _ in range(max(args.cameras)):  # one per camera for the separate rows; the first also batches
        pipeline, weights = pipeline_for(args)
        pipeline.vocabularies.install(random_vocabulary(pipeline.segmenter, names))
        pipeline.warm_up(pipeline.vocabularies.current, height, width)
        pipelines.append(pipeline)
    device = pipelines[0].device
    model = pipelines[0].segmenter.model
    per_model_mb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
    print(f"\nseveral cameras through the frame path (ROS-free), model {args.model}, weights {weights or 'random'}, {device} {args.precision}, "
          f"{args.vocab} ({len(names)} classes, random text features), {width}x{height} at {args.camera_hz:g} Hz per camera, labels only, "
          f"{args.frames} frames per camera per row")
    print(f"machine: {machine_description(device)}; torch {torch.__version__}; load average {load_at_start:.2f} at start")
    print(f"one model's parameters and buffers: {per_model_mb:.0f} MB; peak memory: "
          + ("CUDA tensors allocated during the row" if device.type == "cuda" else "the process's RSS (it holds every model of the run)"))
    print("| cameras | mode | models | total frames/s | per camera frames/s (min..max) | mean batch size | models' memory MB | peak memory GB |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for cameras in args.cameras:
        rows = {}
        for mode, used in (("batched", pipelines[:1]), ("separate", pipelines[:cameras])):
            reset_peak_memory(device)
            rows[mode] = streams_throughput(used, cameras, frame, OutputRequest(), args.frames, args.camera_hz)
            row = rows[mode]
            print(f"| {cameras} | {mode} | {len(used)} | {row['total']:.2f} | {min(row['per_camera']):.2f}..{max(row['per_camera']):.2f} | "
                  f"{row['batch']:.2f} | {len(used) * per_model_mb:.0f} | {peak_memory_gb(device):.2f} |")
        ratios.append(f"ratio N={cameras}: batched / separate frames/s {rows['batched']['total'] / rows['separate']['total']:.2f}x, "
                      f"models' memory {1 / cameras:.2f}x")
    print("\n".join(ratios))
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


def bench_text(args: argparse.Namespace) -> int:
    names = load_class_list(args.vocab)
    segmenter, weights = build_segmenter(args.model, args.weights, args.device, args.precision, cpu_threads=args.threads)  # the text tower only
    with tempfile.TemporaryDirectory() as root:
        cache = segmenter.text_cache = TextEmbeddingCache(Path(root), args.model, file_digest(weights) if weights else "random")
        seconds = []
        for _ in range(1 + args.repeats):
            start = time.perf_counter()
            segmenter.encode_text(names)
            if segmenter.device.type == "cuda":
                torch.cuda.synchronize(segmenter.device)
            seconds.append(time.perf_counter() - start)
    cold, cached = seconds[0], statistics.median(seconds[1:])
    print(f"\nmodel {args.model}, weights {weights or 'random'}, {segmenter.device} {args.precision}, "
          f"{args.vocab} ({len(names)} classes); cache hits {cache.hits}, misses {cache.misses}")
    print(f"machine: {machine_description(segmenter.device)}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"cold (empty cache): {cold:.2f} s; cached: {cached * 1000:.1f} ms (median of {args.repeats}); "
          f"cold / cached: {cold / cached:.0f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="sed_convnext_base")
    common.add_argument("--weights", default="", help="checkpoint (default: the weights dir, else random)")
    common.add_argument("--device", default="auto")
    common.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    common.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    common.add_argument("--compile", nargs="+", default=["off"], choices=("off", *COMPILE_MODES),
                        help="torch.compile mode of the model's heavy parts (Segmenter compile_mode; off: eager); "
                        "model compares several, each on a model of its own")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--image", default="768x768", help="camera image WIDTHxHEIGHT")
    model.add_argument("--vocab", nargs="+", default=["ade150", "ade847"], help="shipped class lists")
    model.add_argument("--cer", nargs="+", type=int, default=[0, 8], help="CER top-K values, 0 = off")
    model.add_argument("--repeats", type=int, default=3)
    model.add_argument("--warmup", type=int, default=1)
    model.add_argument("--encode-text", action="store_true", help="encode the class names instead of random features")
    model.add_argument("--distinct", type=int, default=0, help="random features: only N distinct ones (forces CER rejection)")
    commands.add_parser("model", parents=[common, model], help="per-stage model latency, CER on/off, vocabulary sizes")
    pipeline = commands.add_parser("pipeline", parents=[common], help="frame path throughput: serial vs overlapped, labels only vs every output")
    pipeline.add_argument("--size", nargs="+", default=["640x480", "1280x720"], help="camera image sizes WIDTHxHEIGHT")
    pipeline.add_argument("--vocab", default="ade150", help="shipped class list (random text features)")
    pipeline.add_argument("--classes", type=int, default=0, help="only the first N classes of the list (0: all)")
    pipeline.add_argument("--frames", type=int, default=30, help="frames per measurement")
    text = commands.add_parser("text", parents=[common], help="text encoding of a class list, cold vs cached")
    text.add_argument("--vocab", default="ade150", help="shipped class list")
    text.add_argument("--repeats", type=int, default=3, help="cached calls (median)")
    node = commands.add_parser("node", parents=[common], help="the node over DDS: end-to-end latency, vocabulary change, soak")
    add_node_arguments(node)
    everything = commands.add_parser("all", parents=[common, model], help="model, then node: the whole suite in one run")
    add_node_arguments(everything)
    streams = commands.add_parser("streams", parents=[common], help="N cameras through the frame path, ROS-free: one pipeline batching them vs one pipeline (model) each")
    streams.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4], help="numbers of cameras N")
    streams.add_argument("--image", default="640x480", help="camera image WIDTHxHEIGHT")
    streams.add_argument("--camera-hz", type=float, default=60.0, help="each camera's frame rate (faster than the model: saturated)")
    streams.add_argument("--vocab", default="ade150", help="shipped class list (random text features)")
    streams.add_argument("--classes", type=int, default=0, help="only the first N classes of the list (0: all)")
    streams.add_argument("--frames", type=int, default=20, help="frames per camera per row")
    cameras = commands.add_parser("cameras", parents=[common], help="N cameras: one node batching them vs one node per camera (ovseg_dev.bench_cameras)")
    cameras.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 4], help="numbers of cameras N")
    cameras.add_argument("--image", default="640x480", help="camera image WIDTHxHEIGHT")
    cameras.add_argument("--camera-hz", type=float, default=30.0, help="each camera's frame rate (faster than the model: saturated)")
    cameras.add_argument("--seconds", type=float, default=20.0, help="measured window per (N, mode)")
    cameras.add_argument("--warmup", type=float, default=3.0, help="seconds after every camera's first answer, before the window")
    cameras.add_argument("--log-dir", type=Path, default=Path("out/bench_cameras"), help="node logs")
    cameras.add_argument("--ready-timeout", type=float, default=0.0, help="seconds for the nodes to come up and answer every camera (0: the node benchmark's)")
    args = parser.parse_args(argv)
    if args.command == "cameras":
        from ovseg_dev.bench_cameras import bench_cameras  # needs ROS 2

        return bench_cameras(args)
    if args.command == "text":
        return bench_text(args)
    if args.command == "streams":
        return bench_streams(args)
    if args.command == "pipeline":
        return bench_pipeline(args)
    if args.command in ("model", "all"):
        bench_model(args)
    if args.command in ("node", "all"):
        bench_node(args)
    return 0


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=20, help="frames per resolution for latency")
    parser.add_argument("--vocab-change", default="ade150", help="class list for the vocabulary-change timing")
    parser.add_argument("--soak-frames", type=int, default=600)
    parser.add_argument("--soak-changes", type=int, default=60)
    parser.add_argument("--soak-rate", type=float, default=30.0, help="camera rate of the soak, Hz")
    parser.add_argument("--long", action="store_true", help="the long soak: 10,000 frames, 1,000 vocabulary changes")
    parser.add_argument("--log-dir", type=Path, default=Path("out/bench"), help="node logs")


def bench_node(args: argparse.Namespace) -> None:
    from ovseg_dev.bench_node import run_node_benchmarks  # needs ROS 2

    if args.long:
        args.soak_frames, args.soak_changes = 10_000, 1_000
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine_description(torch.device(device))}; load average {os.getloadavg()[0]:.2f} at start")
    run_node_benchmarks(args.model, device, args.log_dir, args.vocab_change, args.frames, args.soak_frames, args.soak_changes, args.soak_rate)


if __name__ == "__main__":
    sys.exit(main())
