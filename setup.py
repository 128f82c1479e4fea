"""ament_python package spidepth_ros. The top-level training/ folder is installed as spidepth_ros.training."""
import os
from glob import glob

from setuptools import setup

PACKAGE = "spidepth_ros"
SOURCE = os.path.dirname(os.path.realpath(__file__))

# `colcon build --symlink-install` runs `setup.py develop` in a build folder holding symlinks to the package
# directories it knows about; the training/ folder (mapped to spidepth_ros.training) is not among them.
# Link it there too, so the mapping resolves (and spidepth_ros/__init__.py finds it for the develop install).
if not os.path.exists("training") and os.path.isdir(os.path.join(SOURCE, "training")):
    os.symlink(os.path.join(SOURCE, "training"), "training")

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE, f"{PACKAGE}.models", f"{PACKAGE}.runtime", f"{PACKAGE}.ros", f"{PACKAGE}.tools",
              f"{PACKAGE}.training"],
    package_dir={f"{PACKAGE}.training": "training"},
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (os.path.join("share", PACKAGE, "launch"), glob("launch/*.launch.py")),
        (os.path.join("share", PACKAGE, "config"), glob("config/*.yaml") + glob("config/*.rviz")),
        # the demo weights too, so an installed `spidepth-demo` finds them (spidepth_ros.ros.demo.find_demo_weights)
        (os.path.join("share", PACKAGE, "models"), glob("models/*.onnx") + glob("models/*.json") +
         glob("models/*.pt")),
    ],
    # the node's own needs (OpenCV: resize, rectification, compressed images); the backends are extras
    install_requires=["setuptools", "numpy", "PyYAML", "tqdm", "opencv-python-headless"],
    extras_require={
        "test": ["pytest"],
        "torch": ["torch", "torchvision", "timm>=1.0.9"],
        "onnx": ["onnx", "onnxruntime"],
        "train": ["torch", "torchvision", "timm>=1.0.9", "rosbags>=0.10", "tensorboard", "opencv-python-headless"],
    },
    zip_safe=True,
    maintainer="spidepth_ros maintainers",
    maintainer_email="spidepth-ros@users.noreply.github.com",
    description="SPIdepth self-supervised monocular depth for ROS 2: TensorRT/ONNX Runtime node, point clouds, "
                "and training on rosbag2 recordings.",
    license="MIT",
    entry_points={
        "console_scripts": [
            "depth_node = spidepth_ros.ros.entry:depth_node_main",
            "spidepth-infer = spidepth_ros.infer_cli:main",
            "spidepth-export = spidepth_ros.export:main",
            "spidepth-train = spidepth_ros.training.cli:main",
            "spidepth-eval = spidepth_ros.training.evaluate:main",
            "spidepth-synth = spidepth_ros.synth:main",
            "spidepth-demo = spidepth_ros.ros.demo:main",
            "spidepth-folder-to-bag = spidepth_ros.tools.rgbd_folder_to_bag:main",
            # underscore aliases so `ros2 run spidepth_ros spidepth_train` style names work too
            "spidepth_train = spidepth_ros.training.cli:main",
            "spidepth_eval = spidepth_ros.training.evaluate:main",
            "spidepth_export = spidepth_ros.export:main",
        ],
    },
)
