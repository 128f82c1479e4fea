"""spidepth_ros: SPIdepth monocular depth for ROS 2.

The library below the ``ros`` subpackage imports no rclpy; ``models``, ``checkpoint`` and the torch backend
import torch lazily from their own modules so that the TensorRT / ONNX Runtime paths run without it.
"""
__version__ = "0.1.0"
