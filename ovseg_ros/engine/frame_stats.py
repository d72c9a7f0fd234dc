"""Frame counters and recent latencies of one camera, or of all of a node's cameras (thread-safe)."""

from __future__ import annotations

import threading


class FrameStats:
    """Frame counters over the node's life and recent latencies, for diagnostics (thread-safe).

    Every frame counted ``received`` ends as exactly one of ``processed`` (published),
    ``dropped`` (replaced in the slot by a newer one), ``failed`` (an error), or ``ignored``
    (arrived or finished while the node was not active: nothing is published then);
    until then it is ``in_flight``. Rates are measured over the window since the last
    :meth:`snapshot`. A camera's stats count into its ``parent`` too: the node's totals.
    """

    OUTCOMES = ("processed", "dropped", "failed", "ignored")

    def __init__(self, window: int = 200, parent: FrameStats | None = None) -> None:
        self.parent = parent
        self._lock = threading.Lock()
        self._window = window
        self._latencies_ms: list[float] = []
        self._counts = dict.fromkeys(("received",) + self.OUTCOMES, 0)
        self._since_snapshot = {"received": 0, "processed": 0}
        self._snapshot_time: float | None = None

    def frame_received(self) -> None:
        if self.parent is not None:
            self.parent.frame_received()
        with self._lock:
            self._counts["received"] += 1
            self._since_snapshot["received"] += 1

    def frame_processed(self, latency_ms: float) -> None:
        if self.parent is not None:
            self.parent.frame_processed(latency_ms)
        with self._lock:
            self._counts["processed"] += 1
            self._since_snapshot["processed"] += 1
            self._latencies_ms.append(latency_ms)
            del self._latencies_ms[: -self._window]

    def frame_dropped(self) -> None:
        self._count("dropped")

    def frame_failed(self) -> None:
        self._count("failed")

    def frame_ignored(self) -> None:
        self._count("ignored")

    def _count(self, outcome: str) -> None:
        if self.parent is not None:
            self.parent._count(outcome)
        with self._lock:
            self._counts[outcome] += 1

    def counts(self) -> dict[str, int]:
        """received, processed, dropped, failed, ignored and in_flight, read at one instant."""
        with self._lock:
            counts = dict(self._counts)
        counts["in_flight"] = counts["received"] - sum(counts[outcome] for outcome in self.OUTCOMES)
        return counts

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
