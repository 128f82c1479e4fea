"""Geometry: intrinsics under crop/resize, back-projection, and numpy/torch parity of the shared conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spidepth_ros import geometry as g
from spidepth_ros.training import warping as tw


def _blob_image(intr: g.PinholeIntrinsics, point: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """A float image of ``intr``'s size with a Gaussian spot centred on the projection of ``point`` (pixel centres at
    integers, the convention every module states)."""
    u0, v0 = g.project_points(point[None], intr.matrix())[0]
    v, u = np.mgrid[0:intr.height, 0:intr.width].astype(np.float64)
    return np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _centroid(image: np.ndarray) -> np.ndarray:
    v, u = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.array([(u * image).sum(), (v * image).sum()]) / image.sum()


@pytest.mark.parametrize("crop", [None, g.CropBox(80, 40, 480, 400)])
def test_crop_resize_and_flip_intrinsics_find_known_points_in_the_resized_image(crop):
    """A 3-D point drawn into a 640x480 image, cropped and resized by cv2 (what the node and training do to the
    pixels), then mirrored: the projection through the derived intrinsics lands on the spot's centroid within
    0.03 px. image_proc's ``cx * s`` misses by 0.5 (1 - s) px (0.4 px at s = 0.2), so this decides the convention."""
    import cv2

    intr = g.PinholeIntrinsics(500.0, 480.0, 320.3, 241.7, 640, 480)
    box = crop or g.CropBox(0, 0, 640, 480)
    out_w, out_h = 128, 96                                  # s = 0.2 without the crop
    small = intr.crop_and_resize(box, out_w, out_h)
    for point in (np.array([0.4, -0.3, 4.0]), np.array([-0.9, 0.5, 6.0])):
        big = _blob_image(intr, point, sigma=12.0)
        resized = cv2.resize(big[box.y0:box.y0 + box.height, box.x0:box.x0 + box.width], (out_w, out_h),
                             interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(_centroid(resized), g.project_points(point[None], small.matrix())[0], atol=0.03)
        corner_cx = (intr.cx - box.x0) * out_w / box.width          # image_proc's formula: measurably off
        assert abs(_centroid(resized)[0] - (small.fx * point[0] / point[2] + corner_cx)) > 0.1
        # the mirror image: pixel u -> W-1-u, a point's X -> -X
        mirrored = np.ascontiguousarray(resized[:, ::-1])
        flipped_point = point * np.array([-1.0, 1.0, 1.0])
        np.testing.assert_allclose(_centroid(mirrored), g.project_points(flipped_point[None],
                                                                         small.flipped().matrix())[0], atol=0.03)


def test_normalized_intrinsics_survive_resize_and_flip():
    intr = g.PinholeIntrinsics(593.92, 614.4, 511.5, 159.5, 1024, 320)
    k = intr.normalized()
    assert k[0, 0] == pytest.approx(0.58) and k[1, 1] == pytest.approx(1.92)
    assert k[0, 2] == pytest.approx(0.5) and k[1, 2] == pytest.approx(0.5)     # the exact centre of the image
    back = g.PinholeIntrinsics.from_normalized(k, 640, 192)
    want = intr.resized(640, 192)
    assert (back.fx, back.fy, back.cx, back.cy) == pytest.approx((want.fx, want.fy, want.cx, want.cy))
    off_centre = g.PinholeIntrinsics(500.0, 500.0, 300.0, 100.0, 640, 192)
    np.testing.assert_allclose(off_centre.flipped().normalized()[0, 2], 1 - off_centre.normalized()[0, 2])


def test_axis_angle_round_trip_and_numpy_torch_parity():
    rng = np.random.default_rng(3)
    vectors = [a * d / np.linalg.norm(d) for a, d in zip((1e-9, 1e-4, 0.3, 2.0, 3.1), rng.normal(size=(5, 3)))]
    vectors.append(np.array([0.0, np.pi - 1e-6, 0]))
    for v in vectors:
        r = g.axis_angle_to_matrix(v)
        # an independent statement of a rotation: orthonormal, det 1, v on its axis, angle |v| from the trace
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(r @ v, v, atol=1e-9)
        assert np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)) == pytest.approx(np.linalg.norm(v), abs=1e-6)
        np.testing.assert_allclose(g.matrix_to_axis_angle(r), v, atol=1e-6)
        got = tw.axis_angle_to_matrix(torch.tensor(v)[None])[0].numpy()
        np.testing.assert_allclose(got, r, atol=1e-9)
    # the torch form has a useful gradient at zero: d R / d v_z at 0 is the generator of z rotations
    v = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    tw.axis_angle_to_matrix(v)[0, 1, 0].backward()
    assert float(v.grad[0, 2]) == pytest.approx(1.0)


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
