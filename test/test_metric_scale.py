"""Depth a costmap can use, without ROS: the online camera-height scale, the flying-pixel filter against exact
synthetic geometry, the height band, the scale-consistency metric, and batched inference equal to one by one."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from spidepth_ros.depth_filters import flying_pixel_mask
from spidepth_ros.ground_scale import GroundPlane
from spidepth_ros.metric_scale import MAX_FRAME_RATIO, RELOCK_FRAMES, CameraHeightScale, height_above_floor
from spidepth_ros.metrics import off_surface_mask, scale_consistency
from spidepth_ros.synth import CAMERA_HEIGHT, SynthConfig, render_sequence


@pytest.fixture(scope="module")
def drive():
    cfg = SynthConfig(width=320, height=96, frames=30, seed=200)
    return cfg, list(render_sequence(cfg))


def test_camera_height_scale_recovers_a_jittering_model_scale(drive):
    """A 'model' that predicts the truth divided by 3.7, jittering by 5 % per frame: the applied scale is 3.7
    within 3 %, and it moves less from frame to frame than each frame's own floor fit."""
    cfg, frames = drive
    rng = np.random.default_rng(0)
    tracker = CameraHeightScale(CAMERA_HEIGHT, model_scale=1.0)
    assert tracker.scale == 1.0                                   # the model's scale until a floor is seen
    applied, fitted = [], []
    for i, f in enumerate(frames):
        report = tracker.update(f.depth / 3.7 * np.exp(rng.normal(0, 0.05)), cfg.intrinsics, float(i))
        applied.append(report.scale)
        fitted.append(report.frame_scale)
    assert report.source == "floor" and report.floor_share == 1.0 and report.age_s == 0.0
    assert np.median(applied[5:]) == pytest.approx(3.7, rel=0.03)
    assert np.std(np.diff(np.log(applied[5:]))) < 0.5 * np.std(np.diff(np.log(fitted[5:])))
    assert report.floor is not None and report.floor.distance == CAMERA_HEIGHT
    assert np.degrees(np.arccos(report.floor.normal[1])) < 3.0    # the synthetic camera is level


def test_wrong_fits_are_refused_missing_floors_held_and_a_new_scale_relocks(drive):
    cfg, frames = drive
    tracker = CameraHeightScale(CAMERA_HEIGHT)
    for i in range(8):
        tracker.update(frames[i].depth / 2.0, cfg.intrinsics, float(i))
    assert tracker.scale == pytest.approx(2.0, rel=0.03)
    # one frame whose 'floor' says twice the scale (a table top): refused, the scale stays
    report = tracker.update(frames[8].depth / 4.0, cfg.intrinsics, 8.0)
    assert report.frame_scale == pytest.approx(4.0, rel=0.03) and report.source == "held"
    assert report.scale == pytest.approx(2.0, rel=0.03) and 4.0 / 2.0 > MAX_FRAME_RATIO
    # no floor at all (the lower image is a wall): the last scale is held, with its age
    wall = np.full_like(frames[9].depth, 3.0)
    report = tracker.update(wall, cfg.intrinsics, 12.5)
    assert report.frame_scale is None and report.source == "held" and report.age_s == pytest.approx(12.5 - 7.0)
    assert report.scale == pytest.approx(2.0, rel=0.03)
    # the model's scale really changed: RELOCK_FRAMES consistent frames re-lock onto it
    for i in range(RELOCK_FRAMES):
        report = tracker.update(frames[10 + i].depth / 4.0, cfg.intrinsics, 13.0 + i)
    assert report.scale == pytest.approx(4.0, rel=0.03) and report.source == "floor"


def test_height_above_floor_is_the_formula():
    # camera 1.5 m above a level floor: a point on the floor has height 0, one 0.5 m up (y = 1.0) 0.5
    floor = GroundPlane(np.array([0.0, 1.0, 0.0]), 1.5, 1.0)
    pts = np.array([[0.3, 1.5, 4.0], [-1.0, 1.0, 2.0], [0.0, -0.5, 9.0]])
    np.testing.assert_allclose(height_above_floor(pts, floor), [0.0, 0.5, 2.0])
    # pitched 20 deg down: the floor normal tilts towards +z; a floor point still has height 0
    a = np.radians(20)
    n = np.array([0.0, np.cos(a), np.sin(a)])
    on_floor = np.array([0.7, 0.0, 0.0]) + 1.5 / (n @ n) * n + np.cross(n, [1.0, 0.0, 0.0]) * 2.0
    assert height_above_floor(on_floor[None], GroundPlane(n, 1.5, 1.0))[0] == pytest.approx(0.0, abs=1e-12)


def test_flying_pixel_mask_marks_both_sides_of_a_step_only():
    d = np.full((5, 8), 2.0, np.float32)
    d[:, 5:] = 10.0                                # a step between columns 4 and 5
    d[0, 0] = np.nan
    mask = flying_pixel_mask(d, 0.1)
    assert mask[:, 4:6].all() and not mask[:, :4].any() and not mask[:, 6:].any()
    ramp = np.tile(np.linspace(2.0, 2.8, 8, dtype=np.float32), (5, 1))     # 5.7 % per pixel at most
    assert not flying_pixel_mask(ramp, 0.1).any() and flying_pixel_mask(ramp, 0.05).any()


def test_default_edge_filter_removes_flying_points_and_keeps_the_surfaces(drive):
    """Exact synthetic geometry with the veil a smooth depth map has at every occlusion edge (the true depth
    area-averaged to the network's output size and upsampled back, as output_resolution input does): the default
    filter removes >= 80 % of the points off every true surface and keeps >= 95 % of those on one."""
    from spidepth_ros.ros.params import PARAMETERS

    default = next(p.default for p in PARAMETERS if p.name == "edge_filter")
    cfg, frames = drive
    off_before = off_after = on_before = on_after = 0
    for f in frames:
        gt = f.depth.astype(np.float32)
        veil = cv2.resize(cv2.resize(gt, (160, 48), interpolation=cv2.INTER_AREA), (320, 96),
                          interpolation=cv2.INTER_LINEAR)
        veil[veil > 80] = np.nan
        off = off_surface_mask(veil, gt, cfg.intrinsics)
        valid = np.isfinite(veil)
        kept = valid & ~flying_pixel_mask(veil, default)
        off_before += off.sum()
        off_after += (off & kept).sum()
        on_before += (valid & ~off).sum()
        on_after += (kept & ~off).sum()
    assert off_before > 0.03 * (off_before + on_before)          # the veil is there to remove
    assert 1 - off_after / off_before >= 0.80, (off_before, off_after)
    assert on_after / on_before >= 0.95, (on_before, on_after)


def test_off_surface_mask_against_a_hand_made_veil():
    """A fronto-parallel wall at 5 m and one pixel pulled to 3 m in front of it: only that pixel is off."""
    from spidepth_ros.geometry import PinholeIntrinsics

    intr = PinholeIntrinsics(50.0, 50.0, 15.5, 9.5, 32, 20)
    gt = np.full((20, 32), 5.0)
    pred = gt.copy()
    pred[10, 16] = 3.0
    pred[4, 4] = 5.1                                              # 2 % off along its ray: on the surface
    mask = off_surface_mask(pred, gt, intr)
    assert mask.sum() == 1 and mask[10, 16]


def test_scale_consistency_with_true_motion(drive):
    """True depth warped by the true motion has consistent scale (log ratio ~0); multiplying each frame by a known
    factor shows exactly that factor's frame-to-frame ratio."""
    cfg, frames = drive
    depths = [f.depth for f in frames[:12]]
    rel = [np.linalg.inv(frames[i + 1].world_T_cam) @ frames[i].world_T_cam for i in range(11)]
    exact = scale_consistency(depths, rel, cfg.intrinsics)
    assert exact["pairs"] == 11 and exact["p95_abs_log_ratio"] < 0.001
    factors = np.exp(np.random.default_rng(0).normal(0, 0.1, 12))
    jitter = scale_consistency([d * k for d, k in zip(depths, factors)], rel, cfg.intrinsics)
    want = np.percentile(np.abs(np.diff(np.log(factors))), 95)
    assert jitter["p95_abs_log_ratio"] == pytest.approx(want, abs=0.01)
    # the motion applied the wrong way round breaks the warp: the 'same surfaces' no longer agree
    backwards = [np.linalg.inv(r) for r in rel]
    assert scale_consistency(depths, backwards, cfg.intrinsics)["p95_abs_log_ratio"] > 20 * exact["p95_abs_log_ratio"]
    # without motion: the ratio of medians
    assert scale_consistency([np.full((4, 4), 2.0), np.full((4, 4), 3.0)])["p95_abs_log_ratio"] == \
        pytest.approx(np.log(1.5))


def test_batched_inference_equals_one_by_one(small_checkpoint, tmp_path, rng):
    """Two cameras in one batch give exactly what each gives alone (ONNX Runtime with a dynamic batch, torch)."""
    from spidepth_ros.export import export_onnx
    from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator
    from spidepth_ros.runtime.torch_backend import TorchDepthEstimator

    onnx_path, _ = export_onnx(small_checkpoint, tmp_path / "dyn.onnx", dynamic_batch=True, max_batch=4)
    frames = [(rng.random((120, 400, 3)) * 255).astype(np.uint8), (rng.random((96, 320, 3)) * 255).astype(np.uint8)]
    for est in (OnnxRuntimeDepthEstimator(onnx_path), TorchDepthEstimator(small_checkpoint)):
        with est:
            assert est.max_batch > 1
            together = est.infer_batch(frames, "input")
            alone = [est.infer(f, "input") for f in frames]
            for a, b in zip(together, alone):
                assert a.depth.shape == b.depth.shape
                np.testing.assert_allclose(a.depth, b.depth, rtol=1e-5, atol=1e-6)
