"""Hand-off of camera frames from the ROS executor to the inference worker."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

Frame = TypeVar("Frame")


class LatestFrameSlot(Generic[Frame]):
    """A queue of length one that keeps only the newest frame.

    The executor ``put``s every incoming frame without ever blocking; the worker ``take``s
    the newest one when it is free. A frame replaced before it was taken is counted in
    ``dropped``: under load the node answers the newest frame instead of a stale backlog.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._condition:
            self.received += 1
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._condition.notify()

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, waiting up to ``timeout`` s; None on timeout or after :meth:`close`."""
        with self._condition:
            self._condition.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        """Wake the worker so it can exit."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class FrameStats:
    """Counters and recent latencies of the node, for diagnostics (thread-safe).

    Rates are measured over the window since the last :meth:`snapshot`.
    """

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._latencies_ms: list[float] = []
        self.processed = 0
        self.failed = 0
        self._since_snapshot = {"received": 0, "processed": 0}
        self._snapshot_time: float | None = None

    def frame_received(self) -> None:
        with self._lock:
            self._since_snapshot["received"] += 1

    def frame_processed(self, latency_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self._since_snapshot["processed"] += 1
            self._latencies_ms.append(latency_ms)
            del self._latencies_ms[: -self._window]

    def frame_failed(self) -> None:
        with self._lock:
            self.failed += 1

    def snapshot(self, now: float) -> dict[str, float]:
        """Input and processed rates (Hz) since the previous snapshot, latency p50 / p95 (ms)."""
        with self._lock:
            elapsed = None if self._snapshot_time is None else now - self._snapshot_time
            rates = {key: (count / elapsed if elapsed else 0.0) for key, count in self._since_snapshot.items()}
            self._since_snapshot = dict.fromkeys(self._since_snapshot, 0)
            self._snapshot_time = now
            latencies = sorted(self._latencies_ms)
        def percentile(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0
        return {"input_hz": rates["received"], "processed_hz": rates["processed"], "latency_p50_ms": percentile(0.5), "latency_p95_ms": percentile(0.95)}
