"""Shared fixtures: a small trained-or-random model exported to ONNX, rclpy on an isolated domain."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

# Keep DDS traffic on this machine and away from other test runs.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

try:
    import rclpy  # noqa: F401
    HAVE_RCLPY = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_RCLPY = False

requires_ros2 = pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy is not importable here")
SMALL = "small_r18_96x320"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A random-init small-preset checkpoint (our format), with a PoseNet."""
    import torch

    from spidepth_ros.checkpoint import save_checkpoint
    from spidepth_ros.models import build_depth_net, build_pose_net
    from spidepth_ros.presets import get_preset

    torch.manual_seed(0)
    preset = get_preset(SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, preset, build_depth_net(preset).eval(), build_pose_net(preset))
    return path


@pytest.fixture(scope="session")
def small_onnx(small_checkpoint, tmp_path_factory) -> Path:
    from spidepth_ros.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(small_checkpoint, out)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def ros_context():
    """One rclpy context for the whole session (init/shutdown are process-global and slow)."""
    if not HAVE_RCLPY:
        pytest.skip("rclpy is not importable here")
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture(scope="session")
def second_onnx(tmp_path_factory) -> Path:
    """Another small-preset ONNX (different random weights, depth_scale 3.0 in its checkpoint and sidecar)."""
    import torch

    from spidepth_ros.checkpoint import save_checkpoint
    from spidepth_ros.export import export_onnx
    from spidepth_ros.models import build_depth_net, build_pose_net
    from spidepth_ros.presets import get_preset

    torch.manual_seed(1)
    preset = get_preset(SMALL)
    folder = tmp_path_factory.mktemp("second")
    save_checkpoint(folder / "second.pt", preset, build_depth_net(preset).eval(), build_pose_net(preset),
                    depth_scale=3.0)
    out, _ = export_onnx(folder / "second.pt", folder / "second.onnx")
    return out


@pytest.fixture(scope="session")
def wrong_shape_onnx(small_onnx, tmp_path_factory) -> Path:
    """An ONNX that takes the small preset's input but returns full-resolution depth (its sidecar says half)."""
    import dataclasses

    import onnx
    from onnx import TensorProto, helper

    from spidepth_ros.files import file_sha256
    from spidepth_ros.runtime.metadata import read_sidecar, write_sidecar

    meta = read_sidecar(small_onnx)
    h, w = meta.input_height, meta.input_width
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["depth"], axes=[1], keepdims=1)], "wrong",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, h, w])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out = tmp_path_factory.mktemp("wrong") / "wrong.onnx"
    onnx.save(model, out)
    write_sidecar(out, dataclasses.replace(meta, model_sha256=file_sha256(out)))
    return out
