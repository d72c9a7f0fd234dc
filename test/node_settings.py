"""Settings and helpers shared by the tests that start the node."""

import os
import time

#: A real model in a small configuration, so node tests run on a CPU in seconds per frame.
TEST_MODEL = "san_tiny_dev"
#: Building the model (and the first text encoding) on a slow shared CPU.
NODE_READY_TIMEOUT_S = 180.0


def answer_timeout() -> float:
    """Seconds to wait for the node to answer one frame (CI machines can be slow)."""
    return float(os.environ.get("OVSEG_TEST_ANSWER_TIMEOUT", "60"))


def resend_until(publisher, msg, condition, peer, timeout: float = 20.0) -> bool:
    """Publish ``msg`` once a second until ``condition()``: a first message can be lost
    while discovery is still matching the subscription to a new publisher."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(msg)
        if peer.wait_for(condition, 1.0):
            return True
    return False
