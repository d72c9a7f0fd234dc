"""The cameras' latest-frame hand-offs, frame counters and the serial worker."""

import threading
import time
from concurrent import futures

import pytest

from ovseg_ros.engine.camera_slots import QUEUED, REFUSED, REPLACED, CameraSlots
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.serial_worker import SerialWorker


def slots(*cameras: str) -> tuple[CameraSlots, dict[str, FrameStats]]:
    stats = {camera: FrameStats() for camera in cameras}
    return CameraSlots(stats), stats


def test_each_camera_keeps_only_its_newest_frame_and_counts_what_it_dropped():
    hand_off, stats = slots("a", "b")
    assert [hand_off.put("a", frame) for frame in ("a0", "a1", "a2")] == [QUEUED, REPLACED, REPLACED]
    assert hand_off.put("b", "b0") == QUEUED, "another camera's frame replaces nothing"
    assert stats["a"].counts()["dropped"] == 2 and stats["b"].counts()["dropped"] == 0
    taken = dict([hand_off.take_to_prepare(0), hand_off.take_to_prepare(0)])
    assert taken == {"a": "a2", "b": "b0"}
    with pytest.raises(KeyError):
        hand_off.put("c", "c0")


def test_a_camera_is_at_most_one_frame_ahead_of_the_model():
    hand_off, stats = slots("a")
    hand_off.put("a", 0)
    assert hand_off.take_to_prepare(0) == ("a", 0)
    hand_off.put("a", 1)
    assert hand_off.take_to_prepare(0.01) is None, "its frame 0 is being prepared"
    hand_off.put_prepared("a", "prepared 0")
    assert hand_off.take_to_prepare(0.01) is None, "its frame 0 waits for the model"
    assert hand_off.take_batch(4, 0.0, 0) == ["prepared 0"]
    assert hand_off.take_to_prepare(0) == ("a", 1)


def test_cameras_are_served_in_turn_under_overload():
    """One camera floods, two send now and then; max_batch 2: nobody is starved."""
    hand_off, stats = slots("flood", "b", "c")
    served = {"flood": 0, "b": 0, "c": 0}
    for round_ in range(30):
        for frame in range(5):
            hand_off.put("flood", ("flood", round_, frame))
        if round_ % 3 == 0:
            hand_off.put("b", ("b", round_))
            hand_off.put("c", ("c", round_))
        while (taken := hand_off.take_to_prepare(0)) is not None:
            hand_off.put_prepared(taken[0], taken[1])
        for frame in hand_off.take_batch(2, 0.0, 0):
            served[frame[0]] += 1
    assert served["b"] >= 9 and served["c"] >= 9 and served["flood"] >= 20, served
    assert stats["flood"].counts()["dropped"] >= 4 * 30


def test_a_batch_waits_briefly_for_a_frame_on_its_way_and_never_for_a_silent_camera():
    hand_off, _ = slots("a", "b", "silent")
    hand_off.put("a", "a0")
    hand_off.put_prepared(*hand_off.take_to_prepare(0))
    start = time.monotonic()
    assert hand_off.take_batch(3, 1.0, 0) == ["a0"], "b has no frame, silent has none: no wait"
    assert time.monotonic() - start < 0.2
    hand_off.put("a", "a1")
    hand_off.put_prepared(*hand_off.take_to_prepare(0))
    hand_off.put("b", "b1")  # arrived, not prepared yet
    threading.Timer(0.1, lambda: hand_off.put_prepared(*hand_off.take_to_prepare(0))).start()
    start = time.monotonic()
    assert sorted(hand_off.take_batch(3, 1.0, 0)) == ["a1", "b1"], "waited for b's frame"
    assert 0.08 < time.monotonic() - start < 0.9
    hand_off.put("a", "a2")
    hand_off.put_prepared(*hand_off.take_to_prepare(0))
    hand_off.put("b", "b2")  # never prepared: the wait is bounded
    start = time.monotonic()
    assert hand_off.take_batch(3, 0.15, 0) == ["a2"]
    assert 0.13 < time.monotonic() - start < 0.6


def test_discard_and_close_count_the_waiting_frames_ignored():
    hand_off, stats = slots("a", "b")
    hand_off.put("a", "a0")
    hand_off.put_prepared(*hand_off.take_to_prepare(0))
    hand_off.put("a", "a1")
    hand_off.put("b", "b0")
    assert hand_off.discard() == 3
    assert stats["a"].counts()["ignored"] == 2 and stats["b"].counts()["ignored"] == 1
    hand_off.put("b", "b1")
    assert hand_off.take_to_prepare(0) == ("b", "b1")
    assert hand_off.close() == 0 and hand_off.put("a", "a2") == REFUSED
    assert hand_off.put_prepared("b", "prepared b1") == REFUSED, "prepared after close: the caller counts it"
    assert hand_off.take_batch(2, 0.0, 0) == [] and hand_off.take_to_prepare(0) is None


def test_a_camera_counts_into_the_node_totals():
    total = FrameStats()
    front = FrameStats(parent=total)
    front.frame_received()
    front.frame_processed(5.0)
    FrameStats(parent=total).frame_received()
    assert front.counts()["received"] == 1 and total.counts()["received"] == 2 and total.counts()["processed"] == 1


def test_frame_counts_add_up_over_every_outcome():
    stats = FrameStats()
    for _ in range(6):
        stats.frame_received()
    stats.frame_processed(10.0)
    stats.frame_dropped()
    stats.frame_failed()
    stats.frame_ignored()
    assert stats.counts() == {"received": 6, "processed": 1, "dropped": 1, "failed": 1, "ignored": 1, "in_flight": 2}


def test_the_threads_wake_when_a_frame_arrives_and_on_close():
    hand_off, _ = slots("a", "b")
    got = []
    worker = threading.Thread(target=lambda: got.append(hand_off.take_to_prepare(timeout=5)))
    worker.start()
    hand_off.put("b", "frame")
    worker.join(2)
    assert got == [("b", "frame")]
    model = threading.Thread(target=lambda: got.append(hand_off.take_batch(2, 0.0, timeout=5)))
    model.start()
    hand_off.close()
    model.join(2)
    assert got[-1] == [] and not model.is_alive()


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
