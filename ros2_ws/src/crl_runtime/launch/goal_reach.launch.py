"""
Launch goal_reach (and, with sim:=true, the MuJoCo sim robot; with rviz:=true, RViz).

    ros2 launch crl_runtime goal_reach.launch.py policy:=policy.onnx robot:=reacher
    ros2 launch crl_runtime goal_reach.launch.py policy:=policy.onnx sim:=true

The logic lives in crl_runtime.launch_plan.plan (tested without `launch`); this file only
declares its arguments and turns its node list into launch_ros actions.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from crl_runtime.launch_plan import ARGUMENTS, plan
from launch import LaunchDescription


def _nodes(context, *_args, **_kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    share = Path(get_package_share_directory("crl_runtime"))
    return [Node(package=n.package, executable=n.executable, name=n.name,
                 parameters=n.parameters, arguments=n.arguments, output="screen",
                 emulate_tty=True)
            for n in plan(values, share)]


def generate_launch_description():
    """Declare the arguments of crl_runtime.launch_plan.ARGUMENTS and build the nodes."""
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()),
        OpaqueFunction(function=_nodes),
    ])
