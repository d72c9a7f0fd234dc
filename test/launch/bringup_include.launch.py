"""A robot's bringup as the tests picture it: segment.launch.py included under a pushed
namespace, with the whole bringup on sim time through SetParameter."""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import PushRosNamespace, SetParameter

FORWARDED_ARGUMENTS = ("image_topic", "model", "device")


def generate_launch_description():
    segment_launch = Path(get_package_share_directory("ovseg_ros")) / "launch" / "segment.launch.py"
    return LaunchDescription([
        DeclareLaunchArgument("robot_namespace", description="Namespace the bringup pushes."),
        *(DeclareLaunchArgument(name, description=f"Forwarded to segment.launch.py's {name}.") for name in FORWARDED_ARGUMENTS),
        GroupAction([
            PushRosNamespace(LaunchConfiguration("robot_namespace")),
            SetParameter(name="use_sim_time", value=True),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(segment_launch)),
                launch_arguments={name: LaunchConfiguration(name) for name in FORWARDED_ARGUMENTS}.items(),
            ),
        ]),
    ])
