"""Every ROS parameter of the depth node, declared in one place and frozen into :class:`NodeParams`.

The table :data:`PARAMETERS` is the single source: the node declares from it (with descriptions, ranges and
read-only flags), ``config/depth.yaml`` documents the same names, and a test checks they agree.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from ..runtime import BACKENDS
from ..runtime.preprocess import CROP_MODES

OUTPUT_RESOLUTIONS = ("network", "input")
INPUT_TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple = ()
    min_value: Optional[float] = None
    max_value: Optional[float] = None
    read_only: bool = True       # changing these needs a new model/engine: restart the node


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "Model to run: a TensorRT .engine, an .onnx (with its .onnx.json sidecar), our "
              ".pt checkpoint or an official SPIdepth weights folder."),
    ParamSpec("backend", "auto", "Inference backend; auto = TensorRT if available for .onnx/.engine, else ONNX "
              "Runtime; torch for checkpoints.", choices=BACKENDS),
    ParamSpec("device", "auto", "Device for onnxruntime/torch: auto, cpu, cuda or cuda:N."),
    ParamSpec("precision", "fp16", "TensorRT engine / torch CUDA precision.", choices=("fp16", "fp32")),
    ParamSpec("engine_cache_dir", "", "Where TensorRT engines built from ONNX are cached (default: beside the "
              "ONNX). Engines are keyed by ONNX hash, size, precision, TensorRT version and GPU."),
    ParamSpec("threads", 0, "CPU threads for ONNX Runtime (0 = its default).", min_value=0, max_value=256),
    ParamSpec("input_transport", "raw", "Subscribe to sensor_msgs/Image on 'image' (raw) or "
              "sensor_msgs/CompressedImage on 'image/compressed' (jpeg/png).", choices=INPUT_TRANSPORTS),
    ParamSpec("rectify", True, "If camera_info has non-zero D, undistort the input with (K, D, R, P) before "
              "inference; set false when the image topic is already rectified (image_rect).", read_only=False),
    ParamSpec("crop", "none", "Before resizing to the network size: none (stretch) or center (crop to the "
              "network's aspect ratio). CameraInfo is transformed to match.", choices=CROP_MODES),
    ParamSpec("output_resolution", "network", "Publish depth at the network output size (H/2 x W/2, cheaper "
              "clouds) or at the input image size (pairs with depth_image_proc's xyzrgb).",
              choices=OUTPUT_RESOLUTIONS),
    ParamSpec("depth_scale", 1.0, "Factor from model units to metres. Monocular self-supervised weights are "
              "scale-ambiguous: calibrate it (e.g. spidepth-eval's median scale) or use metric weights.",
              min_value=1e-6, max_value=1e6, read_only=False),
    ParamSpec("min_range", 0.1, "Depths below this (metres, after scaling) are published as NaN.",
              min_value=0.0, max_value=1e4, read_only=False),
    ParamSpec("max_range", 80.0, "Depths above this (metres, after scaling) are published as NaN.",
              min_value=0.0, max_value=1e4, read_only=False),
    ParamSpec("publish_cloud", True, "Publish the organized PointCloud2 on depth/points.", read_only=False),
    ParamSpec("cloud_stride", 1, "Use every Nth pixel in x and y for the cloud (decimation for navigation).",
              min_value=1, max_value=64, read_only=False),
    ParamSpec("cloud_color", True, "Add depth_image_proc's packed float rgb field (point_step 32).",
              read_only=False),
    ParamSpec("publish_colored", True, "Publish a colourised bgr8 depth image on depth/colored for viewing.",
              read_only=False),
    ParamSpec("lazy", True, "Skip inference while no output has a subscriber.", read_only=False),
    ParamSpec("frame_id_override", "", "Frame to stamp outputs with if the input header's frame_id is empty "
              "(never invented otherwise)."),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages (0 disables).",
              min_value=0.0, max_value=3600.0),
    ParamSpec("warn_throttle", 5.0, "Minimum seconds between repeated warnings of the same kind.",
              min_value=0.0, max_value=3600.0),
)


@dataclass(frozen=True)
class NodeParams:
    model_path: str
    backend: str
    device: str
    precision: str
    engine_cache_dir: str
    threads: int
    input_transport: str
    rectify: bool
    crop: str
    output_resolution: str
    depth_scale: float
    min_range: float
    max_range: float
    publish_cloud: bool
    cloud_stride: int
    cloud_color: bool
    publish_colored: bool
    lazy: bool
    frame_id_override: str
    diagnostics_period: float
    warn_throttle: float

    def validate(self) -> None:
        """Raise ValueError with the fix for any bad combination."""
        if not self.model_path:
            raise ValueError("parameter model_path is empty: set it to a .engine, .onnx, .pt or weights folder")
        for spec in PARAMETERS:
            value = getattr(self, spec.name)
            if spec.choices and value not in spec.choices:
                raise ValueError(f"parameter {spec.name}={value!r} must be one of {list(spec.choices)}")
            if spec.min_value is not None and not (spec.min_value <= value <= spec.max_value):
                raise ValueError(f"parameter {spec.name}={value} must lie in [{spec.min_value}, {spec.max_value}]")
        if self.max_range <= self.min_range:
            raise ValueError(f"max_range ({self.max_range}) must be greater than min_range ({self.min_range})")


assert [f.name for f in fields(NodeParams)] == [p.name for p in PARAMETERS], "PARAMETERS and NodeParams diverged"


def declare_parameters(node) -> NodeParams:
    """Declare all parameters on ``node`` (rclpy) and return their values frozen and validated."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    for spec in PARAMETERS:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices:
            desc.additional_constraints = f"one of {list(spec.choices)}"
        if spec.min_value is not None:
            if isinstance(spec.default, bool):
                pass
            elif isinstance(spec.default, int):
                desc.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value),
                                                   step=1)]
            else:
                desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min_value),
                                                                to_value=float(spec.max_value), step=0.0)]
        values[spec.name] = node.declare_parameter(spec.name, spec.default, desc).value
    params = NodeParams(**values)
    params.validate()
    return params


def params_from_dict(overrides: dict) -> NodeParams:
    """Defaults updated with ``overrides`` (for tests, benches and tools without ROS)."""
    values = {spec.name: spec.default for spec in PARAMETERS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}")
    values.update(overrides)
    params = NodeParams(**values)
    params.validate()
    return params
