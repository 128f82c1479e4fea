"""spidepth_ros: SPIdepth monocular depth for ROS 2.

The library below the ``ros`` subpackage imports no rclpy; ``models``, ``checkpoint`` and the torch backend
import torch lazily from their own modules so that the TensorRT / ONNX Runtime paths run without it.
"""
__version__ = "0.1.0"

# In a source checkout (PYTHONPATH=<repo>, `setup.py develop`, `colcon build --symlink-install`) the
# subpackage spidepth_ros.training lives in the top-level training/ folder rather than inside this one, and
# setuptools' develop mode cannot express that mapping. Add the checkout root to this package's search path
# so `spidepth_ros.training` resolves there too. Installed copies (pip install ., colcon build) do not need it.
def _add_source_training_path() -> None:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if not os.path.isdir(os.path.join(here, "training")) and os.path.isfile(os.path.join(root, "training",
                                                                                           "__init__.py")) \
            and os.path.isfile(os.path.join(root, "package.xml")):
        __path__.append(root)  # type: ignore[name-defined]


_add_source_training_path()
del _add_source_training_path
