"""Shutdown of the node process as ros2 launch and a terminal do it, while frames flow.

Ctrl-C sends SIGINT to the whole process group, so a node can get a second SIGINT while
it shuts down; launch follows SIGINT with SIGTERM after 5 s (sigterm_timeout). Each way
must end with exit code 0 within those 5 s and a clean log. The bug this guards against
hit 4 runs in 6, so each way runs several times (the nodes of one round run at once).
"""

import signal
import threading
import time
from pathlib import Path

import pytest
from sensor_msgs.msg import Image

from ovseg_ros.commands.node_driver import NodeProcess
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import RELIABLE, answer_timeout, participant_segments, raw_image, started_node, stopped, wait_until_serving

# launch's default sigterm_timeout: SIGINT, then SIGTERM this long after.
LAUNCH_SIGTERM_TIMEOUT_S = 5.0
#: Signal schedules: (seconds after the first signal, signal).
SCHEDULES = {
    "sigint_twice": [(0.0, signal.SIGINT), (0.05, signal.SIGINT)],
    "sigint_during_shutdown": [(0.0, signal.SIGINT), (0.3, signal.SIGINT)],
    "sigint_then_sigterm": [(0.0, signal.SIGINT), (0.2, signal.SIGTERM)],
    "sigterm": [(0.0, signal.SIGTERM)],
}
ROUNDS = 3
# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools")


def signal_and_time(node: NodeProcess, schedule, results: dict, key: str) -> None:
    """Send the signals of ``schedule``; record (exit code, seconds from the first signal to exit)."""
    start = time.monotonic()
    for delay, signum in schedule:
        time.sleep(max(0.0, start + delay - time.monotonic()))
        if node.process.poll() is None:
            node.process.send_signal(signum)
    try:
        code = node.process.wait(LAUNCH_SIGTERM_TIMEOUT_S * 3)
    except Exception:
        node.process.kill()
        code = node.process.wait()
    results[key] = (code, time.monotonic() - start)


def clean_log(text: str) -> bool:
    return "shutting down" in text and not any(word in text for word in ("Traceback", "KeyboardInterrupt", "InvalidHandle"))


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_shutdown_is_clean_under_repeated_sigint_and_sigterm(tmp_path, peer, round_):
    nodes = {f"stop{round_}_{name}": started_node(tmp_path, f"stop{round_}_{name}") for name in SCHEDULES}  # starting at once
    stop_streaming = threading.Event()
    try:
        infos = {namespace: peer.record(f"/{namespace}/segmentation/info", SegmentationInfo) for namespace in nodes}
        for namespace, node in nodes.items():
            wait_until_serving(peer, node, f"/{namespace}/image_raw")
        segments = {namespace: participant_segments(node.process.pid) for namespace, node in nodes.items()}
        publishers = [peer.node.create_publisher(Image, f"/{namespace}/image_raw", RELIABLE) for namespace in nodes]

        def stream():
            index = 0
            while not stop_streaming.is_set():
                for publisher in publishers:
                    publisher.publish(raw_image(index))
                index += 1
                time.sleep(0.05)

        streamer = threading.Thread(target=stream)
        streamer.start()
        assert peer.wait_for(lambda: all(recording.messages for recording in infos.values()), answer_timeout()), "frames flow before the signals"
        results = {}
        signallers = [
            threading.Thread(target=signal_and_time, args=(node, SCHEDULES[namespace.split("_", 1)[1]], results, namespace))
            for namespace, node in nodes.items()
        ]
        for thread in signallers:
            thread.start()
        for thread in signallers:
            thread.join()
    finally:
        stop_streaming.set()
        for node in nodes.values():
            stopped(node)
    report = {namespace: (code, f"{seconds:.2f} s") for namespace, (code, seconds) in results.items()}
    print(report)
    assert all(code == 0 for code, _ in results.values()), report
    assert all(seconds < LAUNCH_SIGTERM_TIMEOUT_S for _, seconds in results.values()), report
    for namespace, node in nodes.items():
        assert clean_log(node.log_text()), f"{namespace}:\n{node.log_text()[-2000:]}"
    # Each node deleted its DDS participant on the way out: nothing of it stays in /dev/shm.
    assert all(segments.values()), segments
    left = {namespace: [path for path in paths if Path(path).exists()] for namespace, paths in segments.items()}
    assert not any(left.values()), left


def test_vocabulary_change_in_flight_at_shutdown_answers_failure(tmp_path, peer):
    node = started_node(tmp_path, "stop_vocabulary", "-p", "cpu_threads:=1")
    try:
        wait_until_serving(peer, node, "/stop_vocabulary/image_raw")
        client = peer.node.create_client(SetVocabulary, "/stop_vocabulary/ovseg/set_vocabulary")
        assert client.wait_for_service(10.0)
        pending = client.call_async(SetVocabulary.Request(labels=[f"never seen {i}" for i in range(4000)]))
        time.sleep(1.0)  # the cold encoding is under way
        assert not pending.done()
        results = {}
        signal_and_time(node, SCHEDULES["sigint_twice"], results, "node")
        assert peer.wait_for(pending.done, 5.0), "the waiting call was answered before the node went"
        response = pending.result()
    finally:
        stopped(node)
    code, seconds = results["node"]
    assert code == 0 and seconds < LAUNCH_SIGTERM_TIMEOUT_S, (code, seconds)
    assert not response.success and "shutting down" in response.message, response.message
    assert clean_log(node.log_text()), node.log_text()[-2000:]
