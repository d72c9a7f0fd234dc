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
