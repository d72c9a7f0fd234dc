"""The latest-frame hand-off (rendering: test_rendering.py)."""

import threading
from concurrent import futures

import pytest

from ovseg_ros.handoff import QUEUED, REFUSED, REPLACED, FrameStats, LatestFrameSlot, SerialWorker


def test_slot_keeps_only_the_newest_frame_and_says_what_it_dropped():
    slot = LatestFrameSlot()
    assert [slot.put(frame) for frame in range(5)] == [QUEUED] + [REPLACED] * 4
    assert slot.take(timeout=0) == 4
    assert slot.take(timeout=0.01) is None
    slot.put(5)
    assert slot.discard() and not slot.discard()
    slot.put(6)
    assert slot.close() and slot.put(7) == REFUSED and slot.take(timeout=0) is None


def test_frame_counts_add_up_over_every_outcome():
    stats = FrameStats()
    for _ in range(6):
        stats.frame_received()
    stats.frame_processed(10.0)
    stats.frame_dropped()
    stats.frame_failed()
    stats.frame_ignored()
    assert stats.counts() == {"received": 6, "processed": 1, "dropped": 1, "failed": 1, "ignored": 1, "in_flight": 2}


def test_slot_wakes_a_waiting_worker():
    slot = LatestFrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.put("frame")
    worker.join(2)
    assert got == ["frame"]
    slot.close()
    assert slot.take(timeout=5) is None


def test_serial_worker_runs_jobs_in_order_and_cancels_the_rest_on_close():
    worker = SerialWorker("test-serial")
    release = threading.Event()
    order = []
    first = worker.submit(lambda: (release.wait(5), order.append(1)))
    second = worker.submit(order.append, 2)
    failing = worker.submit(lambda: 1 / 0)
    assert not second.done()
    release.set()
    assert second.result(timeout=5) is None and order == [1, 2] and first.done()
    assert isinstance(failing.exception(timeout=5), ZeroDivisionError)
    started, hold = threading.Event(), threading.Event()
    running = worker.submit(lambda: (started.set(), hold.wait(5))[1])
    pending = worker.submit(order.append, 3)
    assert started.wait(5)
    worker.close()
    hold.set()
    futures.wait([running, pending], timeout=5)
    assert running.result() is True and pending.cancelled() and order == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(order.append, 4)
