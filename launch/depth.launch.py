"""Launch the SPIdepth depth node (and optionally RViz).

    ros2 launch spidepth_ros depth.launch.py model:=/path/to/spidepth.onnx \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info rviz:=true

Every node parameter lives in params_file (default: the installed config/depth.yaml); `model` overrides
model_path when given. Topic arguments remap the node's relative names (image, camera_info); outputs are
depth/image, depth/camera_info, depth/points and depth/colored under `namespace`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "spidepth_ros"


def _depth_node(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": arg("use_sim_time").lower() in ("true", "1", "yes")}
    if arg("model"):
        overrides["model_path"] = arg("model")
    image_topic = arg("image_topic")
    return [Node(
        package=PACKAGE, executable="depth_node", name="depth_node", namespace=arg("namespace"), output="screen",
        parameters=[arg("params_file"), overrides],
        remappings=[("image", image_topic), ("image/compressed", f"{image_topic}/compressed"),
                    ("camera_info", arg("camera_info_topic"))],
        # the process's default level: a "depth_node:=" logger prefix would miss "<namespace>.depth_node"
        arguments=["--ros-args", "--log-level", arg("log_level")],
    )]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "depth.yaml"]),
                              description="YAML with the depth_node parameters"),
        DeclareLaunchArgument("model", default_value="",
                              description="Model path (.engine/.onnx/.pt/weights folder); overrides model_path"),
        DeclareLaunchArgument("image_topic", default_value="image", description="Input image topic"),
        DeclareLaunchArgument("camera_info_topic", default_value="camera_info", description="Input CameraInfo"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its outputs"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (bag replay)"),
        DeclareLaunchArgument("rviz", default_value="false", description="Start RViz with config/spidepth.rviz"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="Logger level of the node process (debug: per-frame timings)"),
        OpaqueFunction(function=_depth_node),
        Node(package="rviz2", executable="rviz2", name="spidepth_rviz", output="log",
             arguments=["-d", PathJoinSubstitution([share, "config", "spidepth.rviz"])],
             parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
