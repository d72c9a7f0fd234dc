"""Node-level benchmarks over real DDS: end-to-end latency, vocabulary changes, soak.

Each measurement starts the installed node in its own process (as the launch file does)
and drives it from this process with :class:`~ovseg_ros.commands.node_driver.Peer`. Used by
``python -m ovseg_dev.bench node|soak|all``.

* latency: frames are sent one at a time (reliable QoS) and each is timed from publish
  to the arrival of its ``segmentation/info``; node overhead = that minus the model
  forward the node reports for the frame. Twice: with label and info subscribed, then
  with colour, overlay, confidence and 3 class masks subscribed too (what the node
  renders and sends only while someone listens).
* vocabulary: ``~/set_vocabulary`` round trip for a class list, with a cold text cache
  (a fresh cache folder for the node) and cached (the same names again).
* soak: a camera stream with vocabulary changes interleaved; the node's resident memory
  is sampled throughout, and every frame is accounted for (processed, dropped by the
  latest-frame policy, failed, or lost before reaching the node).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.commands.node_driver import NodeProcess, Peer
from ovseg_ros.engine.image_codec import message_bytes
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.srv import SetVocabulary
from ovseg_ros.ros.topic_names import mask_topic_names
from ovseg_ros.engine.vocabulary import load_class_list

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
NAMESPACE = "bench"
CAMERA_TOPIC = f"/{NAMESPACE}/image_raw"
READY_TIMEOUT_S = 600.0
DIAGNOSTICS_PERIOD_S = 1.0  # the node publishes /diagnostics at 1 Hz
VOCABULARY = ["person", "floor", "wall", "ceiling", "table", "chair"]
SUBSCRIBED_MASKS = 3


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(values, [50, 95]) if values else (float("nan"), float("nan"))
    return {"p50": float(p50), "p95": float(p95)}


@dataclass
class NodeSession:
    """A node process and a peer recording its info and diagnostics."""

    model: str
    device: str
    log_dir: Path
    extra_args: list[str] = field(default_factory=list)

    def __enter__(self) -> NodeSession:
        self.cache_dir = Path(tempfile.mkdtemp(prefix="ovseg_bench_cache_"))  # cold text cache
        # A reliable input subscription: the figures are about the node, not about frames
        # that best-effort transport drops before they reach it.
        reliable_input = ["-p", f"qos_overrides.{CAMERA_TOPIC}.subscription.reliability:=reliable"]
        self.node = NodeProcess(
            {"namespace": NAMESPACE, "image_topic": CAMERA_TOPIC, "model": self.model, "device": self.device},
            self.log_dir / f"node_{self.model}.log",
            extra_args=reliable_input + ["-p", f"vocabulary:=[{', '.join(VOCABULARY)}]"] + self.extra_args,
            env={"OVSEG_CACHE_DIR": str(self.cache_dir)},
        )
        self.peer = Peer("ovseg_bench")
        self.infos = self.peer.record(f"/{NAMESPACE}/segmentation/info", SegmentationInfo)
        self.labels = self.peer.record(f"/{NAMESPACE}/segmentation/label", Image)
        self.diagnostics = self.peer.record("/diagnostics", DiagnosticArray)
        self.publisher = self.peer.node.create_publisher(Image, CAMERA_TOPIC, RELIABLE)
        self.vocabulary_client = self.peer.node.create_client(SetVocabulary, f"/{NAMESPACE}/ovseg/set_vocabulary")
        if not self.peer.wait_for(lambda: self.publisher.get_subscription_count() > 0 or self.node.process.poll() is not None, READY_TIMEOUT_S) or self.node.process.poll() is not None:
            self.__exit__(None, None, None)
            raise RuntimeError(f"node did not come up:\n{self.node.log_text()[-2000:]}")
        return self

    def __exit__(self, *exc) -> None:
        self.node.stop()
        self.peer.close()

    def answer(self, msg: Image, timeout: float) -> SegmentationInfo | None:
        """The info answering ``msg`` (matched by stamp), waiting up to ``timeout`` s."""
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        found = []

        def arrived() -> bool:
            for info in self.infos.decoded(last=5):
                if (info.header.stamp.sec, info.header.stamp.nanosec) == key:
                    found.append(info)
                    return True
            return False

        return found[0] if self.peer.wait_for(arrived, timeout, poll=0.002) else None

    def subscribe_every_output(self) -> bool:
        """Subscribe to colour, overlay, confidence and the first class masks; True once a
        frame came back on all of them (the node renders an output only for a subscriber it
        has discovered)."""
        masks = [f"masks/{topic}" for topic in mask_topic_names(VOCABULARY)[:SUBSCRIBED_MASKS]]
        topics = [f"/{NAMESPACE}/segmentation/{name}" for name in ("color", "overlay", "confidence", *masks)]
        recordings = [self.peer.record(topic, Image) for topic in topics]
        for attempt in range(30):
            probe = image(900_000 + attempt, 320, 240)
            self.publisher.publish(probe)
            if self.answer(probe, READY_TIMEOUT_S) is not None and all(recording.messages for recording in recordings):
                return True
            time.sleep(0.5)
        return False

    def node_counters(self) -> dict[str, float]:
        """The latest frame counters (and GPU memory, on CUDA) from the node's diagnostics."""
        for array in reversed(self.diagnostics.decoded(last=10)):
            for status in array.status:
                if status.name == "ovseg: segmentation":
                    return {kv.key: float(kv.value) for kv in status.values if kv.key.startswith(("frames_", "gpu_memory"))}
        return {}

    def resident_mb(self) -> float:
        for line in Path(f"/proc/{self.node.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")


def quarter_medians(memory: list[tuple[int, float]], frames: int) -> dict[str, float]:
    """Median RSS over each quarter of the stream: flat memory keeps the four level."""
    medians = {}
    for quarter in range(4):
        part = [mb for index, mb in memory if quarter * frames // 4 <= index < (quarter + 1) * frames // 4]
        medians[f"rss_q{quarter + 1}_median_mb"] = float(np.median(part)) if part else float("nan")
    return medians


def image(index: int, width: int, height: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 10_000 + index // 1000, (index % 1000) * 1_000_000
    msg.header.frame_id = "bench_camera"
    msg.height, msg.width, msg.encoding, msg.step = height, width, "rgb8", width * 3
    msg.data = message_bytes(synthetic_frame(index, height, width))
    return msg


def measure_latency(session: NodeSession, width: int, height: int, frames: int, timeout: float) -> dict[str, float]:
    """Sequential frames at one resolution: end-to-end, model and overhead percentiles (ms)."""
    end_to_end, model, lost = [], [], 0
    stages: dict[str, list[float]] = {"queue": [], "preprocess": [], "postprocess": []}
    for index in range(frames + 1):  # frame 0 warms up this resolution
        msg = image(index + width * 100_000, width, height)
        sent = time.perf_counter()
        session.publisher.publish(msg)
        info = session.answer(msg, timeout)
        if info is None:
            lost += 1
            continue
        if index:
            end_to_end.append((time.perf_counter() - sent) * 1000.0)
            model.append(info.model_ms)
            for name, values in stages.items():
                values.append(getattr(info, f"{name}_ms"))
    overhead = [e - m for e, m in zip(end_to_end, model)]
    return {
        **{f"end_to_end_{k}": v for k, v in percentiles(end_to_end).items()},
        **{f"model_{k}": v for k, v in percentiles(model).items()},
        **{f"overhead_{k}": v for k, v in percentiles(overhead).items()},
        **{f"{name}_p50": percentiles(values)["p50"] for name, values in stages.items()},
        "unanswered": lost,
    }


def measure_vocabulary_change(session: NodeSession, names: list[str]) -> dict[str, float]:
    """Service round trip (ms) for ``names``: cold cache, then cached (after a change away)."""
    timings = {}
    for label, labels in (("cold", names), ("away", ["floor"]), ("cached", names)):
        start = time.perf_counter()
        response = session.peer.call(session.vocabulary_client, SetVocabulary.Request(labels=labels), timeout=READY_TIMEOUT_S)
        if not response.success:
            raise RuntimeError(f"set_vocabulary failed: {response.message}")
        timings[label] = (time.perf_counter() - start) * 1000.0
    return {"cold_ms": timings["cold"], "cached_ms": timings["cached"]}


def soak(session: NodeSession, frames: int, changes: int, rate_hz: float, width: int = 640, height: int = 480) -> dict[str, float]:
    """Stream ``frames`` at ``rate_hz`` with ``changes`` vocabulary changes interleaved."""
    vocabularies = [load_class_list("ade150")[:20], ["person", "forklift", "pallet", "spill on floor"], load_class_list("ade150")[20:60]]
    memory: list[tuple[int, float]] = []  # (frame index, node RSS MB)
    gpu_memory: list[tuple[int, float]] = []
    change_ms: list[float] = []
    change_errors: list[str] = []

    def change_vocabularies(done: threading.Event, schedule: list[int], sent: list[int]) -> None:
        for count, frame_index in enumerate(schedule):
            while sent[0] < frame_index and not done.is_set():
                time.sleep(0.005)
            request = SetVocabulary.Request(labels=vocabularies[count % len(vocabularies)])
            called = time.perf_counter()
            try:
                response = session.peer.call(session.vocabulary_client, request)
            except TimeoutError as exc:
                change_errors.append(str(exc))
                continue
            if response.success:
                change_ms.append((time.perf_counter() - called) * 1000.0)
            else:
                change_errors.append(response.message)

    time.sleep(2 * DIAGNOSTICS_PERIOD_S)  # counters from before the soak are subtracted below
    before = session.node_counters()
    schedule = [(i + 1) * frames // (changes + 1) for i in range(changes)]  # spread evenly
    sent = [0]
    done = threading.Event()
    changer = threading.Thread(target=change_vocabularies, args=(done, schedule, sent), daemon=True)
    changer.start()
    frame = image(0, width, height)
    start = time.perf_counter()
    for index in range(frames):
        frame.header.stamp.sec, frame.header.stamp.nanosec = 20_000 + index // 1000, (index % 1000) * 1_000_000
        time.sleep(max(0.0, start + index / rate_hz - time.perf_counter()))
        session.publisher.publish(frame)
        sent[0] = index + 1
        if index % max(1, int(rate_hz)) == 0:  # about once a second
            memory.append((index, session.resident_mb()))
            if "gpu_memory_allocated_mb" in (counters := session.node_counters()):
                gpu_memory.append((index, counters["gpu_memory_allocated_mb"]))
    done.set()
    changer.join(timeout=60.0)
    def soak_counters() -> dict[str, float]:
        now = session.node_counters()
        return {key: now[key] - before.get(key, 0) for key in now if key.startswith("frames_")}

    session.peer.wait_for(lambda: soak_counters().get("frames_received", 0) >= frames, 10.0)
    time.sleep(2 * DIAGNOSTICS_PERIOD_S)  # the last frames' outcome reaches the diagnostics
    counters = soak_counters()
    warm = [mb for index, mb in memory if index >= frames // 10]
    gpu = [mb for _, mb in gpu_memory]
    return {
        "frames_sent": frames,
        "vocabulary_changes": len(change_ms),
        "vocabulary_change_errors": len(change_errors),
        "vocabulary_change_p50_ms": percentiles(change_ms)["p50"],
        **{key: int(counters.get(key, 0)) for key in ("frames_received", "frames_processed", "frames_dropped", "frames_failed")},
        "lost_before_node": frames - int(counters.get("frames_received", 0)),
        "rss_after_warmup_mb": warm[0] if warm else float("nan"),
        "rss_end_mb": memory[-1][1] if memory else float("nan"),
        "rss_max_growth_mb": (max(warm) - warm[0]) if warm else float("nan"),
        **quarter_medians(memory, frames),
        "gpu_memory_growth_mb": (max(gpu) - gpu[len(gpu) // 10]) if gpu else float("nan"),
        "duration_s": time.perf_counter() - start,
    }


def run_node_benchmarks(model: str, device: str, log_dir: Path, vocab: str, frames: int, soak_frames: int, soak_changes: int, soak_rate_hz: float) -> None:
    """Start the node once and print latency, vocabulary-change and soak figures."""
    with NodeSession(model, device, log_dir) as session:
        print(f"\nnode {model} on {device}, over DDS ({session.node.argv[0]}), frames sent one at a time, reliable QoS")
        print("| image | end-to-end p50 | p95 | model p50 | node overhead p50 | p95 | of which: queue | decode + preprocess | postprocess + publish | transport (rest) | unanswered |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        overheads = {}
        for outputs, subscribed in (("labels", "label + info"), ("every", f"+ colour, overlay, confidence, {SUBSCRIBED_MASKS} masks")):
            if outputs == "every" and not session.subscribe_every_output():
                print("  (the node never sent every output: not measured)")
                break
            for width, height in ((640, 480), (1280, 720)):
                r = measure_latency(session, width, height, frames, timeout=READY_TIMEOUT_S)
                overheads[(outputs, width)] = r["overhead_p50"]
                transport = r["overhead_p50"] - r["queue_p50"] - r["preprocess_p50"] - r["postprocess_p50"]
                print(f"| {width}x{height}, {subscribed} | {r['end_to_end_p50']:.1f} | {r['end_to_end_p95']:.1f} | {r['model_p50']:.1f} | {r['overhead_p50']:.1f} | {r['overhead_p95']:.1f} "
                      f"| {r['queue_p50']:.1f} | {r['preprocess_p50']:.1f} | {r['postprocess_p50']:.1f} | {transport:.1f} | {r['unanswered']} |")
        for width in (640, 1280):
            if ("every", width) in overheads:
                print(f"  node overhead p50, every output / label + info, width {width}: {overheads[('every', width)] / overheads[('labels', width)]:.2f}x")

        names = load_class_list(vocab)
        change = measure_vocabulary_change(session, names)
        print(f"\nvocabulary change ({vocab}, {len(names)} names, ~/set_vocabulary round trip): cold {change['cold_ms']:.1f} ms, "
              f"cached {change['cached_ms']:.1f} ms, cold/cached {change['cold_ms'] / change['cached_ms']:.1f}x")

        result = soak(session, soak_frames, soak_changes, soak_rate_hz)
        print(f"\nsoak: {soak_frames} frames at {soak_rate_hz:g} Hz (640x480) with {soak_changes} vocabulary changes, {result['duration_s']:.0f} s")
        for key, value in result.items():
            print(f"  {key}: {value:.1f}" if isinstance(value, float) else f"  {key}: {value}")
        accounted = result["frames_processed"] + result["frames_dropped"] + result["frames_failed"]
        print(f"  every frame accounted for: {accounted == result['frames_received'] and result['lost_before_node'] == 0} "
              f"(processed + dropped by the latest-frame policy + failed = {accounted}, received {result['frames_received']}, sent {soak_frames})")
