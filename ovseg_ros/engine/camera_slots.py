"""Latest-frame hand-offs of several cameras, from the executor to the model."""

from __future__ import annotations

import threading
import time
from typing import Generic, Mapping, TypeVar

from ovseg_ros.engine.frame_stats import FrameStats

Frame = TypeVar("Frame")

#: What :meth:`CameraSlots.put` did with a frame.
QUEUED, REPLACED, REFUSED = "queued", "replaced", "refused"


class _CameraSlot(Generic[Frame]):
    """One camera's frames between arrival and the model (guarded by :class:`CameraSlots`)."""

    def __init__(self, stats: FrameStats) -> None:
        self.stats = stats
        self.incoming: Frame | None = None  # the newest frame not yet being prepared
        self.preparing = False
        self.prepared: Frame | None = None
        self.prepare_turn = 0  # when it was last prepared / served: the least recent goes first
        self.serve_turn = 0

    @property
    def pending(self) -> bool:
        """A frame is on its way to the model but not prepared yet."""
        return self.prepared is None and (self.incoming is not None or self.preparing)


class CameraSlots(Generic[Frame]):
    """Latest-frame hand-offs of several cameras, from the executor to the model, fair to each.

    Each camera has two slots of one frame: ``incoming`` (the executor ``put``s every frame
    there without ever blocking; a frame not yet taken is replaced by its camera's next one,
    which drops it, counted in the camera's :class:`FrameStats`) and ``prepared`` (decoded and
    uploaded, waiting for the model). The preparing thread takes a camera's frame only while
    that camera has none prepared, so each camera is at most one frame ahead of the model;
    the model takes prepared frames of several cameras at once. Both serve the camera served
    longest ago first: under overload no camera is starved. One condition guards every
    camera, so the threads can wait for any of them.
    """

    def __init__(self, stats: Mapping[str, FrameStats]) -> None:
        if not stats:
            raise ValueError("no cameras")
        self._condition = threading.Condition()
        self._cameras = {name: _CameraSlot(camera_stats) for name, camera_stats in stats.items()}
        self._turns = 0
        self._closed = False

    def stats(self, camera: str) -> FrameStats:
        return self._cameras[camera].stats

    def put(self, camera: str, frame: Frame) -> str:
        """QUEUED; REPLACED when the camera's waiting frame was dropped for it (and counted
        ``dropped``); REFUSED once closed. KeyError for an unknown camera."""
        slots = self._cameras[camera]
        with self._condition:
            if self._closed:
                return REFUSED
            replaced, slots.incoming = slots.incoming is not None, frame
            self._condition.notify_all()
        if replaced:
            slots.stats.frame_dropped()
        return REPLACED if replaced else QUEUED

    def take_to_prepare(self, timeout: float | None = None) -> tuple[str, Frame] | None:
        """(camera, its newest frame) of the camera prepared longest ago among those with a frame
        and none prepared, waiting up to ``timeout`` s; None on timeout or once closed. Then
        :meth:`put_prepared` must follow for that camera."""
        with self._condition:
            def ready() -> list[str]:
                return [name for name, slots in self._cameras.items() if slots.incoming is not None and slots.prepared is None and not slots.preparing]

            if not self._condition.wait_for(lambda: ready() or self._closed, timeout) or self._closed:
                return None
            camera = min(ready(), key=lambda name: self._cameras[name].prepare_turn)
            slots = self._cameras[camera]
            frame, slots.incoming, slots.preparing = slots.incoming, None, True
            slots.prepare_turn = self._next_turn()
            return camera, frame

    def put_prepared(self, camera: str, frame: Frame | None) -> str:
        """The camera's frame taken by :meth:`take_to_prepare`, prepared (None: its preparation
        failed); QUEUED, or REFUSED once closed (the caller counts it)."""
        slots = self._cameras[camera]
        with self._condition:
            slots.preparing = False
            if frame is not None and not self._closed:
                slots.prepared = frame
            self._condition.notify_all()
            return REFUSED if self._closed else QUEUED

    def take_batch(self, max_batch: int, batch_wait_s: float, timeout: float | None = None) -> list[Frame]:
        """Prepared frames of up to ``max_batch`` cameras, those served longest ago first.

        Waits up to ``timeout`` s for the first; then, up to ``batch_wait_s`` more, for the
        cameras whose frame is on its way (arrived or being prepared), never for a camera with
        none. [] on timeout or once closed.
        """
        with self._condition:
            def ready() -> list[_CameraSlot]:
                return [slots for slots in self._cameras.values() if slots.prepared is not None]

            if not self._condition.wait_for(lambda: ready() or self._closed, timeout) or self._closed:
                return []
            deadline = time.monotonic() + batch_wait_s
            while not self._closed and len(ready()) < max_batch and any(slots.pending for slots in self._cameras.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            batch = sorted(ready(), key=lambda slots: slots.serve_turn)[:max_batch]
            frames = []
            for slots in batch:
                frames.append(slots.prepared)
                slots.prepared, slots.serve_turn = None, self._next_turn()
            self._condition.notify_all()
            return frames

    def discard(self) -> int:
        """Drop the frames the model has not taken (not one being prepared), each counted
        ``ignored`` for its camera; how many."""
        with self._condition:
            dropped = []
            for slots in self._cameras.values():
                dropped += [slots.stats] * ((slots.incoming is not None) + (slots.prepared is not None))
                slots.incoming = slots.prepared = None
            self._condition.notify_all()
        for stats in dropped:
            stats.frame_ignored()
        return len(dropped)

    def close(self) -> int:
        """Refuse further frames, wake the waiting threads so they can exit, and :meth:`discard`."""
        with self._condition:
            self._closed = True
        return self.discard()

    def _next_turn(self) -> int:
        self._turns += 1
        return self._turns
