"""A latency budget for SED's category early rejection (CER): choose the top-K per frame.

SED's decoder keeps, between its stages, only the classes that are in the top K at some
pixel; a smaller K means fewer classes through the expensive later stages, so a faster
frame and (slightly) coarser rare classes. :class:`CerBudget` picks K on a ladder so that
the 95th percentile of the model's latency stays under a budget::

    budget = CerBudget(max_topk=8, budget_ms=50.0)
    k = budget.topk
    for frame in frames:
        model.cer_topk = k
        ms = run_model(frame)
        k = budget.observe(ms, topk=k)

Policy (hysteresis, so that K does not flip every frame):

* The ladder is ``max_topk`` followed by the rungs of (8, 4, 2, 1) below it:
  ``max_topk=8`` gives 8, 4, 2, 1; ``max_topk=24`` gives 24, 8, 4, 2, 1; ``max_topk=3``
  gives 3, 2, 1; ``max_topk=0`` (CER off, every class through, the node's
  ``cer_topk`` 0) gives 0, 8, 4, 2, 1 with 0 as the top, slowest rung.
* Latencies are collected in a window of the last ``window`` frames run at the current K.
  The p95 is taken by nearest rank: it is the ``m``-th largest sample of a full window,
  ``m = window - ceil(0.95 * window) + 1`` (2 for a window of 30).
* Step down one rung when the window's p95 exceeds the budget. The step is taken as soon
  as ``m`` samples over the budget have been seen: a full window's p95 would then exceed
  the budget whatever the remaining samples are, so waiting for them would only spend more
  frames over budget (a K that is far too slow for a grown vocabulary is left in ``m``
  frames, not ``window``).
* Step up one rung only with a full window whose p95 is below ``headroom * budget`` and
  when the p95 last measured at the next larger K, if one is known, fits the budget. The
  headroom gap is the hysteresis: a K whose p95 sits near the budget neither steps up nor
  down, and a larger K that was just found too slow is not retried on noise alone.
* After every change the window is emptied: each decision is made on frames measured at
  the K it is about (frames still in flight at the old K are dropped, see ``observe``).
* A p95 remembered for a K is forgotten ``forget_after`` frames after it was measured, so
  that a larger K is probed again when the load may have changed (smaller vocabulary, an
  idle GPU). A failed probe costs at most ``m`` frames over budget, once per
  ``forget_after`` frames.
* ``budget_ms == 0`` is off: K is ``max_topk`` and observations are only collected.
* When the model's cost changes for a known reason (a new vocabulary: SED's decoder cost
  grows with the class count), :meth:`forget` drops what was measured and keeps K.

The budget may be changed at any time from another thread (a parameter callback) while one
thread calls :meth:`observe`; a lock makes each call see one consistent state.
"""

from __future__ import annotations

import math
import threading
from collections import deque

# The authors' fast mode keeps the top 8; halving it is the coarsest step that still
# changes the decoder's cost noticeably.
CER_LADDER = (8, 4, 2, 1)


def cer_ladder(max_topk: int) -> tuple[int, ...]:
    """The rungs K may take, slowest first: ``max_topk`` then the rungs of
    :data:`CER_LADDER` below it (0 = CER off counts as slower than every K)."""
    if max_topk < 0:
        raise ValueError(f"max_topk must be >= 0 (0 = CER off), not {max_topk}")
    if max_topk == 0:
        return (0, *CER_LADDER)
    return (max_topk, *(k for k in CER_LADDER if k < max_topk))


class CerBudget:
    """Adapts SED's CER top-K to keep the model's p95 latency under ``budget_ms``.

    Args:
        max_topk: the largest (slowest) K, used when the budget is off; 0 = CER off.
        budget_ms: p95 latency budget of the model in milliseconds; 0 = off.
        window: frames at one K on which a decision is made.
        headroom: step up only when the p95 is below ``headroom * budget_ms`` (0 < headroom < 1).
        forget_after: frames after which a p95 measured at a K is no longer trusted.
    """

    def __init__(self, max_topk: int = 8, budget_ms: float = 0.0, window: int = 30,
                 headroom: float = 0.7, forget_after: int = 600):
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        if not 0.0 < headroom < 1.0:
            raise ValueError(f"headroom must be in (0, 1), not {headroom}")
        self.ladder = cer_ladder(max_topk)
        self.max_topk = max_topk
        self.window = window
        self.headroom = headroom
        self.forget_after = forget_after
        # How many of the largest samples of a full window reach down to its p95.
        self._tail = window - math.ceil(0.95 * window) + 1
        self._lock = threading.Lock()
        self._budget_ms = 0.0
        self.budget_ms = budget_ms
        self.reset()

    @property
    def budget_ms(self) -> float:
        return self._budget_ms

    @budget_ms.setter
    def budget_ms(self, value: float) -> None:
        value = float(value)
        if not value >= 0.0:
            raise ValueError(f"budget_ms must be >= 0 (0 = off), not {value}")
        with self._lock:
            if value == 0.0 and self._budget_ms != 0.0:
                # Off: back to the configured K at once; what was measured stays valid.
                self._move_to(0)
            self._budget_ms = value

    @property
    def topk(self) -> int:
        """K for the next frame (0 = CER off, only when ``max_topk`` is 0)."""
        return self.ladder[self._rung]

    @property
    def changes(self) -> int:
        """How many times K has changed since construction or :meth:`reset`."""
        return self._changes

    def reset(self) -> None:
        """Forget every measurement and go back to ``max_topk`` (e.g. a new model)."""
        with self._lock:
            self._rung = 0
            self._samples: deque[float] = deque(maxlen=self.window)
            # rung -> (p95 or a lower bound of it, frame number it was measured at)
            self._measured: dict[int, tuple[float, int]] = {}
            self._frame = 0
            self._changes = 0

    def forget(self) -> None:
        """Drop every measurement but keep K: the model's cost changed (e.g. a new vocabulary).

        The next decision is made on a fresh window at the current K, and a larger K may be
        tried again at once instead of after ``forget_after`` frames.
        """
        with self._lock:
            self._samples.clear()
            self._measured.clear()

    def last_p95(self, topk: int) -> float | None:
        """The p95 (ms) last measured at ``topk``, None if unknown or forgotten."""
        with self._lock:
            return self._remembered(self.ladder.index(topk))

    def observe(self, model_ms: float, topk: int | None = None) -> int:
        """Record one frame's model latency; returns K for the next frame.

        Args:
            model_ms: the model's latency for the frame, in milliseconds.
            topk: the K the frame ran with, when frames overlap (pipelining): a frame that
                ran at another K than the current one says nothing about it and is ignored.
                None means the current K.
        """
        with self._lock:
            self._frame += 1
            if topk is not None and topk != self.ladder[self._rung]:
                return self.ladder[self._rung]
            self._samples.append(float(model_ms))
            if self._budget_ms > 0.0:
                self._decide()
            return self.ladder[self._rung]

    def _decide(self) -> None:
        ranked = sorted(self._samples, reverse=True)
        if len(ranked) < self._tail:
            return
        p95 = ranked[self._tail - 1]  # p95 of a full window, a lower bound of it before
        self._measured[self._rung] = (p95, self._frame)
        if p95 > self._budget_ms:
            if self._rung + 1 < len(self.ladder):
                self._move_to(self._rung + 1)
            return
        if len(ranked) < self.window or self._rung == 0 or p95 >= self.headroom * self._budget_ms:
            return
        larger = self._remembered(self._rung - 1)
        if larger is None or larger <= self._budget_ms:
            self._move_to(self._rung - 1)

    def _remembered(self, rung: int) -> float | None:
        measured = self._measured.get(rung)
        if measured is None or self._frame - measured[1] > self.forget_after:
            return None
        return measured[0]

    def _move_to(self, rung: int) -> None:
        if rung != self._rung:
            self._rung = rung
            self._changes += 1
        self._samples.clear()
