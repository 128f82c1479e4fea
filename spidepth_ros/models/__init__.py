"""SPIdepth networks (PyTorch). Import cost: torch + timm."""
from .depthnet import DepthNet, build_depth_net, build_pose_net
from .posenet import PoseNet
from .sql_decoder import SelfQueryDepthHead, SelfQueryLayerError

__all__ = ["DepthNet", "PoseNet", "SelfQueryDepthHead", "SelfQueryLayerError", "build_depth_net", "build_pose_net"]
