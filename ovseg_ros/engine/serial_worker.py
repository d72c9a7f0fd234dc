"""A serial worker: slow jobs (text encoding) that callbacks hand off, run one at a time."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable


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
