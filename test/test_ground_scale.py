"""Scale from the camera's height, on synthetic frames whose camera is exactly 1.5 m above a flat floor."""
from __future__ import annotations

import numpy as np
import pytest

from spidepth_ros.ground_scale import camera_height, fit_ground_plane, scale_from_heights
from spidepth_ros.synth import CAMERA_HEIGHT, SynthConfig, render_sequence


@pytest.fixture(scope="module")
def frames():
    cfg = SynthConfig(width=160, height=96, frames=5, seed=11)
    return cfg, list(render_sequence(cfg))


def test_height_of_the_true_depth_is_the_rendered_height(frames):
    cfg, seq = frames
    rng = np.random.default_rng(0)
    heights = [camera_height(f.depth, cfg.intrinsics, rng) for f in seq]
    assert all(h is not None for h in heights)
    np.testing.assert_allclose(heights, CAMERA_HEIGHT, rtol=0.03)


def test_scale_of_a_scaled_prediction_is_recovered(frames):
    """A 'model' that predicts the truth divided by 3.7 gets depth_scale 3.7 from the known 1.5 m height."""
    cfg, seq = frames
    rng = np.random.default_rng(1)
    heights = [camera_height(f.depth / 3.7, cfg.intrinsics, rng) for f in seq]
    assert scale_from_heights(heights, CAMERA_HEIGHT) == pytest.approx(3.7, rel=0.03)


def test_tilted_and_missing_floors(rng):
    # a wall (normal along z) is not a floor
    wall = np.stack([rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 500), np.full(500, 3.0)], 1)
    assert fit_ground_plane(wall, rng) is None
    # a floor 0.8 below a camera pitched 10 degrees down
    pitch = np.radians(10)
    floor = np.stack([rng.uniform(-2, 2, 800), np.full(800, 0.8), rng.uniform(1, 6, 800)], 1)
    rot = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    plane = fit_ground_plane(floor @ rot.T, rng)
    assert plane is not None and plane.distance == pytest.approx(0.8, rel=1e-6)
    assert np.degrees(np.arccos(plane.normal[1])) == pytest.approx(10, abs=1e-3)
    with pytest.raises(ValueError, match="no frame showed a floor"):
        scale_from_heights([None, None], 1.0)
