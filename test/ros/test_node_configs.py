"""The node in other configurations, each in its own process: compressed input with
camera_info, lifecycle without autostart, missing and corrupt weights, a slow model
under a 30 Hz camera."""

import time

import cv2
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ovseg_ros.ros.bags import synthetic_frame
from ovseg_ros.msg import SegmentationInfo
from ovseg_ros.srv import SetVocabulary

from node_settings import NODE_READY_TIMEOUT_S, RELIABLE, answered, answer_timeout, raw_image, resend_until, serving_node, stamped, started_node, stopped, wait_until_serving

# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools")

def test_compressed_input_with_camera_info(tmp_path, peer):
    with serving_node(peer, tmp_path, "cam2", "-p", "input_transport:=compressed", "-p", "use_camera_info:=true", ready_topic="/cam2/image_raw/compressed") as node:
        infos = peer.record("/cam2/segmentation/info", SegmentationInfo)
        camera_infos = peer.record("/cam2/segmentation/camera_info", CameraInfo)
        images = peer.node.create_publisher(CompressedImage, "/cam2/image_raw/compressed", RELIABLE)
        calibration = peer.node.create_publisher(CameraInfo, "/cam2/camera_info", RELIABLE)
        assert peer.wait_for(lambda: images.get_subscription_count() and calibration.get_subscription_count(), 10.0)

        corrupt = stamped(CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"), 1)
        deadline = time.monotonic() + answer_timeout()
        while "cannot decode compressed image" not in node.log_text() and time.monotonic() < deadline:
            calibration.publish(stamped(CameraInfo(width=160, height=120), 1))  # frames are processed with their own camera_info
            images.publish(corrupt)
            peer.wait_for(lambda: "cannot decode compressed image" in node.log_text(), 1.0)
        assert "cannot decode compressed image" in node.log_text()
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(synthetic_frame(2, 120, 160), cv2.COLOR_RGB2BGR))
        good = stamped(CompressedImage(format="jpeg", data=jpeg.tobytes()), 2)
        deadline = time.monotonic() + answer_timeout()
        while not answered(infos, 2) and time.monotonic() < deadline:
            calibration.publish(stamped(CameraInfo(width=160, height=120, distortion_model="plumb_bob"), 2))  # a camera sends one per frame
            images.publish(good)
            peer.wait_for(lambda: answered(infos, 2), 2.0)
        assert answered(infos, 2) and not answered(infos, 1)
        assert peer.wait_for(lambda: answered(camera_infos, 2), 5.0)
        republished = next(m for m in camera_infos.decoded() if m.header.stamp.sec == 2002)
        assert (republished.width, republished.height, republished.header.frame_id) == (160, 120, "cam")


def test_lifecycle_without_autostart(tmp_path, peer):
    node = started_node(tmp_path, "lc", "-p", "autostart:=false")
    try:
        get_state = peer.node.create_client(GetState, "/lc/ovseg/get_state")
        change = peer.node.create_client(ChangeState, "/lc/ovseg/change_state")
        assert peer.call(get_state, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
        refused = peer.call(peer.node.create_client(SetVocabulary, "/lc/ovseg/set_vocabulary"), SetVocabulary.Request(labels=["a"]))
        assert not refused.success and "not configured" in refused.message

        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert peer.call(change, ChangeState.Request(transition=Transition(id=transition)), timeout=NODE_READY_TIMEOUT_S).success
        infos = peer.record("/lc/segmentation/info", SegmentationInfo)
        wait_until_serving(peer, node, "/lc/image_raw")
        images = peer.node.create_publisher(Image, "/lc/image_raw", RELIABLE)
        assert peer.wait_for(lambda: images.get_subscription_count() > 0, 10.0)
        assert resend_until(images, raw_image(1), lambda: answered(infos, 1), peer, answer_timeout())

        assert peer.call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))).success
        images.publish(raw_image(2))
        time.sleep(2.0)
        assert not answered(infos, 2), "an inactive node ignores frames"
        assert peer.call(get_state, GetState.Request()).current_state.id == State.PRIMARY_STATE_INACTIVE
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_bad_weights_leave_the_node_up_and_saying_why(tmp_path, peer, problem):
    weights = tmp_path / "model_final.pth"
    if problem == "corrupt":
        weights.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    node = started_node(tmp_path, f"w_{problem}", weights=str(weights))
    try:
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        expected = "checkpoint not found" if problem == "missing" else "cannot read checkpoint"

        def error_reported() -> bool:
            return any(expected in s.message for a in diagnostics.decoded() for s in a.status if s.level == s.ERROR)

        assert peer.wait_for(error_reported, NODE_READY_TIMEOUT_S), node.log_text()[-2000:]
        response = peer.call(peer.node.create_client(SetVocabulary, f"/w_{problem}/ovseg/set_vocabulary"), SetVocabulary.Request(labels=["a"]))
        assert not response.success and expected in response.message
        assert node.process.poll() is None and expected in node.log_text()
    finally:
        assert stopped(node) == 0, node.log_text()[-2000:]


def test_slow_model_under_a_30hz_camera_answers_the_newest_frame(tmp_path, peer):
    # Full-HD frames make even the tiny model slower than the camera.
    with serving_node(peer, tmp_path, "fast_cam", "-p", "input_short_edge:=1080"):
        infos = peer.record("/fast_cam/segmentation/info", SegmentationInfo)
        diagnostics = peer.record("/diagnostics", DiagnosticArray)
        images = peer.node.create_publisher(Image, "/fast_cam/image_raw", RELIABLE)
        assert peer.wait_for(lambda: images.get_subscription_count() > 0, 10.0)
        frames = [raw_image(i, 1080, 1920) for i in range(60)]
        for frame in frames:
            images.publish(frame)
            time.sleep(1 / 30)
        assert peer.wait_for(lambda: answered(infos, 59), answer_timeout()), "the newest frame is answered"
        time.sleep(1.0)
        decoded = infos.decoded()
        stamps = [m.header.stamp.sec - 2000 for m in decoded]
        assert stamps == sorted(stamps) and len(stamps) < 45, f"answered {stamps}"
        model_ms = max(m.model_ms for m in decoded)
        assert max(m.queue_ms for m in decoded) < 2 * model_ms + 200, "frames never wait behind a backlog"

        def dropped() -> int:
            values = [int(kv.value) for a in diagnostics.decoded() for s in a.status if s.name == "ovseg: segmentation" for kv in s.values if kv.key == "frames_dropped"]
            return max(values, default=0)

        assert peer.wait_for(lambda: dropped() > 0, 3.0), "dropped frames are counted"
        assert dropped() + len(stamps) <= 60


def test_input_qos_can_be_overridden(tmp_path, peer):
    with serving_node(peer, tmp_path, "qos", "-p", "qos_overrides./qos/image_raw.subscription.reliability:=reliable"):
        infos = peer.record("/qos/segmentation/info", SegmentationInfo)
        best_effort = peer.node.create_publisher(Image, "/qos/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        time.sleep(1.0)
        for _ in range(5):
            best_effort.publish(raw_image(1))
            time.sleep(0.2)
        assert not answered(infos, 1), "a reliable subscription does not take best-effort frames"
        reliable = peer.node.create_publisher(Image, "/qos/image_raw", RELIABLE)
        assert peer.wait_for(lambda: reliable.get_subscription_count() > 0, 10.0)
        assert resend_until(reliable, raw_image(2), lambda: answered(infos, 2), peer, answer_timeout())


def test_max_rate_limits_processing(tmp_path, peer):
    with serving_node(peer, tmp_path, "slow_rate", "-p", "max_rate_hz:=2.0"):
        infos = peer.record("/slow_rate/segmentation/info", SegmentationInfo)
        images = peer.node.create_publisher(Image, "/slow_rate/image_raw", RELIABLE)
        assert peer.wait_for(lambda: images.get_subscription_count() > 0, 10.0)
        start_time = time.monotonic()
        index = 0
        while time.monotonic() - start_time < 3.0:
            images.publish(raw_image(index))
            index += 1
            time.sleep(1 / 30)
        time.sleep(1.0)
        answered_count = len(infos.messages)
        assert 3 <= answered_count <= 2.0 * 4 + 1, f"{answered_count} frames answered in ~4 s at max_rate_hz 2"
