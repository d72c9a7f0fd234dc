"""The ROS layer: the lifecycle node and its helpers, message conversion, parameters, launch.

A frame goes from ``node`` down into :mod:`ovseg_ros.engine`, and its outputs back out
through ``conversions``; nothing in the engine or the models calls up into this layer.
"""
