"""The node's output QoS and its lifecycle publishers, made and destroyed while the executor spins."""

from __future__ import annotations

from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# Outputs are reliable (rviz and recorders default to reliable) with a short history:
# a late frame is worth less than the next one.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
# The class map is state: late subscribers get the current one.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Publishers and subscriptions made and destroyed while the executor spins get no QoS event
# handlers: a handler destroyed while an executor thread builds its wait set raises
# InvalidHandle out of spin() (rclpy's executor skips such a handler on entering it, not on
# adding it), which a vocabulary change dropping thousands of mask topics provoked.
NO_PUBLISHER_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
NO_SUBSCRIPTION_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)


def output_publisher(node: LifecycleNode, msg_type: type, topic: str, qos: QoSProfile = OUTPUT_QOS, active: bool = False):
    """A lifecycle publisher of ``node`` (silent unless active); ``active``: enabled at once
    (made while the node is active: the others were enabled by on_activate)."""
    publisher = node.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=NO_PUBLISHER_EVENTS)
    if active:
        publisher.on_activate(None)
    return publisher
