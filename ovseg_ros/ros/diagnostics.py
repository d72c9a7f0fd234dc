"""The node's ``/diagnostics``: one ``segmentation`` status for the node, one status per camera."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode

from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.frame_stream import INFERENCE_THREAD_NAME
from ovseg_ros.ros.cameras import CameraIO

DIAGNOSTICS_PERIOD_S = 1.0
#: A frame error or an unpaired frame this recent shows as WARN.
RECENT_S = 5.0


@dataclass
class NodeState:
    """What the node's status reports, read once per period (see :class:`SegmentationDiagnostics`)."""

    configure_error: str | None
    configured: bool
    active: bool
    device: str  # "none" while unconfigured
    weights_note: str
    vocabulary_size: int
    vocabulary_version: int
    cer_topk: int
    cameras: list[str]
    last_frame_error: str
    last_frame_error_at: float  # time.monotonic()
    partner_names: str  # what unpaired frames lack: "camera_info", "depth image and camera_info"
    values: dict[str, object]  # further key/values: model, parameters in force


class SegmentationDiagnostics:
    """``<node>: segmentation`` and ``<node>: camera <name>`` statuses from a diagnostic_updater
    Updater whose timer has a callback group of its own (the default one is shared with the
    parameter and lifecycle services)."""

    def __init__(self, node: LifecycleNode, totals: FrameStats, state: Callable[[], NodeState]) -> None:
        self._node = node
        self._totals = totals
        self._state = state
        self._cameras: dict[str, CameraIO] = {}  # this configuration's
        self._unpaired: dict[str, object] = {}  # camera name -> its UnpairedFrames, over the node's life
        self.updater = Updater(node, period=DIAGNOSTICS_PERIOD_S)
        self.updater.setHardwareID("none")
        node.destroy_timer(self.updater.timer)
        self.updater.timer = node.create_timer(self.updater.period, self.updater.update, callback_group=MutuallyExclusiveCallbackGroup())
        self.updater.add("segmentation", self._report_node)

    def add_camera(self, camera: CameraIO) -> None:
        self._cameras[camera.name] = camera
        self._unpaired[camera.name] = camera.unpaired
        self.updater.add(camera.diagnostics_name, lambda status: self._report_camera(camera, status))

    def remove_cameras(self) -> None:
        for camera in self._cameras.values():
            self.updater.removeByName(camera.diagnostics_name)
        self._cameras = {}

    def _report_node(self, status: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        state = self._state()
        stats = self._totals.snapshot(time.monotonic())
        status.hardware_id = state.device
        self.updater.setHardwareID(state.device)  # for the other tasks too
        now = time.monotonic()
        last_unpaired = max((unpaired.last_at for unpaired in self._unpaired.values()), default=-float("inf"))
        if state.configure_error:
            status.summary(DiagnosticStatus.ERROR, f"not configured: {state.configure_error}")
        elif not state.configured:
            status.summary(DiagnosticStatus.WARN, "not configured")
        elif not state.active:
            status.summary(DiagnosticStatus.WARN, "inactive")
        elif now - state.last_frame_error_at < RECENT_S:
            status.summary(DiagnosticStatus.WARN, state.last_frame_error)
        elif now - last_unpaired < RECENT_S:
            status.summary(DiagnosticStatus.WARN, f"frames without a {state.partner_names} of their stamp are not processed")
        elif state.weights_note.startswith("RANDOM"):
            status.summary(DiagnosticStatus.WARN, state.weights_note)
        else:
            status.summary(DiagnosticStatus.OK, "segmenting")
        values = {
            # The status name holds only the node's base name: this tells apart two ovseg nodes.
            "node": self._node.get_fully_qualified_name(),
            "model": state.values.get("model", ""),
            "weights": state.weights_note,
            "device": state.device,
            "vocabulary_size": state.vocabulary_size,
            "vocabulary_version": state.vocabulary_version,
            **frame_values(stats, self._totals.counts()),
            "inference_threads": sum(thread.name == INFERENCE_THREAD_NAME for thread in threading.enumerate()),
            # The K frames run with now (the latency budget moves it); 0: off or not SED.
            "cer_topk": state.cer_topk,
            "latency_budget_ms": state.values.get("latency_budget_ms", 0.0),
            "frames_unsynchronized": sum(unpaired.count for unpaired in self._unpaired.values()),
            # Each camera's rates, counters and latency: the "camera <name>" statuses.
            "cameras": ", ".join(repr(name) for name in state.cameras),
            "max_batch": state.values.get("max_batch", 0),
            "last_frame_error": state.last_frame_error,
        }
        if state.device.startswith("cuda"):
            values["gpu_memory_allocated_mb"] = f"{torch.cuda.memory_allocated(torch.device(state.device)) / 2**20:.1f}"
        for key, value in values.items():
            status.add(key, str(value))
        return status

    def _report_camera(self, camera: CameraIO, status: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        state = self._state()
        stats = camera.stats.snapshot(time.monotonic())
        if not state.active:
            status.summary(DiagnosticStatus.WARN, "inactive")
        elif stats["input_hz"] == 0.0:
            status.summary(DiagnosticStatus.WARN, f"no frames on {camera.image_topic}")
        elif time.monotonic() - camera.unpaired.last_at < RECENT_S:
            status.summary(DiagnosticStatus.WARN, f"frames without a {state.partner_names} of their stamp are not processed")
        else:
            status.summary(DiagnosticStatus.OK, "segmenting")
        values = {
            "node": self._node.get_fully_qualified_name(),
            "camera": camera.name,
            "image_topic": camera.image_topic,
            **frame_values(stats, camera.stats.counts()),
            "frames_unsynchronized": camera.unpaired.count,
        }
        for key, value in values.items():
            status.add(key, str(value))
        return status


def frame_values(rates: dict[str, float], counts: dict[str, int]) -> dict[str, str]:
    """A status's frame figures: rates and latency of a FrameStats snapshot, and its counters
    over the node's life (received = processed + dropped + failed + ignored + in_flight)."""
    return {
        "input_rate_hz": f"{rates['input_hz']:.2f}",
        "processed_rate_hz": f"{rates['processed_hz']:.2f}",
        **{f"frames_{outcome}": str(count) for outcome, count in counts.items()},
        "latency_p50_ms": f"{rates['latency_p50_ms']:.1f}",
        "latency_p95_ms": f"{rates['latency_p95_ms']:.1f}",
    }
