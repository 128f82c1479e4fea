"""Parameters: one table, the frozen dataclass, the shipped YAML and the launch file agree."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

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


def test_every_parameter_has_a_description():
    assert all(len(p.description) > 20 for p in PARAMETERS)


def test_frozen_and_validated():
    p = params_from_dict({"model_path": "m.onnx"})
    with pytest.raises(Exception):
        p.depth_scale = 2.0   # type: ignore[misc]
    with pytest.raises(ValueError, match="model_path is empty"):
        params_from_dict({})
    with pytest.raises(ValueError, match="backend='tensorflow' must be one of"):
        params_from_dict({"model_path": "m", "backend": "tensorflow"})
    with pytest.raises(ValueError, match="max_range"):
        params_from_dict({"model_path": "m", "min_range": 5.0, "max_range": 1.0})
    with pytest.raises(ValueError, match="cloud_stride=0"):
        params_from_dict({"model_path": "m", "cloud_stride": 0})
    assert isinstance(p, NodeParams)


def test_launch_file_is_consistent_with_the_node():
    tree = ast.parse((REPO / "launch" / "depth.launch.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for arg in ("params_file", "model", "image_topic", "camera_info_topic", "namespace", "use_sim_time", "rviz",
                "log_level"):
        assert arg in strings
    assert {"model_path", "depth_node", "spidepth_ros", "depth.yaml", "spidepth.rviz", "camera_info"} <= strings
    for name in ("model_path",):
        assert name in {p.name for p in PARAMETERS}
    setup = (REPO / "setup.py").read_text()
    assert "depth_node = spidepth_ros.ros.depth_node:main" in setup


def test_launch_file_runs_where_launch_is_installed():
    launch = pytest.importorskip("launch", reason="ros2 launch is not installable here")
    pytest.importorskip("launch_ros")
    import importlib.util

    spec = importlib.util.spec_from_file_location("depth_launch", REPO / "launch" / "depth.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert isinstance(mod.generate_launch_description(), launch.LaunchDescription)
