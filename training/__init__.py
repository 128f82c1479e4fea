"""Self-supervised SPIdepth training from rosbag2 recordings (installed as ``spidepth_ros.training``).

No labels, no odometry: a PoseNet learns the ego-motion between neighbouring frames and the depth network
learns to explain the next and previous frames by view synthesis. Imports no rclpy.
"""
