"""Parameters: one table, the frozen dataclass, the shipped YAML and the launch file agree."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from conftest import requires_ros2  # noqa: F401
from spidepth_ros.ros.params import PARAMETERS, NodeParams, params_from_dict

REPO = Path(__file__).resolve().parent.parent


def test_yaml_documents_every_parameter_with_its_default():
    data = yaml.safe_load((REPO / "config" / "depth.yaml").read_text())["/**"]["ros__parameters"]
    table = {p.name: p.default for p in PARAMETERS}
    assert set(data) == set(table)
    for name, default in table.items():
        assert data[name] == default, name
    text = (REPO / "config" / "depth.yaml").read_text()
    for name in table:     # every key carries a comment line above it
        lines = text.splitlines()
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[i - 1].strip().startswith("#"), name


def test_a_live_node_declares_every_parameter_with_its_description_and_range(ros_context):
    """What `ros2 param describe` shows comes from the one table: description, read-only flag and range."""
    pytest.importorskip("rclpy")
    from rcl_interfaces.msg import ParameterType

    from spidepth_ros.ros.depth_node import DepthNode

    node = DepthNode("params_probe", namespace="params_probe", context=ros_context)
    try:
        described = {d.name: d for d in node.describe_parameters([p.name for p in PARAMETERS])}
        for spec in PARAMETERS:
            d = described[spec.name]
            assert d.description == spec.description and d.read_only == spec.read_only, spec.name
            kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
                    list: ParameterType.PARAMETER_STRING_ARRAY}[type(spec.default)]
            assert d.type == kind, spec.name
            if spec.min_value is not None and not isinstance(spec.default, bool):
                rng = (d.integer_range or d.floating_point_range)[0]
                assert (rng.from_value, rng.to_value) == (spec.min_value, spec.max_value), spec.name
            assert node.get_parameter(spec.name).value == spec.default
    finally:
        node.destroy_node()


def test_frozen_and_validated():
    p = params_from_dict({"model_path": "m.onnx"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.depth_scale = 2.0   # type: ignore[misc]
    with pytest.raises(ValueError, match="model_path is empty"):
        params_from_dict({})
    with pytest.raises(ValueError, match="backend='tensorflow' must be one of"):
        params_from_dict({"model_path": "m", "backend": "tensorflow"})
    with pytest.raises(ValueError, match="max_range"):
        params_from_dict({"model_path": "m", "min_range": 5.0, "max_range": 1.0})
    with pytest.raises(ValueError, match="cloud_stride=0"):
        params_from_dict({"model_path": "m", "cloud_stride": 0})
    with pytest.raises(ValueError, match="max_range=80 must be a double"):
        params_from_dict({"model_path": "m", "max_range": 80})
    with pytest.raises(ValueError, match="cloud_stride=True must be an integer"):
        params_from_dict({"model_path": "m", "cloud_stride": True})
    for device in ("banana", "cuda:", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device"):
            params_from_dict({"model_path": "m", "device": device})
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert params_from_dict({"model_path": "m", "device": device}).device == device
    NodeParams(**{q.name: q.default for q in PARAMETERS}).validate(require_model=False)   # set before configure
    assert isinstance(p, NodeParams) and p.model_path == "m.onnx" and p.depth_scale == 0.0 and not p.rectify


def test_launch_file_is_consistent_with_the_node():
    """Every LaunchConfiguration the launch file reads is declared, every parameter it sets exists, and it runs
    the installed depth_node executable with the shipped YAML and RViz config."""
    tree = ast.parse((REPO / "launch" / "depth.launch.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]

    def first_args(name: str) -> set:
        return {c.args[0].value for c in calls if getattr(c.func, "id", None) == name and c.args
                and isinstance(c.args[0], ast.Constant)}

    declared = first_args("DeclareLaunchArgument")
    used = first_args("LaunchConfiguration") | first_args("arg")
    assert used <= declared and used, (used - declared)
    assert {"params_file", "model", "image_topic", "camera_info_topic", "namespace", "use_sim_time", "rviz",
            "log_level"} <= declared
    subscripts = {n.slice.value for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                  and isinstance(n.slice, ast.Constant) and getattr(n.value, "id", None) == "overrides"}
    assert subscripts and subscripts <= {p.name for p in PARAMETERS} | {"use_sim_time"}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert {"depth_node", "spidepth_ros", "depth.yaml", "spidepth.rviz", "camera_info", "image"} <= strings
    setup = (REPO / "setup.py").read_text()
    assert "depth_node = spidepth_ros.ros.entry:depth_node_main" in setup


def test_launch_file_runs_where_launch_is_installed():
    launch = pytest.importorskip("launch", reason="ros2 launch is not installable here")
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("depth_launch", REPO / "launch" / "depth.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert isinstance(mod.generate_launch_description(), launch.LaunchDescription)
