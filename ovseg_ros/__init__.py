"""ovseg_ros: open-vocabulary semantic segmentation for ROS 2.

Layers, each calling only down: ``models`` (SED, SAN, checkpoints) <- ``engine`` (the
ROS-free frame path: needs torch, open_clip and numpy only) <- ``ros`` (the lifecycle node,
message conversion, parameters, launch) <- ``commands`` (demo, label_bag, check_parity).
"""

__version__ = "0.1.0"
