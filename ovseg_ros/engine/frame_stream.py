"""Live camera streams through one :class:`~ovseg_ros.engine.frame_pipeline.FramePipeline`, overlapped and batched.

    stream = FrameStream(pipeline, {"front": front_stats, "rear": rear_stats}, max_batch=4)
    stream.submit(FrameTicket(image, stamp_s, request, tag, camera="front"))   # never blocks
    result = stream.next_result(timeout=0.5)                                  # in the publishing thread

The pipeline's three stages run on three threads: ``ovseg-prepare`` decodes and uploads the
next frames while ``ovseg-inference`` runs the model, and whoever calls
:meth:`FrameStream.next_result` (the node's publishing thread) waits for the downloads of
the frames before and publishes them meanwhile. Throughput is the slowest stage's, not the sum.

Each camera keeps latest-frame semantics of its own: a frame waiting to be prepared is
replaced by a newer one of its camera (counted ``dropped`` for that camera), and each camera
has at most one frame prepared ahead of the model (a frame prepared while another of its
camera waits would be replaced unused, its decode taking CPU from the model). So the model
starts on a frame at most one model pass older than its camera's newest.

One model pass takes the prepared frames of up to ``max_batch`` cameras, labeled as one
batch (:meth:`FramePipeline.infer_batch`: one vocabulary and one CER K for all of them).
Cameras are served in turn, the one served longest ago first, both in preparing and in
filling a batch, so under overload every camera gets its share. A pass waits at most
``batch_wait_s`` for a camera whose frame is already being prepared, and never for a camera
with no frame: a slow or silent camera does not hold up the others.

Model results are never dropped: the inference thread waits for the publisher to take the
previous one. Every submitted frame is accounted for exactly once: the stream counts those
it drops or never delivers (``dropped``, ``ignored``) in its camera's
:class:`~ovseg_ros.engine.frame_stats.FrameStats`; the caller counts the outcome of every
:class:`StreamResult` it receives.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from ovseg_ros.engine.frame_pipeline import DepthData, FramePipeline, FrameOutputs, ImageData, InferredFrame, OutputRequest, PreparedFrame
from ovseg_ros.engine.camera_slots import REFUSED, CameraSlots
from ovseg_ros.engine.frame_stats import FrameStats

INFERENCE_THREAD_NAME = "ovseg-inference"
PREPARE_THREAD_NAME = "ovseg-prepare"
POLL_S = 0.5  # how often idle threads look at the stop flag


@dataclass
class FrameTicket:
    """A frame and what travels with it: its stamp, the outputs wanted, the caller's ``tag``
    (opaque here: the node keeps the message header and its activation in it), its
    registered depth image, if any, and the camera it comes from."""

    image: ImageData
    stamp_s: float
    request: OutputRequest
    tag: object = None
    depth: DepthData | None = None
    camera: str = ""
    received: float = 0.0  # time.perf_counter() at submit
    taken: float = 0.0  # ... when its decoding started
    prepared: float = 0.0  # ... when it was ready for the model
    started: float = 0.0  # ... when the model started on it
    model_pass: int = 0  # the stream's count of model passes, this frame's (frames batched together share it)
    batch_size: int = 0  # frames in that pass


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
    """Runs ``pipeline`` on the frames of ``cameras``, its stages overlapped and several
    cameras' frames batched; see the module docstring.

    Args:
        pipeline: the frame path.
        cameras: the cameras' names (a ticket's ``camera``), each with where its dropped and
            undelivered frames are counted.
        max_rate_hz: start at most this many model passes per second (0: no limit); a pass
            takes at most one frame per camera.
        max_batch: frames (of as many cameras) in one model pass; 1: frame by frame.
        batch_wait_s: how long a pass waits for a camera whose frame is being prepared.
        added_model_delay_s: for tests only: seconds added to every model pass, as if the
            model were slower, so that transitions can be provoked while a frame is in flight.
    """

    def __init__(
        self,
        pipeline: FramePipeline,
        cameras: Mapping[str, FrameStats],
        max_rate_hz: float = 0.0,
        max_batch: int = 1,
        batch_wait_s: float = 0.0,
        *,
        added_model_delay_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.pipeline = pipeline
        self.max_rate_hz = max_rate_hz
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._added_model_delay_s = added_model_delay_s
        self._slots: CameraSlots = CameraSlots(cameras)
        self._results: queue.Queue[tuple[FrameTicket, InferredFrame | None, Exception | None]] = queue.Queue(maxsize=1)
        self._model_passes = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._prepare_loop, name=PREPARE_THREAD_NAME, daemon=True),
            threading.Thread(target=self._inference_loop, name=INFERENCE_THREAD_NAME, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, ticket: FrameTicket) -> str:
        """Hand a frame in without waiting: QUEUED, REPLACED (its camera's waiting frame was
        dropped for it, and counted) or REFUSED (closed; the caller counts it). Raises
        KeyError for a camera the stream was not made for."""
        ticket.received = time.perf_counter()
        return self._slots.put(ticket.camera, ticket)

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
        """Drop the frames not yet started by the model (e.g. on deactivate), counted ``ignored``; how many."""
        return self._slots.discard()

    def close(self, timeout: float) -> bool:
        """Stop taking frames and end the threads, waiting up to ``timeout`` s for the frames
        in flight; frames never delivered are counted ``ignored``. True if both threads ended."""
        self._stop.set()
        self._slots.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                ticket, _, _ = self._results.get_nowait()
            except queue.Empty:
                break
            self._slots.stats(ticket.camera).frame_ignored()
        return not self.is_alive()

    def is_alive(self) -> bool:
        """Whether a thread is still running (a frame in flight past :meth:`close`'s timeout)."""
        return any(thread.is_alive() for thread in self._threads)

    # -- threads --------------------------------------------------------------------------

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            taken = self._slots.take_to_prepare(timeout=POLL_S)
            if taken is None:
                continue
            _, ticket = taken
            ticket.taken = time.perf_counter()
            try:
                prepared = self.pipeline.prepare(ticket.image, ticket.depth, ticket.camera)
            except Exception as exc:  # bad pixels: the caller reports it
                self._slots.put_prepared(ticket.camera, None)
                self._deliver(ticket, None, exc)
                continue
            ticket.prepared = time.perf_counter()
            if self._slots.put_prepared(ticket.camera, (ticket, prepared)) == REFUSED:
                self._slots.stats(ticket.camera).frame_ignored()

    def _inference_loop(self) -> None:
        last_start = -float("inf")
        while not self._stop.is_set():
            # Wait before taking, so the frames taken are the newest; a stop ends the wait.
            if self.max_rate_hz > 0 and self._stop.wait(max(0.0, last_start + 1.0 / self.max_rate_hz - time.perf_counter())):
                break
            batch = self._slots.take_batch(self.max_batch, self.batch_wait_s, timeout=POLL_S)
            if not batch:
                continue
            last_start = time.perf_counter()
            self._model_passes += 1
            for ticket, _ in batch:
                ticket.started, ticket.model_pass, ticket.batch_size = last_start, self._model_passes, len(batch)
            for ticket, inferred, error in self._infer(batch):
                self._deliver(ticket, inferred, error)

    def _infer(self, batch: list[tuple[FrameTicket, PreparedFrame]]) -> list[tuple[FrameTicket, InferredFrame | None, Exception | None]]:
        """One model pass over ``batch``, with one vocabulary; if it fails, each frame alone,
        so one camera's bad frame costs the others nothing."""
        vocabulary = self.pipeline.vocabularies.current
        tickets = [ticket for ticket, _ in batch]
        try:
            inferred = self.pipeline.infer_batch(
                [prepared for _, prepared in batch], [ticket.stamp_s for ticket in tickets], [ticket.request for ticket in tickets], vocabulary
            )
            results = [(ticket, frame, None) for ticket, frame in zip(tickets, inferred)]
        except Exception as exc:
            if len(batch) == 1:
                return [(tickets[0], None, exc)]
            results = []
            for ticket, prepared in batch:
                try:
                    results.append((ticket, self.pipeline.infer(prepared, ticket.stamp_s, ticket.request, vocabulary), None))
                except Exception as frame_exc:
                    results.append((ticket, None, frame_exc))
        if self._added_model_delay_s:
            self._stop.wait(self._added_model_delay_s)
        return results

    def _deliver(self, ticket: FrameTicket, inferred: InferredFrame | None, error: Exception | None) -> None:
        """Queue a frame for the caller, waiting while the previous one is not taken; a frame
        that cannot be delivered because the stream closed is counted ``ignored``."""
        while not self._stop.is_set():
            try:
                self._results.put((ticket, inferred, error), timeout=POLL_S)
                return
            except queue.Full:
                continue
        self._slots.stats(ticket.camera).frame_ignored()
