"""Start the ovseg node.

    ros2 launch ovseg_ros segment.launch.py image_topic:=/camera/color/image_raw model:=sed_convnext_base

Arguments: see ``ovseg_ros/launch_config.py`` (``ros2 launch ovseg_ros segment.launch.py --show-args``).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from ovseg_ros.launch_config import (
    EXECUTABLE,
    LAUNCH_ARGUMENTS,
    NODE_NAME,
    PACKAGE,
    node_parameters,
    node_remappings,
)


def _node(context):
    values = {name: context.launch_configurations.get(name, default) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    share_dir = Path(get_package_share_directory(PACKAGE))
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=values["namespace"],
            parameters=node_parameters(values, share_dir),
            remappings=node_remappings(values),
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description) for name, (default, description) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
