"""Hand-off of camera frames from the ROS executor to the inference worker."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

Frame = TypeVar("Frame")

#: What :meth:`LatestFrameSlot.put` did with a frame.
QUEUED, REPLACED, REFUSED = "queued", "replaced", "refused"


class LatestFrameSlot(Generic[Frame]):
    """A queue of length one that keeps only the newest frame.

    The executor ``put``s every incoming frame without ever blocking; the worker ``take``s
    the newest one when it is free. A frame replaced before it was taken is dropped: under
    load the node answers the newest frame instead of a stale backlog. The caller counts
    (see :class:`FrameStats`) from what ``put``, ``discard`` and ``close`` return.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put(self, frame: Frame) -> str:
        """QUEUED; REPLACED when a frame not yet taken was dropped for it; REFUSED once closed."""
        with self._condition:
            if self._closed:
                return REFUSED
            replaced, self._frame = self._frame is not None, frame
            self._condition.notify()
            return REPLACED if replaced else QUEUED

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, waiting up to ``timeout`` s; None on timeout or after :meth:`close`."""
        with self._condition:
            self._condition.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            self._condition.notify_all()  # whoever waits until it is empty
            return frame

    def wait_until_empty(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s until the waiting frame is taken (or discarded, or the slot
        closed); True if the slot is empty."""
        with self._condition:
            return self._condition.wait_for(lambda: self._frame is None or self._closed, timeout) and self._frame is None

    def discard(self) -> bool:
        """Drop the waiting frame, if any (it was never taken); True if there was one."""
        with self._condition:
            frame, self._frame = self._frame, None
            self._condition.notify_all()
            return frame is not None

    def close(self) -> bool:
        """Refuse further frames and wake the worker so it can exit; True if a waiting frame was discarded."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            frame, self._frame = self._frame, None
            return frame is not None


class FrameStats:
    """Frame counters over the node's life and recent latencies, for diagnostics (thread-safe).

    Every frame counted ``received`` ends as exactly one of ``processed`` (published),
    ``dropped`` (replaced in the slot by a newer one), ``failed`` (an error), or ``ignored``
    (arrived or finished while the node was not active: nothing is published then);
    until then it is ``in_flight``. Rates are measured over the window since the last
    :meth:`snapshot`.
    """

    OUTCOMES = ("processed", "dropped", "failed", "ignored")

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._latencies_ms: list[float] = []
        self._counts = dict.fromkeys(("received",) + self.OUTCOMES, 0)
        self._since_snapshot = {"received": 0, "processed": 0}
        self._snapshot_time: float | None = None

    def frame_received(self) -> None:
        with self._lock:
            self._counts["received"] += 1
            self._since_snapshot["received"] += 1

    def frame_processed(self, latency_ms: float) -> None:
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


class SerialWorker:
    """Runs submitted calls one at a time, in order, on a daemon thread of its own.

    For slow jobs (text encoding) that executor callbacks hand off and may wait for. Unlike
    ``concurrent.futures.ThreadPoolExecutor``, whose threads the interpreter joins at exit,
    a job still running never holds up the process's exit.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable, *args) -> Future:
        """Queue ``call(*args)``; its Future is cancelled if :meth:`close` comes first. Raises RuntimeError once closed."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._thread.name} is closed")
            self._jobs.put((future, call, args))
        return future

    def close(self) -> None:
        """Cancel the jobs not started; the running one (if any) finishes on its own."""
        with self._lock:
            self._closed = True
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call, args = job
            if self._closed:
                future.cancel()  # and, below, wake whoever waits for it
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as exc:  # the Future carries it to whoever waits
                    future.set_exception(exc)
