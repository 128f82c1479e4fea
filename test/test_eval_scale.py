"""spidepth-eval end to end on a synthetic bag: the constant-depth baseline beside the model, and depth_scale
from the camera's known height (the committed demo weights know these scenes; their calibrated scale is 1.057)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from spidepth_ros.synth import CAMERA_HEIGHT, SynthConfig, write_bag
from spidepth_ros.training.evaluate import main as eval_main

DEMO = "models/demo_small.pt"


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    from spidepth_ros.export import export_onnx

    out, meta = export_onnx(DEMO, tmp_path_factory.mktemp("demo") / "demo.onnx")
    return out, meta


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bag") / "synth"
    write_bag(SynthConfig(width=320, height=96, frames=10, seed=404), path)
    return path


def test_eval_prints_the_constant_baseline_and_the_model_beats_it(demo_onnx, bag, tmp_path, capsys):
    onnx_path, _ = demo_onnx
    assert eval_main(["--model", str(onnx_path), "--bags", str(bag), "--depth-topic", "/camera/depth",
                      "--max-depth", "40", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert "constant depth" in out and "the model is better than a flat map" in out
    assert summary["abs_rel"] < 0.7 * summary["const_abs_rel"]
    # the baseline, recomputed independently from the ground truth of the first frame
    from spidepth_ros.bagio import iter_images

    gt = next(iter(iter_images([bag], "/camera/depth", depth=True)))[1]
    g = gt[(gt > 1e-3) & (gt < 40)].astype(np.float64)
    per_frame = np.genfromtxt(tmp_path / "ev" / "per_frame.csv", delimiter=",", names=True)
    assert per_frame["const_abs_rel"][0] == pytest.approx(np.mean(np.abs(g - np.median(g)) / g), rel=1e-6)


def test_scale_from_camera_height_and_written_to_the_sidecar(demo_onnx, bag, tmp_path, capsys):
    import shutil

    onnx_path, meta = demo_onnx
    copy = tmp_path / "demo.onnx"
    shutil.copy(onnx_path, copy)
    shutil.copy(f"{onnx_path}.json", f"{copy}.json")
    assert eval_main(["--model", str(copy), "--bags", str(bag), "--camera-height", str(CAMERA_HEIGHT),
                      "--write-scale"]) == 0
    out = capsys.readouterr().out
    scale = float(out.split("depth_scale ")[1].split()[0])
    # the demo weights' scale was calibrated by median scaling on another synthetic bag: 1.057
    assert scale == pytest.approx(meta.depth_scale, rel=0.15)
    from spidepth_ros.runtime import read_sidecar

    assert read_sidecar(copy).depth_scale == pytest.approx(scale, rel=1e-3)
