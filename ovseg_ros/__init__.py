"""ovseg_ros: open-vocabulary semantic segmentation for ROS 2.

The engine (``models``, ``vocabulary``, ``segmenter``, ``smoothing``, ``rendering``) needs
only torch, open_clip and numpy; the ROS layer (``node``) sits on top of it.
"""

__version__ = "0.1.0"
