"""Translation parallax from images (training/parallax.py) against scenes whose geometry is known."""
import numpy as np
import pytest

from spidepth_ros.synth import Scene, SynthConfig
from spidepth_ros.training import parallax as px

CFG = SynthConfig(width=320, height=96, horizontal_fov_deg=70.0)


def _yaw(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@pytest.fixture(scope="module")
def scene_renderer():
    scene = Scene(np.random.default_rng(3), 60, np.zeros((1, 2)))
    intr = CFG.intrinsics
    u, v = np.meshgrid(np.arange(CFG.width), np.arange(CFG.height))
    rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u, float)], -1).reshape(-1, 3)

    def render(origin, rot):
        colour, depth = scene.render(np.asarray(origin, float), rays @ rot.T)
        rgb = (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(CFG.height, CFG.width, 3)
        return rgb, depth.reshape(CFG.height, CFG.width)

    return render, intr.matrix()


def test_kabsch_recovers_a_rotation_exactly():
    rng = np.random.default_rng(0)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = 0.3
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r_true = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx    # Rodrigues
    a = rng.normal(size=(50, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(px.rotation_from_rays(a, a @ r_true.T), r_true, atol=1e-12)


def _true_correspondences(corners, depth0, k, step):
    """Where the true geometry sends pixels ``corners [N, 2]`` of frame 0 after a sideways ``step`` (metres)."""
    z = depth0[np.round(corners[:, 1]).astype(int), np.round(corners[:, 0]).astype(int)]
    x = (corners[:, 0] - k[0, 2]) / k[0, 0] * z
    y = (corners[:, 1] - k[1, 2]) / k[1, 1] * z
    return np.stack([k[0, 0] * (x - step) / z + k[0, 2], k[1, 1] * y / z + k[1, 2]], axis=1)


def test_sideways_translation_parallax_matches_the_true_geometry(scene_renderer):
    """Tracked parallax against the same measure on exact correspondences from the true depth. Corners sit on
    occlusion edges, where the depth under a corner is ambiguous, so the tolerance is wide; the pure-rotation and
    half-step cases below pin the behaviour down."""
    import cv2

    render, k = scene_renderer
    step = 1.2
    rgb0, depth0 = render([0, 0, 0], _yaw(0.0))
    rgb1, _ = render([step, 0, 0], _yaw(0.0))
    tracked, _ = px.track(cv2.cvtColor(rgb0, cv2.COLOR_RGB2GRAY), cv2.cvtColor(rgb1, cv2.COLOR_RGB2GRAY))
    oracle = px.rotation_compensated_parallax(tracked, _true_correspondences(tracked, depth0, k, step), k)
    m = px.pair_motion(rgb0, rgb1, k)
    assert oracle.parallax_px > 0.5                  # the scene has depth variation to see
    assert 0.45 * oracle.parallax_px < m.parallax_px < 1.3 * oracle.parallax_px
    half = px.pair_motion(rgb0, render([step / 2, 0, 0], _yaw(0.0))[0], k)
    assert half.parallax_px == pytest.approx(m.parallax_px / 2, rel=0.35)      # parallax ~ baseline
    # a rotation on top of the same step changes the rotation found, not the parallax
    rgb2, _ = render([step, 0, 0], _yaw(2.0))
    m2 = px.pair_motion(rgb0, rgb2, k)
    assert m2.parallax_px == pytest.approx(m.parallax_px, rel=0.35)
    assert m2.rotation_deg > m.rotation_deg + 1.0
    # a pure rotation leaves only the tracking noise, well below the step's parallax
    rgb3, _ = render([0, 0, 0], _yaw(3.0))
    m3 = px.pair_motion(rgb0, rgb3, k)
    assert m3.tracks >= 50
    assert m3.rotation_deg == pytest.approx(3.0, abs=0.15)
    assert m3.parallax_px < min(0.35, m.parallax_px / 2)


def test_choose_source_takes_the_nearest_frame_with_enough_parallax():
    table = np.full((6, 3), np.nan, np.float32)     # parallax[i, o-1] between frame i and i + o
    table[2] = [0.5, 1.0, 2.0]                       # from 2: to 3, 4, 5
    table[1] = [0.4, 1.5, np.nan]                    # from 1: to 2, 3
    table[0] = [0.2, 0.3, 0.9]                       # from 0: to 1, 2, 3
    assert px.choose_source(table, 2, +1, 1.0) == 4
    assert px.choose_source(table, 2, +1, 1.5) == 5
    assert px.choose_source(table, 2, +1, 2.5) is None
    assert px.choose_source(table, 3, -1, 1.2) == 1   # parallax[1, 1] = 1.5 (frame 1 -> 3)
    assert px.choose_source(table, 3, -1, 0.9) == 1
    allowed = np.array([True, False, True, True, True, True])
    assert px.choose_source(table, 3, -1, 0.9, allowed) == 0   # frame 1 excluded -> frame 0 (0.9 px)
