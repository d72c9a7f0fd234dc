"""Start the ovseg node (and optionally rviz2 and a bag).

    ros2 launch ovseg_ros segment.launch.py image_topic:=/camera/color/image_raw
    ros2 launch ovseg_ros segment.launch.py bag:=/path/to/bag rviz:=true

Arguments: ``ros2 launch ovseg_ros segment.launch.py --show-args`` (defined in
``ovseg_ros/ros/launch_config.py``, which the tests use to start the node the same way).
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch_ros.actions import Node

from ovseg_ros.ros.launch_config import (
    EXECUTABLE,
    LAUNCH_ARGUMENTS,
    NODE_NAME,
    PACKAGE,
    bag_play_command,
    check_tools_installed,
    node_parameters,
    node_remappings,
    rviz_arguments,
)


def _actions(context):
    values = {name: context.launch_configurations.get(name, default) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    check_tools_installed(values)  # before anything starts: a failed launch leaves nothing running
    share_dir = Path(get_package_share_directory(PACKAGE))
    actions = [
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
    rviz = rviz_arguments(values, share_dir)
    if rviz is not None:
        actions.append(Node(package="rviz2", executable="rviz2", arguments=rviz, namespace=values["namespace"], output="screen"))
    bag = bag_play_command(values)
    if bag is not None:
        actions.append(ExecuteProcess(cmd=bag, output="screen"))
    return actions


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=description) for name, (default, description) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
