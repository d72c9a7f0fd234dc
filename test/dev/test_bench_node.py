"""The node benchmarks run end to end on a small model (figures are not asserted, only
that every frame is accounted for and the measurements are sane)."""

import pytest

from ovseg_dev.bench_node import NodeSession, measure_latency, measure_vocabulary_change, soak
from ovseg_ros.engine.vocabulary import load_class_list

from node_settings import TEST_MODEL, answer_timeout

# The node imports message_filters, vision_msgs and diagnostic_updater (../shared/ros2 here).
pytestmark = pytest.mark.usefixtures("ros2_tools")


def test_latency_vocabulary_change_and_soak(tmp_path):
    with NodeSession(TEST_MODEL, "cpu", tmp_path) as session:
        latency = measure_latency(session, 320, 240, frames=3, timeout=answer_timeout())
        assert latency["unanswered"] == 0
        assert latency["end_to_end_p50"] > latency["model_p50"] > 0

        change = measure_vocabulary_change(session, load_class_list("ade150")[:30])
        assert change["cold_ms"] > 0 and change["cached_ms"] > 0

        result = soak(session, frames=90, changes=9, rate_hz=30.0)
        assert result["vocabulary_changes"] == 9
        # Every frame that reached the node is accounted for. Frames can still be lost in
        # the subscription queue while a vocabulary change creates mask publishers (about
        # 0.5% in the long soak, more on a loaded 2-core machine): reported, not hidden.
        assert result["frames_processed"] + result["frames_dropped"] + result["frames_failed"] == result["frames_received"]
        assert result["frames_received"] + result["lost_before_node"] == 90
        assert result["frames_processed"] > 0 and result["frames_failed"] == 0 and result["rss_end_mb"] > 0
