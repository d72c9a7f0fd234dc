"""FrameStream, ROS-free: the frame path's stages overlapped on threads, several cameras batched
through one model, each camera with its own latest-frame hand-off and counters."""

import threading
import time
from collections import defaultdict

import numpy as np
import pytest

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.engine.frame_pipeline import FramePipeline, OutputRequest, RawImageData
from ovseg_ros.engine.frame_stream import FrameStream, FrameTicket
from ovseg_ros.engine.frame_stats import FrameStats
from ovseg_ros.engine.image_codec import ImageError
from ovseg_ros.models import build_model
from ovseg_ros.engine.segmenter import Segmenter
from ovseg_ros.engine.smoothing import TemporalSmoother
from ovseg_ros.engine.vocabulary import VocabularyManager

HEIGHT, WIDTH = 48, 64


def raw(index: int = 0, height: int = HEIGHT, width: int = WIDTH) -> RawImageData:
    return RawImageData("rgb8", height, width, width * 3, synthetic_frame(index, height, width).tobytes())


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(build_model("san_tiny_dev"), short_edge=HEIGHT)


@pytest.fixture
def pipeline(segmenter):
    vocabularies = VocabularyManager(segmenter.encode_text)
    vocabularies.install(vocabularies.encode(["wall", "floor", "box"]))
    return FramePipeline(segmenter, vocabularies, TemporalSmoother("none"))


class Consumer:
    """The publishing thread's part: takes every result, counts it as the node does."""

    def __init__(self, stream: FrameStream, stats: dict[str, FrameStats]) -> None:
        self.results = []
        self._stream, self._stats = stream, stats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            result = self._stream.next_result(timeout=0.1)
            if result is None:
                continue
            self.results.append(result)
            stats = self._stats[result.ticket.camera]
            if result.error is not None:
                stats.frame_failed()
            else:
                stats.frame_processed(1.0)

    def stop(self) -> None:
        time.sleep(0.5)  # the frames in flight come out
        self._stop.set()
        self._thread.join(10)


def camera_stats(*names: str) -> dict[str, FrameStats]:
    return {name: FrameStats() for name in names}


def test_one_camera_stream_accounts_for_every_frame_and_answers_the_newest(pipeline):
    """Frames come faster than the model: the hand-offs drop stale ones, each counted once,
    and the last frame sent is the last one out."""
    stats = camera_stats("")
    stream = FrameStream(pipeline, stats)
    consumer = Consumer(stream, stats)
    for index in range(60):
        stats[""].frame_received()
        stream.submit(FrameTicket(raw(), index * 0.033, OutputRequest(), tag=index))
        time.sleep(0.0005)
    time.sleep(0.5)
    consumer.stop()
    assert stream.close(5.0)
    counts = stats[""].counts()
    assert counts["received"] == 60 and counts["in_flight"] == 0, counts
    assert counts["dropped"] > 0 and counts["processed"] == len(consumer.results)
    tags = [result.ticket.tag for result in consumer.results]
    assert tags == sorted(tags) and tags[-1] == 59


def test_bad_frames_come_out_as_errors_of_their_camera_and_the_others_go_on(pipeline):
    stats = camera_stats("good", "bad")
    stream = FrameStream(pipeline, stats, max_batch=2)
    consumer = Consumer(stream, stats)
    for index in range(8):
        for camera, image in (("good", raw(index)), ("bad", RawImageData("rgb8", HEIGHT, WIDTH, 1, b""))):
            stats[camera].frame_received()
            stream.submit(FrameTicket(image, index * 0.1, OutputRequest(), tag=index, camera=camera))
        time.sleep(0.15)
    consumer.stop()
    assert stream.close(5.0)
    by_camera = defaultdict(list)
    for result in consumer.results:
        by_camera[result.ticket.camera].append(result)
    assert by_camera["bad"] and all(isinstance(result.error, ImageError) for result in by_camera["bad"])
    assert len(by_camera["good"]) >= 6 and all(result.error is None for result in by_camera["good"])
    for counts in (stats["good"].counts(), stats["bad"].counts()):
        assert counts["in_flight"] == 0, counts


def test_cameras_at_different_rates_and_sizes_are_batched_none_starved_one_vocabulary_per_pass(pipeline):
    """Three cameras (one fast, two slow, one of another size that stops midway) into a model
    slower than all of them together, and a vocabulary change while they stream."""
    stats = camera_stats("fast", "slow", "stops")
    stream = FrameStream(pipeline, stats, max_batch=3, batch_wait_s=0.01, added_model_delay_s=0.05)
    consumer = Consumer(stream, stats)
    cameras = {"fast": (0.005, raw, 3.0), "slow": (0.04, raw, 3.0), "stops": (0.04, lambda i: raw(i, 60, 80), 1.2)}
    sent = defaultdict(list)

    def camera(name: str) -> None:
        period, frame, duration = cameras[name]
        end, index = time.monotonic() + duration, 0
        while time.monotonic() < end:
            stats[name].frame_received()
            stream.submit(FrameTicket(frame(index), index * period, OutputRequest(), tag=(name, index), camera=name))
            sent[name].append(index)
            index += 1
            time.sleep(period)

    threads = [threading.Thread(target=camera, args=(name,)) for name in cameras]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    pipeline.vocabularies.install(pipeline.vocabularies.encode(["wall", "floor", "box", "person"]))
    for thread in threads:
        thread.join()
    consumer.stop()
    assert stream.close(5.0)

    results = consumer.results
    assert all(result.error is None for result in results), [result.error for result in results if result.error]
    by_camera = defaultdict(list)
    for result in results:
        assert result.ticket.tag[0] == result.ticket.camera, "each frame comes out as its own camera's"
        by_camera[result.ticket.camera].append(result)
    for name in cameras:
        counts = stats[name].counts()
        assert counts["in_flight"] == 0 and counts["received"] == len(sent[name]), (name, counts)
        indices = [result.ticket.tag[1] for result in by_camera[name]]
        assert indices == sorted(indices), f"{name}: in order"
        assert indices[-1] == sent[name][-1], f"{name}: its newest frame is answered"
    assert stats["fast"].counts()["dropped"] > 0, "latest frame: the fast camera's stale frames are dropped"
    # None starved: the two slow cameras get about as many frames as the fast one.
    processed = {name: len(by_camera[name]) for name in cameras}
    assert processed["slow"] >= 0.6 * processed["fast"], processed
    stops = [result for result in by_camera["stops"]]
    assert stops and stops[0].outputs.labels.shape == (60, 80)
    after_stop = [result for result in results if result.ticket.started > stops[-1].ticket.started + 0.2]
    assert len(after_stop) >= 10, "the others go on once a camera stops"

    passes = defaultdict(list)
    for result in results:
        passes[result.ticket.model_pass].append(result)
    assert any(len(frames) > 1 for frames in passes.values()), "waiting cameras share a pass"
    for number, frames in passes.items():
        assert {frame.ticket.batch_size for frame in frames} == {len(frames)}
        assert len({frame.ticket.camera for frame in frames}) == len(frames), "one frame per camera in a pass"
        assert len({frame.outputs.vocabulary.version for frame in frames}) == 1, f"pass {number} has two vocabularies"
    versions = [passes[number][0].outputs.vocabulary.version for number in sorted(passes)]
    assert versions == sorted(versions) and set(versions) == {1, 2}, "every camera switches at the same pass"


def test_max_batch_one_goes_frame_by_frame_in_turn(pipeline):
    stats = camera_stats("a", "b")
    stream = FrameStream(pipeline, stats, max_batch=1, added_model_delay_s=0.03)
    consumer = Consumer(stream, stats)
    for index in range(20):
        for name in stats:
            stats[name].frame_received()
            stream.submit(FrameTicket(raw(index), index * 0.02, OutputRequest(), tag=index, camera=name))
        time.sleep(0.02)
    consumer.stop()
    assert stream.close(5.0)
    cameras = [result.ticket.camera for result in consumer.results]
    assert {result.ticket.batch_size for result in consumer.results} == {1}
    assert all(first != second for first, second in zip(cameras[1:-1], cameras[2:-1])), f"in turn: {cameras}"


def test_closing_counts_undelivered_frames_as_ignored(pipeline):
    stats = camera_stats("a", "b")
    stream = FrameStream(pipeline, stats, max_batch=2)
    for index in range(5):
        for name in stats:
            stats[name].frame_received()
            stream.submit(FrameTicket(raw(), index * 0.033, OutputRequest(), tag=index, camera=name))
    time.sleep(0.5)  # nobody takes the results: at most one waits, the rest are dropped
    assert stream.close(5.0)
    for name in stats:
        assert stats[name].counts()["in_flight"] == 0, stats[name].counts()
    assert sum(stats[name].counts()["ignored"] for name in stats) >= 1
    assert stream.submit(FrameTicket(raw(), 1.0, OutputRequest(), camera="a")) == "refused"
    with pytest.raises(KeyError):
        stream.submit(FrameTicket(raw(), 1.0, OutputRequest(), camera="unknown"))


def test_max_rate_limits_model_starts(pipeline):
    stats = camera_stats("")
    stream = FrameStream(pipeline, stats, max_rate_hz=5.0)
    starts = []
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        stream.submit(FrameTicket(raw(), 0.0, OutputRequest()))
        result = stream.next_result(timeout=0.01)
        if result is not None:
            starts.append(result.ticket.started)
        time.sleep(0.01)
    stream.close(5.0)
    gaps = np.diff(starts)
    assert len(starts) <= 9 and len(gaps) and gaps.min() >= 0.19, starts
