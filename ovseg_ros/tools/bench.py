"""Benchmarks that print figures (speed goals live here, not in timed tests).

    python -m ovseg_ros.tools.bench model --model sed_convnext_base --vocab ade150 ade847 --cer 0 8

``model``: per-stage latency of one frame through the :class:`~ovseg_ros.segmenter.Segmenter`
for every (vocabulary, CER top-K) combination, measured in one run, with the ratios
between them. Stage times come from the ``ovseg.*`` profiler labels in the model code
(``torch.profiler``; device time on CUDA, CPU time otherwise); ``total`` is wall time
without the profiler.

Text features are random unit vectors of the model's shape unless ``--encode-text`` is
given: with random weights they label nothing anyway, the decoder's cost does not depend
on their values, and encoding 847 x 80 prompts takes minutes on a CPU (it is cached
per class in real use). With ``--weights`` and ``--encode-text`` the CER figures reflect
which classes the trained model really rejects.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ovseg_ros.models import build_model, resolve_weights
from ovseg_ros.segmenter import Segmenter, Vocabulary
from ovseg_ros.vocabulary import load_class_list

STAGE_PREFIX = "ovseg."


@dataclass
class StageTimes:
    label: str
    stages_ms: dict[str, float]  # per frame, median over repeats
    total_ms: float  # wall time per frame, median over repeats, no profiler


def machine_description(device: torch.device) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    text = f"{cpu}, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        text += f"; {torch.cuda.get_device_name(device)}"
    return text


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
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    weights = resolve_weights(args.model, args.weights)
    segmenter = Segmenter(build_model(args.model, weights), device=device, precision=args.precision)
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
            for _ in range(args.warmup):
                segmenter.segment(rgb, vocabulary)
            stages, total = profile_frames(segmenter, rgb, vocabulary, args.repeats)
            label = f"{vocab_name} ({len(names)}), CER {'top-' + str(topk) if topk else 'off'}"
            results.append(StageTimes(label, stages, total))
            print(f"measured {label}: {total:.1f} ms", file=sys.stderr)

    print_model_table(args, segmenter, weights, (height, width), results)
    return 0


def print_model_table(args, segmenter: Segmenter, weights, size: tuple[int, int], results: list[StageTimes]) -> None:
    stage_names = [name for name in ("preprocess", "backbone", "cost_map", "side_adapter", "recognition", "decoder", "smoothing", "postprocess") if any(name in r.stages_ms for r in results)]
    print(f"\nmodel {args.model}, weights {weights or 'random'}, {segmenter.device} {args.precision}, image {size[1]}x{size[0]}, "
          f"{args.repeats} repeats (median), text features {'encoded' if args.encode_text else 'random'}")
    print(f"machine: {machine_description(segmenter.device)}; torch {torch.__version__}")
    header = "| configuration | " + " | ".join(stage_names) + " | total (wall) |"
    print(header)
    print("|" + "---|" * (len(stage_names) + 2))
    for r in results:
        print(f"| {r.label} | " + " | ".join(f"{r.stages_ms.get(name, 0.0):.1f}" for name in stage_names) + f" | {r.total_ms:.1f} |")
    by_label = {r.label: r.total_ms for r in results}
    if len(results) > 1:
        base = results[0]
        print("\nratios (total wall time, same run):")
        for r in results[1:]:
            print(f"  {r.label} / {base.label}: {r.total_ms / base.total_ms:.2f}x")
        for r in results:
            off = r.label.split(", CER")[0] + ", CER off"
            if "top-" in r.label and off in by_label:
                print(f"  {r.label} vs CER off: {r.total_ms / by_label[off]:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="per-stage model latency, CER on/off, vocabulary sizes")
    model.add_argument("--model", default="sed_convnext_base")
    model.add_argument("--weights", default="", help="checkpoint (default: the weights dir, else random)")
    model.add_argument("--device", default="auto")
    model.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    model.add_argument("--image", default="768x768", help="camera image WIDTHxHEIGHT")
    model.add_argument("--vocab", nargs="+", default=["ade150", "ade847"], help="shipped class lists")
    model.add_argument("--cer", nargs="+", type=int, default=[0, 8], help="CER top-K values, 0 = off")
    model.add_argument("--repeats", type=int, default=3)
    model.add_argument("--warmup", type=int, default=1)
    model.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    model.add_argument("--encode-text", action="store_true", help="encode the class names instead of random features")
    args = parser.parse_args(argv)
    return bench_model(args)


if __name__ == "__main__":
    sys.exit(main())
