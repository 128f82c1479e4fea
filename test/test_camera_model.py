"""Camera calibration validation and rectification (no ROS): each model against OpenCV's own functions."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from spidepth_ros.camera_model import CameraCalibration, Rectifier

W, H = 160, 120
K = [90.0, 0.0, 79.5, 0.0, 95.0, 59.5, 0.0, 0.0, 1.0]


def info(d, model="plumb_bob", k=K, r=None, p=None, width=W, height=H):
    p = p if p is not None else [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return SimpleNamespace(width=width, height=height, distortion_model=model, d=d, k=k,
                           r=r if r is not None else [0.0] * 9, p=p)


@pytest.fixture
def image(rng):
    return cv2.resize((rng.random((12, 16, 3)) * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)


def test_plumb_bob_with_rotation_matches_opencv(image):
    d = [-0.2, 0.05, 0.001, 0.002, 0.0]
    r = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))[0]
    p = [80.0, 0.0, 78.0, -8.0, 0.0, 80.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    calib = CameraCalibration.from_msg(info(d, r=r.ravel().tolist(), p=p))
    assert calib.problem(rectify=True) is None
    assert (calib.intrinsics.fx, calib.intrinsics.cx, calib.tx) == (80.0, 78.0, -8.0)
    assert calib.baseline == pytest.approx(0.1)
    ours = Rectifier()(image, calib)
    maps = cv2.initUndistortRectifyMap(np.array(K).reshape(3, 3), np.array(d), r,
                                       np.array(p).reshape(3, 4)[:, :3], (W, H), cv2.CV_32FC1)
    ref = cv2.remap(image, *maps, interpolation=cv2.INTER_LINEAR)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert np.median(diff) <= 1 and np.mean(diff) < 1.5        # fixed-point maps vs float maps
    assert np.mean(np.abs(image.astype(int) - ref.astype(int))) > 5 * np.mean(diff)


def test_equidistant_goes_through_fisheye(image):
    d = [0.05, -0.01, 0.002, -0.001]
    calib = CameraCalibration.from_msg(info(d, model="equidistant"))
    assert calib.problem(rectify=True) is None
    ours = Rectifier()(image, calib)
    ref = cv2.fisheye.undistortImage(image, np.array(K).reshape(3, 3), np.array(d),
                                     Knew=np.array(K).reshape(3, 3))
    plumb = Rectifier()(image, CameraCalibration.from_msg(info(d + [0.0], model="plumb_bob")))
    err = np.mean(np.abs(ours.astype(int) - ref.astype(int)))
    assert err < 1.5 and np.mean(np.abs(plumb.astype(int) - ref.astype(int))) > 3 * err


def test_maps_are_cached_per_calibration(image):
    rect = Rectifier()
    a = CameraCalibration.from_msg(info([-0.1, 0.0, 0.0, 0.0, 0.0]))
    first = rect.maps(a, W, H)
    assert rect.maps(CameraCalibration.from_msg(info([-0.1, 0.0, 0.0, 0.0, 0.0])), W, H) is first
    assert rect.maps(CameraCalibration.from_msg(info([-0.2, 0.0, 0.0, 0.0, 0.0])), W, H) is not first


@pytest.mark.parametrize("msg,needle", [
    (info([-0.2, 0.05, 0.01]), "3 distortion coefficients"),
    (info([-0.2, 0.05, 0, 0, 0], k=[0.0] * 9, p=[90.0, 0, 79.5, 0, 0, 95.0, 59.5, 0, 0, 0, 1, 0]),
     "not a camera matrix"),
    (info([1e30, 0, 0, 0, 0]), "absurd"),
    (info([float("nan"), 0, 0, 0, 0]), "non-finite"),
    (info([0.1, 0, 0, 0, 0], model="pinhole_magic"), "not supported"),
    (info([0.1, 0, 0, 0, 0], model="equidistant"), "equidistant takes 4"),
    (info([0.1, 0, 0, 0, 0], r=[2.0, 0, 0, 0, 1, 0, 0, 0, 1]), "not a rotation"),
])
def test_unusable_calibrations_are_named(msg, needle):
    calib = CameraCalibration.from_msg(msg)
    assert needle in calib.problem(rectify=True)


def test_distortion_only_matters_when_rectifying():
    calib = CameraCalibration.from_msg(info([-0.2, 0.05, 0.01]))
    assert calib.problem(rectify=False) is None           # the image is image_rect: D is not used


@pytest.mark.parametrize("msg,needle", [
    (info([0.0] * 5, k=[0.0] * 9, p=[0.0] * 12), "invalid intrinsics"),
    (info([0.0] * 5, width=0, height=0), "size 0x0"),
    # a NaN in P beside a valid K: P is what the node publishes and projects with, so it is refused, not
    # silently replaced by K (NaN > 0 is False)
    (info([0.0] * 5, p=[float("nan"), 0, 79.5, 0, 0, 95.0, 59.5, 0, 0, 0, 1, 0]), "P ["),
    (info([0.0] * 5, p=[90.0, 0, 79.5, float("nan"), 0, 95.0, 59.5, 0, 0, 0, 1, 0]), "non-finite"),
])
def test_unusable_pinhole_models_are_named_even_without_rectification(msg, needle):
    assert needle in CameraCalibration.from_msg(msg).problem(rectify=False)
