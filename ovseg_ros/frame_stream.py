"""A live camera stream through a :class:`~ovseg_ros.frame_pipeline.FramePipeline`, overlapped.

    stream = FrameStream(pipeline, stats)
    stream.submit(FrameTicket(image, stamp_s, request, tag))      # never blocks
    result = stream.next_result(timeout=0.5)                     # in the publishing thread

The pipeline's three stages run on three threads: ``ovseg-prepare`` decodes and uploads
frame N+1 while ``ovseg-inference`` runs the model on frame N (one frame ahead, no more:
it takes the newest frame once the model has taken the one it prepared), and whoever calls
:meth:`FrameStream.next_result` (the node's publishing thread) waits for the download of
frame N-1 and publishes it meanwhile. Throughput is the slowest stage's, not the sum.

Latest-frame semantics hold at every hand-off: a frame waiting to be prepared is replaced
by a newer one (counted ``dropped``), so the model starts on a frame at most one model run
older than the newest (the one prepared while it ran). Model results are never dropped: the inference thread
waits for the publisher to take the previous one. Every submitted frame is accounted for
exactly once: the stream counts those it drops or never delivers (``dropped``,
``ignored``) in the :class:`~ovseg_ros.handoff.FrameStats` it is given; the caller counts
the outcome of every :class:`StreamResult` it receives.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from .frame_pipeline import DepthData, FramePipeline, FrameOutputs, ImageData, InferredFrame, OutputRequest, PreparedFrame
from .handoff import REFUSED, REPLACED, FrameStats, LatestFrameSlot

INFERENCE_THREAD_NAME = "ovseg-inference"
PREPARE_THREAD_NAME = "ovseg-prepare"
POLL_S = 0.5  # how often idle threads look at the stop flag


@dataclass
class FrameTicket:
    """A frame and what travels with it: its stamp, the outputs wanted, the caller's ``tag``
    (opaque here: the node keeps the message header and its activation in it), and its
    registered depth image, if any."""

    image: ImageData
    stamp_s: float
    request: OutputRequest
    tag: object = None
    depth: DepthData | None = None
    received: float = 0.0  # time.perf_counter() at submit
    taken: float = 0.0  # ... when its decoding started
    prepared: float = 0.0  # ... when it was ready for the model
    started: float = 0.0  # ... when the model started on it


@dataclass
class StreamResult:
    """One frame out of the stream: its outputs, or the error that stopped it."""

    ticket: FrameTicket
    outputs: FrameOutputs | None
    error: Exception | None

    @property
    def queue_ms(self) -> float:
        """Time spent waiting in the hand-offs: arrival to decoding, and prepared to the model
        starting on it (the stages' own times are in the outputs' timings)."""
        ticket = self.ticket
        return max(0.0, (ticket.taken - ticket.received) + (ticket.started - ticket.prepared)) * 1000.0


class FrameStream:
    """Runs ``pipeline`` on a stream of frames, its stages overlapped; see the module docstring.

    Args:
        pipeline: the frame path.
        stats: where dropped and undelivered frames are counted.
        max_rate_hz: start the model on at most this many frames per second (0: no limit).
        added_model_delay_s: for tests only: seconds added to every frame's inference, as if the
            model were slower, so that transitions can be provoked while a frame is in flight.
    """

    def __init__(self, pipeline: FramePipeline, stats: FrameStats, max_rate_hz: float = 0.0, *, added_model_delay_s: float = 0.0) -> None:
        self.pipeline = pipeline
        self.max_rate_hz = max_rate_hz
        self._added_model_delay_s = added_model_delay_s
        self._stats = stats
        self._incoming: LatestFrameSlot[FrameTicket] = LatestFrameSlot()
        self._prepared: LatestFrameSlot[tuple[FrameTicket, PreparedFrame]] = LatestFrameSlot()
        self._results: queue.Queue[tuple[FrameTicket, InferredFrame | None, Exception | None]] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._prepare_loop, name=PREPARE_THREAD_NAME, daemon=True),
            threading.Thread(target=self._inference_loop, name=INFERENCE_THREAD_NAME, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, ticket: FrameTicket) -> str:
        """Hand a frame in without waiting: QUEUED, REPLACED (a waiting frame was dropped for
        it, and counted) or REFUSED (closed; the caller counts it)."""
        ticket.received = time.perf_counter()
        outcome = self._incoming.put(ticket)
        if outcome == REPLACED:
            self._stats.frame_dropped()
        return outcome

    def next_result(self, timeout: float | None = None) -> StreamResult | None:
        """The next frame out, waiting up to ``timeout`` s (None on timeout).

        Waits for the frame's downloads in the caller's thread, so the model can go on.
        """
        try:
            ticket, inferred, error = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        if error is not None:
            return StreamResult(ticket, None, error)
        try:
            return StreamResult(ticket, self.pipeline.finish(inferred), None)
        except Exception as exc:  # the frame's error, carried to the caller like the others
            return StreamResult(ticket, None, exc)

    def discard_waiting(self) -> int:
        """Drop the frames not yet started by the model (e.g. on deactivate); how many."""
        return int(self._incoming.discard()) + int(self._prepared.discard())

    def close(self, timeout: float) -> bool:
        """Stop taking frames and end the threads, waiting up to ``timeout`` s for the frame
        in flight; frames never delivered are counted ``ignored``. True if both threads ended."""
        self._stop.set()
        undelivered = int(self._incoming.close()) + int(self._prepared.close())
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                self._results.get_nowait()
            except queue.Empty:
                break
            undelivered += 1
        for _ in range(undelivered):
            self._stats.frame_ignored()
        return not self.is_alive()

    def is_alive(self) -> bool:
        """Whether a thread is still running (a frame in flight past :meth:`close`'s timeout)."""
        return any(thread.is_alive() for thread in self._threads)

    # -- threads --------------------------------------------------------------------------

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            # One frame ahead of the model, no more: a frame prepared while another waits for
            # the model would be replaced unused, and its decode would take CPU from the model.
            if not self._prepared.wait_until_empty(timeout=POLL_S):
                continue
            ticket = self._incoming.take(timeout=POLL_S)
            if ticket is None:
                continue
            ticket.taken = time.perf_counter()
            try:
                prepared = self.pipeline.prepare(ticket.image, ticket.depth)
            except Exception as exc:  # bad pixels: the caller reports it
                self._deliver(ticket, None, exc)
                continue
            ticket.prepared = time.perf_counter()
            outcome = self._prepared.put((ticket, prepared))
            if outcome == REPLACED:
                self._stats.frame_dropped()
            elif outcome == REFUSED:
                self._stats.frame_ignored()

    def _inference_loop(self) -> None:
        last_start = -float("inf")
        while not self._stop.is_set():
            # Wait before taking, so the frame taken is the newest; a stop ends the wait.
            if self.max_rate_hz > 0 and self._stop.wait(max(0.0, last_start + 1.0 / self.max_rate_hz - time.perf_counter())):
                break
            taken = self._prepared.take(timeout=POLL_S)
            if taken is None:
                continue
            ticket, prepared = taken
            ticket.started = last_start = time.perf_counter()
            try:
                inferred = self.pipeline.infer(prepared, ticket.stamp_s, ticket.request)
            except Exception as exc:
                self._deliver(ticket, None, exc)
                continue
            if self._added_model_delay_s:
                self._stop.wait(self._added_model_delay_s)
            self._deliver(ticket, inferred, None)

    def _deliver(self, ticket: FrameTicket, inferred: InferredFrame | None, error: Exception | None) -> None:
        """Queue a frame for the caller, waiting while the previous one is not taken; a frame
        that cannot be delivered because the stream closed is counted ``ignored``."""
        while not self._stop.is_set():
            try:
                self._results.put((ticket, inferred, error), timeout=POLL_S)
                return
            except queue.Full:
                continue
        self._stats.frame_ignored()
