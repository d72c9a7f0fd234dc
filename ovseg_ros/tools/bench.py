"""Benchmarks that print figures (speed goals live here, not in timed tests).

    python -m ovseg_ros.tools.bench model --model sed_convnext_base --vocab ade150 ade847 --cer 0 8
    python -m ovseg_ros.tools.bench text --model sed_convnext_base --vocab ade150
    python -m ovseg_ros.tools.bench node --model sed_convnext_base [--long]
    python -m ovseg_ros.tools.bench all            # model, then node, in one run

``model``: per-stage latency of one frame through the :class:`~ovseg_ros.segmenter.Segmenter`
for every (vocabulary, CER top-K) combination, measured in one run, with the ratios
between them. Stage times come from the ``ovseg.*`` profiler labels in the model code
(``torch.profiler``; device time on CUDA, CPU time otherwise); ``total`` is wall time
without the profiler.

Text features are random unit vectors of the model's shape unless ``--encode-text`` is
given: with random weights they label nothing anyway, without CER the decoder's cost does
not depend on their values, and encoding 847 x 80 prompts takes minutes on a CPU (it is
cached per class in real use). With CER it does: random scores let most classes through
(every class in the top K at any pixel goes on), and only ``--weights`` with
``--encode-text`` show which classes the trained model really rejects. With CER, each row says how many classes
each decoder stage ran on. A configuration that runs out of memory (on the CPU, e.g.
under ``ulimit -v``) is reported as such and the others still run. Peak memory is per
configuration: allocated tensors on CUDA; on the CPU the process's RSS, whose kernel
high-water mark is reset per configuration (so ``/usr/bin/time`` reports the last one's).

``text``: :meth:`~ovseg_ros.segmenter.Segmenter.encode_vocabulary` of a class list with an
empty :class:`~ovseg_ros.vocabulary.TextEmbeddingCache` (in a temporary directory) and
again with the cache filled, as the node encodes a vocabulary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.models.checkpoint import file_digest
from ovseg_ros.segmenter import Segmenter, Vocabulary
from ovseg_ros.vocabulary import TextEmbeddingCache, load_class_list

STAGE_PREFIX = "ovseg."


@dataclass
class StageTimes:
    vocab: str
    classes: int
    topk: int  # CER top-K, 0 = off
    stages_ms: dict[str, float]  # per frame, median over repeats
    total_ms: float | None  # wall time per frame, median over repeats, no profiler; None: out of memory
    peak_gb: float  # peak memory while this configuration ran
    kept: list[int]  # with CER: the classes each SED decoder stage ran on (last frame)

    @property
    def label(self) -> str:
        text = f"{self.vocab} ({self.classes}), CER {'top-' + str(self.topk) if self.topk else 'off'}"
        return text + (f", kept {'/'.join(map(str, self.kept))}" if self.kept else "")


def machine_description(device: torch.device) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        text += f"; {torch.cuda.get_device_name(device)}"
    return text


def build_segmenter(args: argparse.Namespace) -> tuple[Segmenter, Path | None]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    weights = resolve_weights(args.model, args.weights)
    segmenter = Segmenter(build_model(args.model, weights), device=device, precision=args.precision)
    return segmenter, weights


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
    if hasattr(segmenter.model, "cer_topk"):
        def record(module, inputs, output) -> None:
            counts[:] = [len(kept) for kept in output.kept_per_stage]

        segmenter.model.decoder.register_forward_hook(record)
    return counts


def random_vocabulary(segmenter: Segmenter, names: list[str]) -> Vocabulary:
    """Unit-norm random text features shaped as the model's encoder would give them."""
    shape = segmenter.model.encode_text(names[:1]).shape[1:]
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn((len(names), *shape), generator=generator), dim=-1)
    return Vocabulary(tuple(names), features.to(segmenter.device), 0)


def profile_frames(segmenter: Segmenter, rgb: np.ndarray, vocabulary: Vocabulary, repeats: int) -> tuple[dict[str, float], float]:
    """Per-stage ms (profiler, summed over labels of the same stage) and wall ms, per frame."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if segmenter.device.type == "cuda" else [])
    per_frame = []
    for _ in range(repeats):
        with profile(activities=activities) as prof:
            segmenter.segment(rgb, vocabulary)
        stages: dict[str, float] = {}
        for event in prof.key_averages():
            if event.key.startswith(STAGE_PREFIX):
                micros = event.device_time_total if segmenter.device.type == "cuda" else event.cpu_time_total
                name = event.key.removeprefix(STAGE_PREFIX)
                stages[name] = stages.get(name, 0.0) + micros / 1000.0
        per_frame.append(stages)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.segment(rgb, vocabulary)
        if segmenter.device.type == "cuda":
            torch.cuda.synchronize(segmenter.device)
        walls.append((time.perf_counter() - start) * 1000.0)
    names = sorted({name for frame in per_frame for name in frame})
    return {name: statistics.median(frame.get(name, 0.0) for frame in per_frame) for name in names}, statistics.median(walls)


def bench_model(args: argparse.Namespace) -> int:
    load_at_start = os.getloadavg()[0]
    segmenter, weights = build_segmenter(args)
    kept_counts = cer_kept_counts(segmenter)
    width, height = (int(v) for v in args.image.lower().split("x"))
    rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    results = []
    for vocab_name in args.vocab:
        names = load_class_list(vocab_name)
        vocabulary = segmenter.encode_vocabulary(names) if args.encode_text else random_vocabulary(segmenter, names)
        for topk in args.cer:
            if topk and not hasattr(segmenter.model, "cer_topk"):
                continue
            if hasattr(segmenter.model, "cer_topk"):
                segmenter.model.cer_topk = topk or None
            kept_counts.clear()
            reset_peak_memory(segmenter.device)
            try:
                for _ in range(args.warmup):
                    segmenter.segment(rgb, vocabulary)
                stages, total = profile_frames(segmenter, rgb, vocabulary, args.repeats)
                outcome = f"{total:.1f} ms"
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                stages, total, outcome = {}, None, f"out of memory: {str(error).splitlines()[0]}"
            result = StageTimes(vocab_name, len(names), topk, stages, total, peak_memory_gb(segmenter.device), list(kept_counts))
            results.append(result)
            print(f"measured {result.label}: {outcome}", file=sys.stderr)

    print_model_table(args, segmenter, weights, (height, width), results, (load_at_start, os.getloadavg()[0]))
    return 0


def print_model_table(args, segmenter: Segmenter, weights, size: tuple[int, int], results: list[StageTimes], load: tuple[float, float]) -> None:
    stage_names = [name for name in ("preprocess", "backbone", "cost_map", "side_adapter", "recognition", "decoder", "smoothing", "postprocess") if any(name in r.stages_ms for r in results)]
    print(f"\nmodel {args.model}, weights {weights or 'random'}, {segmenter.device} {args.precision}, image {size[1]}x{size[0]}, "
          f"{args.warmup} warmup + {args.repeats} repeats (median), text features {'encoded' if args.encode_text else 'random'}")
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
            off = next((o for o in measured if o.vocab == r.vocab and not o.topk), None)
            if r.topk and off is not None:
                print(f"  {r.label} vs CER off: total {r.total_ms / off.total_ms:.2f}x, "
                      f"decoder {r.stages_ms['decoder'] / off.stages_ms['decoder']:.2f}x")


def bench_text(args: argparse.Namespace) -> int:
    names = load_class_list(args.vocab)
    segmenter, weights = build_segmenter(args)
    with tempfile.TemporaryDirectory() as root:
        cache = segmenter.text_cache = TextEmbeddingCache(Path(root), args.model, file_digest(weights) if weights else "random")
        seconds = []
        for _ in range(1 + args.repeats):
            start = time.perf_counter()
            segmenter.encode_vocabulary(names)
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
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--image", default="768x768", help="camera image WIDTHxHEIGHT")
    model.add_argument("--vocab", nargs="+", default=["ade150", "ade847"], help="shipped class lists")
    model.add_argument("--cer", nargs="+", type=int, default=[0, 8], help="CER top-K values, 0 = off")
    model.add_argument("--repeats", type=int, default=3)
    model.add_argument("--warmup", type=int, default=1)
    model.add_argument("--encode-text", action="store_true", help="encode the class names instead of random features")
    commands.add_parser("model", parents=[common, model], help="per-stage model latency, CER on/off, vocabulary sizes")
    text = commands.add_parser("text", parents=[common], help="text encoding of a class list, cold vs cached")
    text.add_argument("--vocab", default="ade150", help="shipped class list")
    text.add_argument("--repeats", type=int, default=3, help="cached calls (median)")
    node = commands.add_parser("node", parents=[common], help="the node over DDS: end-to-end latency, vocabulary change, soak")
    add_node_arguments(node)
    everything = commands.add_parser("all", parents=[common, model], help="model, then node: the whole suite in one run")
    add_node_arguments(everything)
    args = parser.parse_args(argv)
    if args.command == "text":
        return bench_text(args)
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
    from ovseg_ros.tools.bench_node import run_node_benchmarks  # needs ROS 2

    if args.long:
        args.soak_frames, args.soak_changes = 10_000, 1_000
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine_description(torch.device(device))}; load average {os.getloadavg()[0]:.2f} at start")
    run_node_benchmarks(args.model, device, args.log_dir, args.vocab_change, args.frames, args.soak_frames, args.soak_changes, args.soak_rate)


if __name__ == "__main__":
    sys.exit(main())
