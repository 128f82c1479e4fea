"""Every ROS parameter of the depth node, declared in one place and frozen into :class:`NodeParams`.

The table :data:`PARAMETERS` is the single source: the node declares from it (with descriptions, ranges and
read-only flags), ``config/depth.yaml`` documents the same names, and a test checks they agree.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Optional

from ..encodings import DEFAULT_MAX_IMAGE_BYTES
from ..runtime import BACKENDS, PRECISIONS
from ..runtime.preprocess import CROP_MODES

OUTPUT_RESOLUTIONS = ("network", "input")
INPUT_TRANSPORTS = ("raw", "compressed")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
CAMERA_NAMESPACE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*)?$")


class ParameterError(ValueError):
    """A parameter value cannot be used; the message names the parameter and what it accepts."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple = ()
    min_value: Optional[float] = None
    max_value: Optional[float] = None
    read_only: bool = True       # changing these needs a new model/engine: restart the node

    @property
    def type_name(self) -> str:
        return {bool: "a boolean (true/false)", int: "an integer", float: "a double (write 80.0, not 80)",
                str: "a string", list: "a string array (write [front, rear])"}[type(self.default)]


SCALE_SOURCES = ("model", "camera_height")

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "Model to run: a TensorRT .engine, an .onnx (with its .onnx.json sidecar), our "
              ".pt checkpoint or an official SPIdepth weights folder. Setting it while the node runs loads the new "
              "model in the background and swaps it in between frames; a model that fails to load is refused "
              "and the old one keeps running.", read_only=False),
    ParamSpec("autostart", True, "Configure and activate at start-up. false leaves the managed (lifecycle) node "
              "unconfigured for a lifecycle manager (nav2_lifecycle_manager, `ros2 lifecycle set`)."),
    ParamSpec("backend", "auto", "Inference backend; auto = TensorRT if available for .onnx/.engine, else ONNX "
              "Runtime; torch for checkpoints.", choices=BACKENDS),
    ParamSpec("device", "auto", "Device: auto, cpu, cuda or cuda:N (the GPU for TensorRT, onnxruntime and "
              "torch)."),
    ParamSpec("precision", "auto", "auto: fp16 on TensorRT and torch CUDA; on ONNX Runtime's CPU the model's INT8 "
              "version (spidepth-export --precision int8) when it has one and the CPU has integer dot-product "
              "instructions (VNNI/AMX, ARM dotprod), else fp32 (the log says which). fp32, fp16 or int8 force one.",
              choices=PRECISIONS),
    ParamSpec("engine_cache_dir", "", "Where TensorRT engines built from ONNX are cached (default: beside the "
              "ONNX). Engines are keyed by ONNX hash, size, precision, TensorRT version and GPU."),
    ParamSpec("threads", 0, "CPU threads for ONNX Runtime (0 = its default).", min_value=0, max_value=256),
    ParamSpec("input_transport", "raw", "Subscribe to sensor_msgs/Image on 'image' (raw) or "
              "sensor_msgs/CompressedImage on 'image/compressed' (jpeg/png).", choices=INPUT_TRANSPORTS),
    ParamSpec("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES, "Largest decoded colour image accepted, in bytes (at "
              "least 3 per pixel: the RGB image the network takes; a 16-bit or alpha PNG counts its decoded size). "
              "A larger image is dropped with a warning before anything is allocated: a 249 KB PNG can decode to "
              "16000x16000. The default is 8192x8192 RGB, above every real camera.", min_value=1, max_value=1 << 40,
              read_only=False),
    ParamSpec("rectify", False, "Undistort the input with camera_info (K, D, R, P; equidistant via cv2.fisheye) "
              "before inference. Off by default: image_rect + its camera_info is the convention, and undistorting "
              "a rectified image twice bends it. Turn on only for image_raw with a distorted camera_info.",
              read_only=False),
    ParamSpec("crop", "none", "Before resizing to the network size: none (stretch) or center (crop to the "
              "network's aspect ratio). CameraInfo is transformed to match.", choices=CROP_MODES),
    ParamSpec("output_resolution", "network", "Publish depth at the network output size (H/2 x W/2, cheaper "
              "clouds) or at the input image size (pairs with depth_image_proc's xyzrgb).",
              choices=OUTPUT_RESOLUTIONS),
    ParamSpec("cameras", [""], "Camera namespaces, relative to the node's: each gets <ns>/image (or "
              "<ns>/image/compressed) and <ns>/camera_info in and <ns>/depth/{image,camera_info,points,colored} out, "
              "with its own calibration, scale and diagnostics. One model serves them all (frames that arrive "
              "together are inferred as one batch where the model takes one: spidepth-export --dynamic-batch). "
              "[\"\"] = one camera on the node's own topics."),
    ParamSpec("scale_source", "model", "Where metres come from: model = depth_scale (or the model's own); "
              "camera_height = every frame's floor plane fitted in the predicted depth against the camera's known "
              "height (camera_height, or base_frame through TF), filtered over time (a wrong fit is refused, the "
              "last good scale held while no floor is visible; /diagnostics shows scale, spread and floor share).",
              choices=SCALE_SOURCES, read_only=False),
    ParamSpec("camera_height", 0.0, "Height of the camera's optical centre above the floor in metres, for "
              "scale_source camera_height (0 = from TF with base_frame).", min_value=0.0, max_value=100.0,
              read_only=False),
    ParamSpec("base_frame", "", "With scale_source camera_height and camera_height 0: the frame whose z = 0 "
              "plane is the floor (e.g. base_footprint); the camera's height is read from TF (needs tf2_ros)."),
    ParamSpec("edge_filter", 0.1, "Flying-pixel filter for depth/points: drop a pixel whose depth jumps by more "
              "than this fraction (of the nearer depth) to a neighbour: the interpolated veil between a near edge "
              "and the wall behind. 0 = off. 0.1 removed 84 % of off-surface points and kept 97 % of the good ones "
              "on synthetic scenes (docs/benchmarks.md).", min_value=0.0, max_value=10.0, read_only=False),
    ParamSpec("edge_filter_depth", False, "Also set the flying pixels to NaN in depth/image (off: depth keeps "
              "every pixel, only the cloud is filtered).", read_only=False),
    ParamSpec("min_height", -100.0, "Cloud points lower than this above the fitted floor (metres) are dropped, when "
              "the floor is known (scale_source camera_height). For a nav2 costmap 0.05 keeps the floor out of the "
              "obstacles.", min_value=-1e4, max_value=1e4, read_only=False),
    ParamSpec("max_height", 100.0, "Cloud points higher than this above the fitted floor (metres) are dropped, "
              "when the floor is known.", min_value=-1e4, max_value=1e4, read_only=False),
    ParamSpec("depth_scale", 0.0, "Factor from model units to metres; 0 = the model's own scale (its sidecar's "
              "or checkpoint's depth_scale, 1.0 if it has none). Monocular self-supervised weights are "
              "scale-ambiguous: calibrate it (spidepth-eval --camera-height, or its median scale).",
              min_value=0.0, max_value=1e6, read_only=False),
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
    ParamSpec("adapt", False, "Adapt the depth network to this camera while running: a worker process trains "
              "it self-supervised (the default training recipe) on keyframes of the first camera's images and "
              "every adapt_steps_per_swap steps offers the weights; a guard scores them on held-out keyframes and "
              "only better ones are swapped in between two frames, like a model_path change. Needs the torch "
              "weights: model_path a .pt, or adapt_model."),
    ParamSpec("adapt_model", "", "With adapt: the .pt checkpoint the worker starts from when model_path is not "
              "one (an .onnx exported from it); accepted weights are then exported to ONNX for the swap."),
    ParamSpec("adapt_device", "auto", "With adapt: where the worker trains (auto = cuda when the node infers on a "
              "GPU, else cpu)."),
    ParamSpec("adapt_max_share", 0.5, "With adapt: the share of wall time the worker may compute (it sleeps the "
              "rest, and on the CPU runs at a lower OS priority than inference).", min_value=0.01, max_value=1.0),
    ParamSpec("adapt_buffer_frames", 120, "With adapt: keyframes kept in memory (a frame becomes one when its "
              "measured translation parallax to the last keyframe reaches the recipe's 1.2 px; the oldest are "
              "dropped). Every 5th is held out for the guard.", min_value=3, max_value=100000),
    ParamSpec("adapt_steps_per_swap", 20, "With adapt: training steps between two candidates the guard judges.",
              min_value=1, max_value=1000000),
    ParamSpec("adapt_guard_tolerance", 0.0, "With adapt: how much higher (a fraction) a candidate's photometric "
              "error on the held-out keyframes may be than the running model's and still be swapped in (0: no "
              "worse); negative asks for an improvement (-0.1: at least 10 % lower). Its depth spread and scale "
              "are checked too.",
              min_value=-0.9, max_value=10.0),
    ParamSpec("adapt_learning_rate", 1e-4, "With adapt: the worker's Adam learning rate (the default training "
              "recipe's optim.lr); a resumed adaptation state takes this value too.", min_value=0.0,
              max_value=100.0),
    ParamSpec("adapt_dir", "", "With adapt: where accepted models are written (adapted_NNNN.pt, and .onnx with "
              "its sidecar) and where the ~/save_adapted service writes adapted_state.pt (the last accepted "
              "weights with the training state: optimiser, counters, keyframes); empty = "
              "~/.ros/spidepth_adapted/<node name>. After a restart, model_path (or adapt_model) set to "
              "adapted_state.pt continues the adaptation; set to adapted_NNNN.pt it starts a new one from those "
              "weights."),
    ParamSpec("frame_id_override", "", "Frame to stamp outputs with if the input header's frame_id is empty "
              "(never invented otherwise)."),
    ParamSpec("input_timeout", 3.0, "Seconds without an input image after which /diagnostics reports WARN "
              "'no images for N s' (while an output has subscribers).", min_value=0.1, max_value=3600.0),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages (0 disables).",
              min_value=0.0, max_value=3600.0),
    ParamSpec("warn_throttle", 5.0, "Minimum seconds between repeated warnings of the same kind.",
              min_value=0.0, max_value=3600.0),
)


@dataclass(frozen=True)
class NodeParams:
    model_path: str
    autostart: bool
    backend: str
    device: str
    precision: str
    engine_cache_dir: str
    threads: int
    input_transport: str
    max_image_bytes: int
    rectify: bool
    crop: str
    output_resolution: str
    cameras: list
    scale_source: str
    camera_height: float
    base_frame: str
    edge_filter: float
    edge_filter_depth: bool
    min_height: float
    max_height: float
    depth_scale: float
    min_range: float
    max_range: float
    publish_cloud: bool
    cloud_stride: int
    cloud_color: bool
    publish_colored: bool
    lazy: bool
    adapt: bool
    adapt_model: str
    adapt_device: str
    adapt_max_share: float
    adapt_buffer_frames: int
    adapt_steps_per_swap: int
    adapt_guard_tolerance: float
    adapt_learning_rate: float
    adapt_dir: str
    frame_id_override: str
    input_timeout: float
    diagnostics_period: float
    warn_throttle: float

    def validate(self, require_model: bool = True) -> None:
        """Raise :class:`ParameterError` naming the parameter and its allowed values for any bad value.

        ``require_model=False`` accepts an empty model_path (a lifecycle manager may set it before configure).
        """
        if require_model and not self.model_path:
            raise ParameterError("parameter model_path is empty: set it to a .engine, .onnx, .pt or weights folder")
        for spec in PARAMETERS:
            value = getattr(self, spec.name)
            # bool is an int in Python: compare exact types so that `cloud_stride: true` is refused too
            if type(value) is not type(spec.default):
                raise ParameterError(f"parameter {spec.name}={value!r} must be {spec.type_name}")
            if spec.choices and value not in spec.choices:
                raise ParameterError(f"parameter {spec.name}={value!r} must be one of {list(spec.choices)}")
            if spec.min_value is not None and not (spec.min_value <= value <= spec.max_value):
                raise ParameterError(f"parameter {spec.name}={value} must lie in [{spec.min_value}, "
                                     f"{spec.max_value}]")
        if not DEVICE_PATTERN.match(self.device):
            raise ParameterError(f"parameter device={self.device!r} must be one of {DEVICE_CHOICES}")
        if not DEVICE_PATTERN.match(self.adapt_device):
            raise ParameterError(f"parameter adapt_device={self.adapt_device!r} must be one of {DEVICE_CHOICES}")
        if self.adapt and not (self.adapt_model or not self.model_path or
                               self.model_path.endswith((".pt", ".pth"))):
            raise ParameterError(f"parameter adapt needs the model's torch weights: model_path {self.model_path} is "
                                 "not a .pt checkpoint, so set adapt_model to the .pt it was exported from")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or \
                not all(isinstance(c, str) and CAMERA_NAMESPACE.match(c) for c in self.cameras):
            raise ParameterError(f"parameter cameras={self.cameras!r} must list distinct relative namespaces "
                                 "(letters, digits, _ and /; [\"\"] for the node's own topics)")
        if self.scale_source == "camera_height" and self.camera_height <= 0 and not self.base_frame:
            raise ParameterError("parameter scale_source=camera_height needs camera_height (metres, > 0) or "
                                 "base_frame (the camera's height from TF)")
        if self.max_height <= self.min_height:
            raise ParameterError(f"parameter max_height ({self.max_height}) must be greater than min_height "
                                 f"({self.min_height})")
        if self.max_range <= self.min_range:
            raise ParameterError(f"parameter max_range ({self.max_range}) must be greater than min_range "
                                 f"({self.min_range})")


assert [f.name for f in fields(NodeParams)] == [p.name for p in PARAMETERS], "PARAMETERS and NodeParams diverged"


def declare_parameters(node) -> NodeParams:
    """Declare all parameters on ``node`` (rclpy) and return their values frozen and checked.

    Raises :class:`ParameterError` (one line: the parameter and what it accepts) for a value of the wrong type
    or outside its range; an empty model_path is left for configure to refuse.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values = {}
    for spec in PARAMETERS:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if isinstance(spec.default, list):
            desc.type = ParameterType.PARAMETER_STRING_ARRAY
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
        try:
            value = node.declare_parameter(spec.name, spec.default, desc).value
            values[spec.name] = list(value) if isinstance(spec.default, list) else value
        except InvalidParameterTypeException:
            raise ParameterError(f"parameter {_given(node, spec.name)} must be {spec.type_name}") from None
        except InvalidParameterValueException:
            raise ParameterError(f"parameter {_given(node, spec.name)} must lie in [{spec.min_value}, "
                                 f"{spec.max_value}]") from None
    params = NodeParams(**values)
    params.validate(require_model=False)
    return params


def _given(node, name: str) -> str:
    """``name=value`` as the user gave it (command line or YAML), for messages; ``name`` when unknown."""
    override = getattr(node, "_parameter_overrides", {}).get(name)     # rclpy keeps the overrides it was given
    return f"{name}={override.value!r}" if override is not None else name


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
