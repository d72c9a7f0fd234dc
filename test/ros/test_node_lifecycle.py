"""Lifecycle semantics as ROS defines them, on one node process driven through its
lifecycle services: nothing published while inactive (not even the frame in flight),
configure-time parameters switchable while unconfigured, vocabulary versions and frame
counters that hold over the node's whole life.

The node runs with the test-only OVSEG_TEST_FRAME_DELAY_S, a model slower by that much,
so that a frame is in flight when a transition comes.
"""

import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovseg_ros.commands.node_driver import Peer
from ovseg_ros.msg import ClassMap, SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import TEST_MODEL, Lifecycle, answer_timeout, counters_add_up, fresh_counters, resend_until, matched_image_publisher, serving_node
from node_settings import raw_image

NAMESPACE = "lifecycle"
NODE = f"/{NAMESPACE}/ovseg"
CAMERA_TOPIC = f"/{NAMESPACE}/image_raw"
VOCABULARY = ["wall", "floor"]
FRAME_DELAY_S = 2.0
# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools", "node")
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module")
def node(tmp_path_factory, peer):
    with serving_node(peer, tmp_path_factory.mktemp("lifecycle"), NAMESPACE, "-p", "cpu_threads:=1", vocabulary=VOCABULARY, env={"OVSEG_TEST_FRAME_DELAY_S": str(FRAME_DELAY_S)},
                      class_map_topic=f"/{NAMESPACE}/segmentation/label_info") as process:
        yield process


@pytest.fixture(scope="module")
def peer():
    peer = Peer("lifecycle_peer")
    peer.record(f"/{NAMESPACE}/segmentation/info", SegmentationInfo)
    peer.record(f"/{NAMESPACE}/segmentation/label", Image)
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


def answered(peer, topic: str, index: int) -> bool:
    return any(m.header.stamp.sec == 2000 + index for m in peer.recordings[f"/{NAMESPACE}/segmentation/{topic}"].decoded())


def counters(peer) -> dict[str, int]:
    return fresh_counters(peer, peer.recordings["/diagnostics"], NODE)


def settled_counters(peer) -> dict[str, int]:
    """The counters once no frame is in flight: up to three re-sent copies can be in the
    stream (being inferred, prepared, waiting), each FRAME_DELAY_S long."""
    assert peer.wait_for(lambda: counters(peer)["in_flight"] == 0, 4 * FRAME_DELAY_S + 10.0), counters(peer)
    return counters(peer)


def set_parameters(peer, **values):
    client = peer.node.create_client(SetParameters, f"{NODE}/set_parameters")
    return peer.call(client, SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])).results


def class_maps(peer) -> list:
    return peer.recordings[f"/{NAMESPACE}/segmentation/label_info"].decoded()


def test_nothing_is_published_while_inactive_not_even_the_frame_in_flight(peer, lifecycle, images):
    assert resend_until(images, raw_image(1), lambda: answered(peer, "info", 1), peer, answer_timeout() + FRAME_DELAY_S)
    before = settled_counters(peer)  # the re-sent copies are done with
    images.publish(raw_image(2))  # taken by the worker at once: in flight for FRAME_DELAY_S
    time.sleep(FRAME_DELAY_S / 3)
    images.publish(raw_image(3))  # waits in the slot behind it
    time.sleep(0.2)
    assert lifecycle.change("deactivate")
    time.sleep(FRAME_DELAY_S + 1.0)
    after = counters(peer)
    assert not any(answered(peer, topic, index) for topic in ("info", "label") for index in (2, 3)), "published while inactive"
    # Both ignored, and neither dropped: frame 2 had been taken by the worker when frame 3 came.
    assert {name: after[name] - before[name] for name in ("received", "processed", "dropped", "ignored", "in_flight")} == {
        "received": 2, "processed": 0, "dropped": 0, "ignored": 2, "in_flight": 0,
    }

    images.publish(raw_image(4))  # inactive: ignored on arrival
    assert lifecycle.change("activate")
    assert resend_until(images, raw_image(5), lambda: answered(peer, "info", 5), peer, answer_timeout() + FRAME_DELAY_S)
    assert not any(answered(peer, "info", index) for index in (2, 3, 4))


def test_configure_time_parameters_change_only_while_unconfigured(peer, lifecycle, node):
    describe = peer.node.create_client(DescribeParameters, f"{NODE}/describe_parameters")
    descriptor = peer.call(describe, DescribeParameters.Request(names=["model"])).descriptors[0]
    assert not descriptor.read_only and "unconfigured" in descriptor.additional_constraints

    refused = set_parameters(peer, smoothing="none")[0]
    assert not refused.successful and "unconfigured" in refused.reason
    assert lifecycle.change("deactivate") and lifecycle.change("cleanup")
    assert lifecycle.state() == "unconfigured"

    # A model the registry does not have: accepted while unconfigured, and the configure that reads it fails clearly.
    assert set_parameters(peer, model="no_such_model")[0].successful
    assert not lifecycle.change("configure") and lifecycle.state() == "unconfigured"
    assert "no_such_model" in node.log_text().split("configure failed")[-1].splitlines()[0]
    assert not set_parameters(peer, smoothing="sometimes")[0].successful, "choices are still checked"

    log_before = len(node.log_text())
    assert all(result.successful for result in set_parameters(peer, model=TEST_MODEL, smoothing="none"))
    assert lifecycle.change("configure") and lifecycle.change("activate")
    assert "temporal smoothing: none" in node.log_text()[log_before:]
    refused = set_parameters(peer, model="no_such_model")[0]
    assert not refused.successful


def test_vocabulary_version_never_goes_back_over_cleanup_and_configure(peer, lifecycle):
    client = peer.node.create_client(SetVocabulary, f"{NODE}/set_vocabulary")
    changed = peer.call(client, SetVocabulary.Request(labels=["door", "window"]))
    assert changed.success
    assert lifecycle.change("deactivate") and lifecycle.change("cleanup")
    assert lifecycle.change("configure") and lifecycle.change("activate")
    assert peer.wait_for(lambda: class_maps(peer)[-1].vocabulary_version > changed.vocabulary_version, 10.0)
    reconfigured = class_maps(peer)[-1]
    assert list(reconfigured.class_names) == ["door", "window"], "configure reads the vocabulary parameter the service kept in sync"
    restored = peer.call(client, SetVocabulary.Request(labels=VOCABULARY))
    assert restored.success and restored.vocabulary_version > reconfigured.vocabulary_version

    assert peer.wait_for(lambda: class_maps(peer)[-1].vocabulary_version == restored.vocabulary_version, 10.0)
    names_by_version = {}
    for class_map in class_maps(peer):
        assert names_by_version.setdefault(class_map.vocabulary_version, list(class_map.class_names)) == list(class_map.class_names)
    versions = [class_map.vocabulary_version for class_map in class_maps(peer)]
    assert versions == sorted(versions)


def test_frame_counters_hold_over_cleanup_and_configure(peer, lifecycle, images):
    before = counters(peer)
    assert before["received"] > 0 and counters_add_up(before)
    assert lifecycle.change("deactivate") and lifecycle.change("cleanup")
    unconfigured = counters(peer)
    assert unconfigured["inference_threads"] == 0
    assert lifecycle.change("configure") and lifecycle.change("activate")
    assert resend_until(images, raw_image(6), lambda: answered(peer, "info", 6), peer, answer_timeout() + FRAME_DELAY_S)
    after = settled_counters(peer)
    assert all(after[name] >= before[name] for name in ("received", "processed", "dropped", "failed", "ignored")), (before, after)
    assert after["processed"] > before["processed"] and after["in_flight"] == 0 and counters_add_up(after)
    assert after["inference_threads"] == 1


def test_a_transition_the_state_does_not_have_is_refused_and_the_node_goes_on(lifecycle):
    """A request out of turn (a lifecycle manager's, say) answers failure and changes nothing;
    the node serves on and exits with 0 (rclpy 7 raised it out of the service callback, which
    stopped the executor: exit code 1)."""
    state = lifecycle.state()
    out_of_turn = "configure" if state == "inactive" else "activate"  # neither starts from that state
    assert not lifecycle.change(out_of_turn)
    assert lifecycle.state() == state
