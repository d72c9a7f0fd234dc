"""Races provoked on purpose, on one node process: transitions fired while frames, text
encodings and service calls are in flight, and 50 lifecycle cycles under load.

The node runs with the test-only OVSEG_TEST_FRAME_DELAY_S (a slower model) and one torch
thread, so frames stay in flight across transitions; a cold text encoding is a vocabulary
of thousands of names never encoded before (the text cache is fresh per test run).
"""

import threading
from collections import Counter
import time
import uuid

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters, SetParameters, SetParametersAtomically
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import Lifecycle, answer_timeout, counters_add_up, fresh_counters, resend_until, matched_image_publisher, serving_node
from node_settings import raw_image

NAMESPACE = "races"
NODE = f"/{NAMESPACE}/ovseg"
CAMERA_TOPIC = f"/{NAMESPACE}/image_raw"
VOCABULARY = ["wall", "floor"]
FRAME_DELAY_S = 0.3
COLD_CLASSES = 4000  # several seconds of text encoding on one CPU thread
# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools", "node")
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def node(tmp_path_factory, peer):
    with serving_node(peer, tmp_path_factory.mktemp("races"), NAMESPACE, "-p", "cpu_threads:=1", vocabulary=VOCABULARY, env={"OVSEG_TEST_FRAME_DELAY_S": str(FRAME_DELAY_S)},
                      class_map_topic=f"/{NAMESPACE}/segmentation/label_info") as process:
        yield process


@pytest.fixture(scope="module")
def peer():
    peer = Peer("races_peer")
    peer.record(f"/{NAMESPACE}/segmentation/info", SegmentationInfo)
    peer.record(f"/{NAMESPACE}/segmentation/label_info", ClassMap, LATCHED)
    peer.record("/diagnostics", DiagnosticArray)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def lifecycle(peer):
    return Lifecycle(peer, NODE)


@pytest.fixture(scope="module")
def images(peer):
    return matched_image_publisher(peer, CAMERA_TOPIC)


@pytest.fixture(scope="module")
def vocabulary_service(peer):
    return peer.node.create_client(SetVocabulary, f"{NODE}/set_vocabulary")


def answered(peer, index: int) -> bool:
    return any(m.header.stamp.sec == 2000 + index for m in peer.recordings[f"/{NAMESPACE}/segmentation/info"].decoded())


def counters(peer) -> dict[str, int]:
    return fresh_counters(peer, peer.recordings["/diagnostics"], NODE)


def class_maps(peer) -> list:
    return peer.recordings[f"/{NAMESPACE}/segmentation/label_info"].decoded()


def cold_names() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"object {tag} {i}" for i in range(COLD_CLASSES)]


def timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def parameter_values(peer, *names):
    client = peer.node.create_client(GetParameters, f"{NODE}/get_parameters")
    return peer.call(client, GetParameters.Request(names=list(names))).values


def test_max_rate_wait_ends_on_cleanup_and_no_worker_survives(peer, lifecycle, images):
    client = peer.node.create_client(SetParameters, f"{NODE}/set_parameters")
    slow = Parameter("max_rate_hz", value=0.05).to_parameter_msg()  # the worker then waits 20 s after a frame
    assert peer.call(client, SetParameters.Request(parameters=[slow])).results[0].successful
    assert resend_until(images, raw_image(1), lambda: answered(peer, 1), peer, answer_timeout())
    assert lifecycle.change("deactivate")
    cleaned, seconds = timed(lambda: lifecycle.change("cleanup"))
    assert cleaned and seconds < 5.0, f"cleanup took {seconds:.1f} s: the worker's rate-limit wait did not end"
    assert counters(peer)["inference_threads"] == 0
    normal = Parameter("max_rate_hz", value=0.0).to_parameter_msg()
    assert peer.call(client, SetParameters.Request(parameters=[normal])).results[0].successful
    assert lifecycle.change("configure") and lifecycle.change("activate")
    assert counters(peer)["inference_threads"] == 1


def test_vocabulary_change_racing_cleanup_answers_failure(peer, lifecycle, node, vocabulary_service):
    assert vocabulary_service.wait_for_service(10.0)
    pending = vocabulary_service.call_async(SetVocabulary.Request(labels=cold_names()))
    time.sleep(1.0)  # the encoding is under way
    assert lifecycle.change("deactivate")
    cleaned, seconds = timed(lambda: lifecycle.change("cleanup"))
    assert cleaned and seconds < 3.0, f"cleanup waited {seconds:.1f} s for the text encoding"
    assert not pending.done(), "the encoding was still running when cleanup finished"
    assert peer.wait_for(pending.done, 120.0)
    response = pending.result()
    assert not response.success and "cleaned up" in response.message, response.message
    assert node.process.poll() is None and lifecycle.state() == "unconfigured"

    assert lifecycle.change("configure") and lifecycle.change("activate")
    assert peer.wait_for(lambda: list(class_maps(peer)[-1].class_names) == VOCABULARY, 10.0), "the refused change left nothing behind"
    assert "Traceback" not in node.log_text()


def test_refused_atomic_set_changes_nothing(peer, node):
    client = peer.node.create_client(SetParametersAtomically, f"{NODE}/set_parameters_atomically")
    before = class_maps(peer)[-1]
    request = SetParametersAtomically.Request(parameters=[
        Parameter("vocabulary", value=["cat", "dog"]).to_parameter_msg(),
        Parameter("smoothing", value="ema").to_parameter_msg(),  # refused: read on configure, and the node is active
    ])
    result = peer.call(client, request).result
    assert not result.successful and "read on configure" in result.reason
    time.sleep(3.0)  # a change applied anyway would have been encoded and published by now
    assert class_maps(peer)[-1].vocabulary_version == before.vocabulary_version
    assert list(parameter_values(peer, "vocabulary")[0].string_array_value) == VOCABULARY
    assert parameter_values(peer, "smoothing")[0].string_value != "ema"


def test_cold_text_encoding_never_blocks_parameters_lifecycle_or_diagnostics(peer, lifecycle, vocabulary_service):
    client = peer.node.create_client(SetParameters, f"{NODE}/set_parameters")
    names = cold_names()
    diagnostics = peer.recordings["/diagnostics"]
    before = class_maps(peer)[-1].vocabulary_version
    request = SetParameters.Request(parameters=[Parameter("vocabulary", value=names).to_parameter_msg()])
    result, seconds = timed(lambda: peer.call(client, request).results[0])
    assert result.successful and seconds < 2.0, f"set_parameters answered after {seconds:.1f} s"

    seen = len(diagnostics.messages)
    state_seconds = [timed(lifecycle.state)[1] for _ in range(3)]
    time.sleep(2.5)
    still_encoding = class_maps(peer)[-1].vocabulary_version == before
    assert still_encoding, "the encoding ended before the checks: make COLD_CLASSES larger"
    assert max(state_seconds) < 1.0, f"get_state took {max(state_seconds):.1f} s during a text encoding"
    ours = [array for array in diagnostics.decoded()[seen:] if any(kv.value == NODE for status in array.status for kv in status.values if kv.key == "node")]
    assert len(ours) >= 2, "diagnostics stalled during a text encoding"

    assert peer.wait_for(lambda: len(class_maps(peer)[-1].class_names) == COLD_CLASSES, 120.0)
    assert peer.call(vocabulary_service, SetVocabulary.Request(labels=VOCABULARY)).success


def test_50_lifecycle_cycles_while_frames_and_vocabulary_changes_flow(peer, lifecycle, images, node, vocabulary_service):
    stop = threading.Event()
    responses = []

    def stream_frames():
        index = 100
        while not stop.is_set():
            images.publish(raw_image(index))
            index += 1
            time.sleep(0.1)

    def change_vocabularies():
        # 40 mask topics made and dropped per change: publishers destroyed while the executor spins.
        vocabularies = (["wall", "floor", "door"] + [f"stress class {i}" for i in range(40)], VOCABULARY)
        while not stop.is_set():
            responses.append(peer.call(vocabulary_service, SetVocabulary.Request(labels=vocabularies[len(responses) % 2])))
            time.sleep(0.05)

    threads = [threading.Thread(target=stream_frames), threading.Thread(target=change_vocabularies)]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    try:
        for cycle in range(50):
            for transition in ("deactivate", "cleanup", "configure", "activate"):
                assert lifecycle.change(transition), f"cycle {cycle}: {transition} failed\n{node.log_text()[-2000:]}"
    finally:
        stop.set()
        for thread in threads:
            thread.join(60.0)
    cycles_s = time.monotonic() - start
    print(f"50 cycles in {cycles_s:.1f} s; vocabulary changes: {Counter('applied' if r.success else r.message for r in responses)}")

    assert node.process.poll() is None and lifecycle.state() == "active"
    assert all(r.success or "not configured" in r.message or "cleaned up" in r.message for r in responses), {r.message for r in responses}
    assert sum(r.success for r in responses) > 0
    assert peer.wait_for(lambda: counters(peer)["in_flight"] == 0, 20.0)
    final = counters(peer)
    assert final["inference_threads"] == 1 and counters_add_up(final), final
    assert final["processed"] > 0 and final["ignored"] > 0

    names_by_version = {}
    for response in (r for r in responses if r.success):
        assert names_by_version.setdefault(response.vocabulary_version, list(response.class_names)) == list(response.class_names)
    versions = [class_map.vocabulary_version for class_map in class_maps(peer)]
    assert versions == sorted(versions), "a vocabulary version went back"
    assert "Traceback" not in node.log_text()
