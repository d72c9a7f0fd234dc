"""Several cameras, one model: one node batching N cameras vs one node per camera, over DDS.

    python -m ovseg_dev.bench cameras --model sed_tiny_dev --device cpu --cameras 1 2 4 --seconds 20 --image 640x480 --camera-hz 30

For each N of ``--cameras``, in one run and one after another:

* batched: one node process with ``cameras:=[cam0, ..., camN-1]`` and ``max_batch:=N``;
* separate: N node processes, each with its one default camera, in its own namespace with
  its image remapped, as one would run them without the ``cameras`` parameter.

Both lay the topics out the same way (``/<run>/camI/image`` in, ``/<run>/camI/segmentation/...``
out). Every camera publishes the same synthetic frame (:func:`ovseg_ros.ros.bags.synthetic_frame`),
stamped with the wall clock at publishing, at ``--camera-hz`` (faster than the model goes,
so it is saturated), reliable QoS on both ends; label and info are subscribed. After every
camera's first answer and ``--warmup`` seconds, frames whose header stamps were sent in the
next ``--seconds`` are counted from their ``segmentation/info``: frames/s per camera and in
total, p50 of the node's ``end_to_end_ms``, mean ``batch_size`` over those frames. Frames the
node dropped (latest-frame policy) come from its per-camera diagnostics over about the same
window (1 Hz, so +-1 s). Memory is the resident set (VmRSS) of the node processes and their
children at the end of the window, summed over the N processes when separate; on CUDA also
their GPU memory as nvidia-smi lists it (CUDA contexts included).

Every node gets the same ``cpu_threads`` (``--threads``; 0: the node's default). N separate
nodes each run that many torch threads on the same cores: on a small CPU that contention is
the real cost of one node per camera, and it is reported as it is.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.ros.environment import isolated_ros_environment
from ovseg_dev.bench import machine_description
from ovseg_dev.bench_node import READY_TIMEOUT_S, RELIABLE, VOCABULARY
from ovseg_ros.commands.node_driver import NodeProcess, Peer

MODES = ("batched", "separate")
DIAGNOSTICS_PERIOD_S = 1.0  # the node publishes /diagnostics at 1 Hz
QUIET_S = 1.5  # after the cameras stop: no new answer for this long means the node is done


@dataclass
class Settings:
    model: str
    device: str
    weights: str
    precision: str
    width: int
    height: int
    camera_hz: float
    seconds: float
    warmup_s: float
    cpu_threads: int  # 0: the node's default
    log_dir: Path
    ready_timeout_s: float  # for the nodes to come up and answer every camera


@dataclass
class CameraResult:
    name: str
    frames: int  # answered frames whose stamps were sent in the window
    frames_per_s: float
    end_to_end_ms: list[float]  # the node's, of those frames
    batch_sizes: list[int]  # of those frames
    dropped_per_s: float  # by the node's latest-frame policy (diagnostics, see CameraRun.dropped_per_s); NaN: unknown


@dataclass
class RunResult:
    count: int  # N cameras
    mode: str  # "batched" or "separate"
    processes: int
    cameras: list[CameraResult]
    rss_mb: float  # summed over the node processes, at the end of the window
    gpu_mb: float  # the same for GPU memory (nvidia-smi, CUDA contexts included); NaN: not on CUDA or not found
    seconds: float  # the measured window

    @property
    def frames_per_s(self) -> float:
        return sum(camera.frames_per_s for camera in self.cameras)

    @property
    def end_to_end_p50_ms(self) -> float:
        values = [ms for camera in self.cameras for ms in camera.end_to_end_ms]
        return float(np.median(values)) if values else float("nan")

    @property
    def mean_batch_size(self) -> float:
        sizes = [size for camera in self.cameras for size in camera.batch_sizes]
        return float(np.mean(sizes)) if sizes else float("nan")

    @property
    def dropped_per_s(self) -> float:
        return sum(camera.dropped_per_s for camera in self.cameras)


def resident_mb(pid: int) -> float:
    """VmRSS of process ``pid`` and all its descendants (the node is the executable's own
    process today; a wrapper's children would be counted too), MB; 0 for a gone process."""
    total_kb = 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return total_kb / 1024.0 + sum(resident_mb(child) for child in children)


def gpu_mb(pids: list[int]) -> float:
    """GPU memory the processes ``pids`` hold, MB, as nvidia-smi reports it (with each
    process's CUDA context: part of the cost of one node per camera); NaN without nvidia-smi
    or when it lists none of them (e.g. it sees another PID namespace)."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return float("nan")
    used = {int(pid): float(mb) for pid, mb in (line.split(",") for line in listing.splitlines() if line.strip())}
    return sum(used[pid] for pid in pids if pid in used) if any(pid in used for pid in pids) else float("nan")


def camera_image(width: int, height: int, name: str) -> Image:
    msg = Image()
    msg.header.frame_id = name
    msg.height, msg.width, msg.encoding, msg.step = height, width, "rgb8", width * 3
    msg.data = message_bytes(synthetic_frame(0, height, width))
    return msg


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class CameraRun:
    """One (N, mode) measurement: its node processes, camera publishers and recordings."""

    def __init__(self, peer: Peer, count: int, mode: str, settings: Settings) -> None:
        self.peer, self.count, self.mode, self.settings = peer, count, mode, settings
        self.namespace = f"ovseg_cams_{mode}{count}"
        self.names = [f"cam{index}" for index in range(count)]
        self.topics = {name: f"/{self.namespace}/{name}" for name in self.names}  # camera -> its topics' prefix
        self.nodes: list[NodeProcess] = []
        self.publishers: dict[str, object] = {}  # camera -> its image publisher
        self.label_subscriptions: list = []
        # Where each camera's diagnostics come from: its node's fully qualified name, its name in that node.
        self.node_names: dict[str, str] = {}
        self.camera_in_node: dict[str, str] = {}

    def start(self) -> None:
        s = self.settings
        common = {"model": s.model, "device": s.device, "weights": s.weights}
        extra = ["-p", f"vocabulary:=[{', '.join(VOCABULARY)}]", "-p", f"precision:={s.precision}"] + (["-p", f"cpu_threads:={s.cpu_threads}"] if s.cpu_threads else [])
        # A reliable input subscription: the figures are about the node, not about frames
        # that best-effort transport drops before they reach it.
        reliable = {name: ["-p", f"qos_overrides.{prefix}/image.subscription.reliability:=reliable"] for name, prefix in self.topics.items()}
        if self.mode == "batched":
            launch = {**common, "namespace": self.namespace, "cameras": f"[{', '.join(self.names)}]"}
            args = extra + ["-p", f"max_batch:={self.count}"] + [arg for name in self.names for arg in reliable[name]]
            self.nodes.append(NodeProcess(launch, s.log_dir / f"{self.namespace}.log", extra_args=args))
            for name in self.names:
                self.node_names[name], self.camera_in_node[name] = f"/{self.namespace}/ovseg", name
        else:
            for name, prefix in self.topics.items():
                launch = {**common, "namespace": prefix, "image_topic": f"{prefix}/image"}
                self.nodes.append(NodeProcess(launch, s.log_dir / f"{self.namespace}_{name}.log", extra_args=extra + reliable[name]))
                self.node_names[name], self.camera_in_node[name] = f"{prefix}/ovseg", ""
        node = self.peer.node
        self.infos = {name: self.peer.record(f"{prefix}/segmentation/info", SegmentationInfo) for name, prefix in self.topics.items()}
        # Labels are subscribed (their transport counts) but not kept: a run would hold hundreds of them.
        self.label_subscriptions = [node.create_subscription(Image, f"{prefix}/segmentation/label", lambda data: None, 10, raw=True) for prefix in self.topics.values()]
        self.publishers = {name: node.create_publisher(Image, f"{prefix}/image", RELIABLE) for name, prefix in self.topics.items()}
        ready = self.peer.wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.publishers.values()) or self.exited(), self.settings.ready_timeout_s)
        if not ready or self.exited():
            raise RuntimeError(f"{self.mode} N={self.count}: the nodes did not come up:\n" + "\n".join(n.log_text()[-2000:] for n in self.nodes))

    def exited(self) -> bool:
        return any(node.process.poll() is not None for node in self.nodes)

    def publish(self, stop: threading.Event) -> None:
        """Every camera's frame at camera_hz, stamped with the wall clock, until ``stop``."""
        frames = {name: camera_image(self.settings.width, self.settings.height, name) for name in self.names}
        period = 1.0 / self.settings.camera_hz
        next_at = time.perf_counter()
        while not stop.is_set():
            for name, msg in frames.items():
                now = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
                self.publishers[name].publish(msg)
            next_at += period
            stop.wait(max(0.0, next_at - time.perf_counter()))

    def dropped_counts(self, diagnostics: list[DiagnosticArray], until_ns: int) -> dict[str, tuple[int, int]]:
        """Each camera's frames_dropped and the stamp it was counted at (ns), from the newest
        of ``diagnostics`` stamped at or before ``until_ns`` that reports it."""
        counts: dict[str, tuple[int, int]] = {}
        for array in reversed(diagnostics):
            if stamp_ns(array.header) > until_ns:
                continue
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if "image_topic" not in values:  # not a camera status
                    continue
                for name in self.names:
                    if name not in counts and values.get("node") == self.node_names[name] and values.get("camera") == self.camera_in_node[name]:
                        counts[name] = (int(values.get("frames_dropped", 0)), stamp_ns(array.header))
            if len(counts) == len(self.names):
                break
        return counts

    def dropped_per_s(self, diagnostics: list[DiagnosticArray], window_start: int, window_end: int) -> dict[str, float]:
        """Each camera's frames dropped per second from the last count before the window to
        the newest one: the cameras stopped at ``window_end``, so no drops come after it."""
        before = self.dropped_counts(diagnostics, window_start)
        after = self.dropped_counts(diagnostics, 2**63)
        rates = {}
        for name in self.names:
            if name in before and name in after:
                (count_before, counted_at), (count_after, _) = before[name], after[name]
                rates[name] = (count_after - count_before) / ((window_end - counted_at) * 1e-9)
            else:
                rates[name] = float("nan")
        return rates

    def measure(self, diagnostics) -> RunResult:
        s = self.settings
        stop = threading.Event()
        publisher = threading.Thread(target=self.publish, args=(stop,), daemon=True)
        publisher.start()
        try:
            warm = self.peer.wait_for(lambda: all(r.messages for r in self.infos.values()) or self.exited(), s.ready_timeout_s)
            if not warm or self.exited():
                raise RuntimeError(f"{self.mode} N={self.count}: not every camera was answered:\n" + "\n".join(n.log_text()[-2000:] for n in self.nodes))
            time.sleep(s.warmup_s)
            window_start = time.time_ns()
            time.sleep(s.seconds)
            window_end = time.time_ns()
            rss_mb = sum(resident_mb(node.process.pid) for node in self.nodes)
            gpu = gpu_mb([node.process.pid for node in self.nodes]) if s.device.startswith("cuda") else float("nan")
        finally:
            stop.set()
            publisher.join()
        # The frames sent last are still in the model: wait until the answers stop coming
        # (for longer than a frame takes, so a slow model's last pass is not cut off).
        slowest_s = max(info.end_to_end_ms for r in self.infos.values() for info in r.decoded(last=3)) / 1000.0
        answered, previous = sum(len(r.messages) for r in self.infos.values()), -1
        while answered != previous:
            time.sleep(max(QUIET_S, 2 * slowest_s))
            answered, previous = sum(len(r.messages) for r in self.infos.values()), answered
        time.sleep(DIAGNOSTICS_PERIOD_S * 1.5)  # the diagnostics that counted the last frames
        dropped = self.dropped_per_s(diagnostics.decoded(), window_start, window_end)
        seconds = (window_end - window_start) * 1e-9
        cameras = []
        for name in self.names:
            window = [info for info in self.infos[name].decoded() if window_start <= stamp_ns(info.header) < window_end]
            cameras.append(CameraResult(name, len(window), len(window) / seconds, [info.end_to_end_ms for info in window], [info.batch_size for info in window], dropped[name]))
        return RunResult(self.count, self.mode, len(self.nodes), cameras, rss_mb, gpu, seconds)

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes) or 1) as pool:  # SIGINT to all at once: their shutdowns overlap
            codes = list(pool.map(NodeProcess.stop, self.nodes))
        for publisher in self.publishers.values():
            self.peer.node.destroy_publisher(publisher)
        for subscription in self.label_subscriptions:
            self.peer.node.destroy_subscription(subscription)
        if any(codes):
            print(f"  note: {self.mode} N={self.count}: node exit codes {codes} (logs in {self.settings.log_dir})")


def run_camera_benchmark(counts: list[int], settings: Settings) -> list[RunResult]:
    """Batched, then separate, for each N of ``counts``: the results in that order."""
    peer = Peer("ovseg_bench_cameras")
    diagnostics = peer.record("/diagnostics", DiagnosticArray)
    results = []
    try:
        for count in counts:
            for mode in MODES:
                run = CameraRun(peer, count, mode, settings)
                try:
                    run.start()
                    results.append(run.measure(diagnostics))
                finally:
                    run.stop()
    finally:
        peer.close()
    return results


def report(results: list[RunResult], camera_hz: float) -> list[str]:
    """The markdown table, the batched / separate ratio of each N, and a note on rows the
    cameras' rate limited (then the model was not saturated)."""
    lines = [
        "| cameras | mode | node processes | total frames/s | per camera frames/s (min..max) | end-to-end p50 ms | mean batch size | dropped by node /s | RSS MB | GPU MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_camera = [camera.frames_per_s for camera in r.cameras]
        lines.append(
            f"| {r.count} | {r.mode} | {r.processes} | {r.frames_per_s:.2f} | {min(per_camera):.2f}..{max(per_camera):.2f} "
            f"| {r.end_to_end_p50_ms:.0f} | {r.mean_batch_size:.2f} | {r.dropped_per_s:.1f} | {r.rss_mb:.0f} | {r.gpu_mb:.0f} |"
        )
    by_key = {(r.count, r.mode): r for r in results}
    for count in dict.fromkeys(r.count for r in results):
        batched, separate = by_key.get((count, "batched")), by_key.get((count, "separate"))
        if batched and separate:
            lines.append(
                f"ratio N={count}: batched / separate frames/s {batched.frames_per_s / separate.frames_per_s:.2f}x, "
                f"RSS {batched.rss_mb / separate.rss_mb:.2f}x" + (f", GPU memory {batched.gpu_mb / separate.gpu_mb:.2f}x" if separate.gpu_mb > 0 else "")
            )
    unsaturated = [f"N={r.count} {r.mode}" for r in results if max(camera.frames_per_s for camera in r.cameras) >= 0.9 * camera_hz]
    if unsaturated:
        lines.append(f"note: a camera got >= 90% of its {camera_hz:g} Hz in {', '.join(unsaturated)}: the model was not saturated there (raise --camera-hz)")
    return lines


def commit_description() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parent).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def bench_cameras(args: argparse.Namespace) -> int:
    """``bench cameras``: print the set-up, the table and the ratios."""
    width, height = (int(v) for v in args.image.lower().split("x"))
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings(args.model, device, args.weights, args.precision, width, height, args.camera_hz, args.seconds, args.warmup, args.threads, args.log_dir, args.ready_timeout or READY_TIMEOUT_S)
    for name, value in isolated_ros_environment(args.log_dir.resolve() / "ros_home").items():
        os.environ.setdefault(name, value)  # a caller's (the tests') isolation wins
    load = os.getloadavg()[0]
    print(f"several cameras, one model: {args.model} on {device} ({args.precision}), {width}x{height} frames at {args.camera_hz:g} Hz per camera, "
          f"reliable QoS, label + info subscribed, {args.warmup:g} s warm-up, {args.seconds:g} s measured per row")
    print(f"machine: {machine_description(torch.device(device))} (this process); torch {torch.__version__}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit_description()}; load average {load:.2f} at start")
    print(f"every node, both modes: cpu_threads {args.threads or 'the node default (0: cores - 1)'}; "
          "separate nodes each run that many torch threads on the same cores")
    results = run_camera_benchmark(args.cameras, settings)
    print()
    print("\n".join(report(results, args.camera_hz)))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0
