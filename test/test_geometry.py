"""Geometry: intrinsics under crop/resize, back-projection, and numpy/torch parity of the shared conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spidepth_ros import geometry as g
from spidepth_ros.training import warping as tw


def test_crop_and_resize_matches_resize_node_formula():
    intr = g.PinholeIntrinsics(500.0, 480.0, 320.0, 240.0, 640, 480)
    out = intr.crop_and_resize(g.CropBox(80, 40, 480, 400), 320, 200)
    sx, sy = 320 / 480, 200 / 400
    assert (out.fx, out.fy, out.cx, out.cy) == pytest.approx((500 * sx, 480 * sy, (320 - 80) * sx, (240 - 40) * sy))
    assert (out.width, out.height) == (320, 200)


def test_resized_intrinsics_project_the_same_3d_point():
    intr = g.PinholeIntrinsics(400.0, 410.0, 300.5, 200.25, 640, 400)
    small = intr.resized(320, 100)
    X = np.array([1.3, -0.4, 7.0])
    u, v = intr.fx * X[0] / X[2] + intr.cx, intr.fy * X[1] / X[2] + intr.cy
    us, vs = small.fx * X[0] / X[2] + small.cx, small.fy * X[1] / X[2] + small.cy
    assert us == pytest.approx(u * 320 / 640) and vs == pytest.approx(v * 100 / 400)


def test_normalized_round_trip():
    intr = g.PinholeIntrinsics(593.92, 614.4, 512.0, 160.0, 1024, 320)
    k = intr.normalized()
    assert k[0, 0] == pytest.approx(0.58) and k[1, 1] == pytest.approx(1.92)
    assert g.PinholeIntrinsics.from_normalized(k, 640, 192).fx == pytest.approx(0.58 * 640)


def test_center_crop_box():
    box = g.center_crop_box(640, 480, 320 / 96)
    assert (box.width, box.height) == (640, 192) and box.y0 == 144


def test_backproject_formula_and_nan():
    intr = g.PinholeIntrinsics(100.0, 110.0, 20.0, 10.0, 40, 20)
    depth = np.full((20, 40), 5.0, np.float32)
    depth[3, 7] = np.nan
    pts = g.backproject(depth, intr)
    assert pts[12, 30] == pytest.approx([(30 - 20) * 5 / 100, (12 - 10) * 5 / 110, 5.0])
    assert np.all(np.isnan(pts[3, 7]))
    strided = g.backproject(depth, intr, stride=4)
    assert strided.shape == (5, 10, 3) and strided[2, 3] == pytest.approx(pts[8, 12])


def test_numpy_torch_backprojection_parity():
    rng = np.random.default_rng(0)
    intr = g.PinholeIntrinsics(120.0, 118.0, 31.5, 15.5, 64, 32)
    depth = rng.uniform(1, 30, size=(32, 64)).astype(np.float32)
    pts_np = g.backproject(depth, intr).reshape(-1, 3).T
    inv_k = torch.from_numpy(np.linalg.inv(intr.matrix())).float()[None]
    pts_t = tw.backproject(torch.from_numpy(depth)[None, None], inv_k)[0].numpy()
    np.testing.assert_allclose(pts_t, pts_np, rtol=1e-5, atol=1e-5)


def test_numpy_torch_pose_parity_and_inverse():
    rng = np.random.default_rng(1)
    aa, t = rng.normal(scale=0.2, size=3), rng.normal(size=3)
    for invert in (False, True):
        m_np = g.pose_from_axis_angle(aa, t, invert)
        m_t = tw.pose_from_axis_angle(torch.tensor(aa)[None], torch.tensor(t)[None], invert)[0].numpy()
        np.testing.assert_allclose(m_t, m_np, atol=1e-10)
    fwd = g.pose_from_axis_angle(aa, t, False)
    inv = g.pose_from_axis_angle(aa, t, True)
    np.testing.assert_allclose(fwd @ inv, np.eye(4), atol=1e-6)   # the 1e-7 in the axis normalisation
    r = g.axis_angle_to_matrix(aa)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
