"""Camera geometry shared by the node, the exporter and training (numpy; no torch, no rclpy).

Conventions (stated once, used everywhere):

* Frames: the camera **optical** frame of REP 103, x right, y down, z forward. Depth is Z in metres
  (REP 118), not ray length.
* Pixels: integer ``(u, v)`` are pixel centres, ``u`` = column, ``v`` = row; ``X = (u - cx) Z / fx``,
  ``Y = (v - cy) Z / fy``. This is image_geometry's and depth_image_proc's convention.
* Intrinsics come from CameraInfo **P** (rectified image), as image_geometry uses them.
* Resize/crop: crop box ``(x0, y0, w_c, h_c)``, then resize to ``(W, H)`` with ``sx = W / w_c``, ``sy = H / h_c``:
  ``fx' = fx sx``, ``cx' = (cx - x0 + 0.5) sx - 0.5`` (likewise y). This is where a resize (cv2.resize, any
  interpolation) puts the pixels: the small image's pixel centre ``u'`` covers the big image's ``(u' + 0.5) / sx -
  0.5``. image_proc's ResizeNode writes ``cx sx`` instead, 0.5 (1 - sx) px off (0.4 px at 480 -> 96 rows);
  ``test_geometry.py`` projects known 3-D points into a rendered and a resized image to decide. A horizontal flip
  maps ``u`` to ``W - 1 - u``, so ``cx' = W - 1 - cx``. Training uses the same functions, so the network and the
  node agree on the pinhole model.
* Normalised intrinsics (training): ``fx/W, (cx + 0.5)/W, fy/H, (cy + 0.5)/H`` (the principal point as a share
  of the image's extent, pixel edges at 0 and 1); they survive any resize unchanged and a flip maps ``cx/W`` to
  ``1 - cx/W``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class PinholeIntrinsics:
    """fx, fy, cx, cy in pixels of an image ``width x height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_projection(cls, p: "np.ndarray | list[float]", width: int, height: int) -> "PinholeIntrinsics":
        """From a CameraInfo ``P`` (12 values, row-major 3x4) or ``K`` (9 values)."""
        p = np.asarray(p, dtype=np.float64).ravel()
        if p.size == 12:
            fx, cx, fy, cy = p[0], p[2], p[5], p[6]
        elif p.size == 9:
            fx, cx, fy, cy = p[0], p[2], p[4], p[5]
        else:
            raise ValueError(f"expected 9 (K) or 12 (P) intrinsics values, got {p.size}")
        return cls(float(fx), float(fy), float(cx), float(cy), int(width), int(height))

    def is_valid(self) -> bool:
        vals = np.array([self.fx, self.fy, self.cx, self.cy])
        return bool(np.all(np.isfinite(vals)) and self.fx > 0 and self.fy > 0 and self.width > 0
                    and self.height > 0)

    def matrix(self) -> np.ndarray:
        """3x3 K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def normalized(self) -> np.ndarray:
        """4x4 normalised K: ``fx/W, (cx + 0.5)/W, fy/H, (cy + 0.5)/H`` (see the module docstring)."""
        k = np.eye(4)
        k[0, 0], k[0, 2] = self.fx / self.width, (self.cx + 0.5) / self.width
        k[1, 1], k[1, 2] = self.fy / self.height, (self.cy + 0.5) / self.height
        return k

    def pixel_matrix(self) -> np.ndarray:
        """4x4 K in pixels (the homogeneous form the training warp takes)."""
        k = np.eye(4)
        k[:3, :3] = self.matrix()
        return k

    @classmethod
    def from_normalized(cls, k: np.ndarray, width: int, height: int) -> "PinholeIntrinsics":
        return cls(float(k[0, 0] * width), float(k[1, 1] * height), float(k[0, 2] * width - 0.5),
                   float(k[1, 2] * height - 0.5), width, height)

    def flipped(self) -> "PinholeIntrinsics":
        """Intrinsics of the horizontally mirrored image (pixel ``u`` -> ``W - 1 - u``)."""
        return PinholeIntrinsics(self.fx, self.fy, self.width - 1 - self.cx, self.cy, self.width, self.height)

    def crop_and_resize(self, crop: "CropBox", out_width: int, out_height: int) -> "PinholeIntrinsics":
        """Intrinsics of the image after cropping ``crop`` and resizing to ``out_width x out_height``."""
        sx = out_width / crop.width
        sy = out_height / crop.height
        return PinholeIntrinsics(self.fx * sx, self.fy * sy, (self.cx - crop.x0 + 0.5) * sx - 0.5,
                                 (self.cy - crop.y0 + 0.5) * sy - 0.5, out_width, out_height)

    def resized(self, out_width: int, out_height: int) -> "PinholeIntrinsics":
        return self.crop_and_resize(CropBox(0, 0, self.width, self.height), out_width, out_height)


@dataclass(frozen=True)
class CropBox:
    """Pixel box ``[x0, x0 + width) x [y0, y0 + height)``."""

    x0: int
    y0: int
    width: int
    height: int


def center_crop_box(in_width: int, in_height: int, aspect: float) -> CropBox:
    """Largest centred box of aspect ``width/height = aspect`` inside the image."""
    if in_width / in_height > aspect:
        w = int(round(in_height * aspect))
        return CropBox((in_width - w) // 2, 0, w, in_height)
    h = int(round(in_width / aspect))
    return CropBox(0, (in_height - h) // 2, in_width, h)


def pixel_rays(intr: PinholeIntrinsics, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(X/Z, Y/Z)`` for the pixels ``[::stride, ::stride]``: two float32 arrays ``[h, w]``."""
    u = np.arange(0, intr.width, stride, dtype=np.float64)
    v = np.arange(0, intr.height, stride, dtype=np.float64)
    rx = ((u - intr.cx) / intr.fx).astype(np.float32)
    ry = ((v - intr.cy) / intr.fy).astype(np.float32)
    return np.broadcast_to(rx[None, :], (v.size, u.size)), np.broadcast_to(ry[:, None], (v.size, u.size))


def backproject(depth: np.ndarray, intr: PinholeIntrinsics, stride: int = 1,
                rays: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Depth ``[H, W]`` (metres, NaN invalid) -> points ``[h, w, 3]`` float32 in the optical frame.

    Invalid depth gives NaN points (depth_image_proc's convention for organised clouds).
    """
    d = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    rx, ry = rays if rays is not None else pixel_rays(intr, stride)
    out = np.empty(d.shape + (3,), dtype=np.float32)
    np.multiply(rx, d, out=out[..., 0])
    np.multiply(ry, d, out=out[..., 1])
    out[..., 2] = d
    return out


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: ``[3]`` rotation vector (radians) -> 3x3 rotation matrix, exact down to zero angle (Taylor
    coefficients below 1e-3 rad; ``training.warping.axis_angle_to_matrix`` is the torch twin)."""
    v = np.asarray(axis_angle, dtype=np.float64).reshape(3)
    theta2 = float(v @ v)
    if theta2 < 1e-6:
        cos, sinc, cosc = 1 - theta2 / 2, 1 - theta2 / 6, 0.5 - theta2 / 24
    else:
        theta = np.sqrt(theta2)
        cos, sinc, cosc = np.cos(theta), np.sin(theta) / theta, (1 - np.cos(theta)) / theta2
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return cos * np.eye(3) + sinc * skew + cosc * np.outer(v, v)


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> ``[3]`` rotation vector (radians), the inverse of :func:`axis_angle_to_matrix` for
    angles below pi (near pi the axis comes from the symmetric part)."""
    r = np.asarray(rotation, dtype=np.float64)
    angle = float(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    skew = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-7:
        return 0.5 * skew                                   # first order: R ~ I + [v]x
    if np.pi - angle < 1e-4:                                # sin ~ 0: the axis is the dominant column of R + I
        sym = (r + np.eye(3)) / 2
        axis = sym[:, int(np.argmax(np.diag(sym)))]
        axis = axis / np.linalg.norm(axis)
        return axis * angle * (1.0 if axis @ skew >= 0 else -1.0)
    return skew * (angle / (2.0 * np.sin(angle)))


def unit_rays(points_px: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Pixel points ``[N, 2]`` (u, v) -> unit-length rays ``[N, 3]`` in the optical frame (``k`` 3x3, pixels)."""
    x = (points_px[:, 0] - k[0, 2]) / k[0, 0]
    y = (points_px[:, 1] - k[1, 2]) / k[1, 1]
    rays = np.stack([x, y, np.ones_like(x)], axis=1)
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def project_points(points: np.ndarray, k: np.ndarray, min_z: float = 1e-6) -> np.ndarray:
    """Points or rays ``[N, 3]`` in the optical frame -> pixels ``[N, 2]`` (Z clamped to ``min_z``)."""
    z = np.maximum(points[:, 2], min_z)
    return np.stack([k[0, 0] * points[:, 0] / z + k[0, 2], k[1, 1] * points[:, 1] / z + k[1, 2]], axis=1)


def pose_from_axis_angle(axis_angle: np.ndarray, translation: np.ndarray, invert: bool = False) -> np.ndarray:
    """4x4 ``cam_T_cam`` from PoseNet outputs (SPIdepth/monodepth2 rule).

    ``invert=False`` (pair [I0, I+1]): ``x' = R x + t``. ``invert=True`` (pair [I-1, I0]): the exact inverse,
    ``x' = R^T (x - t)``. The result maps points from the target (frame 0) camera into the source camera.
    """
    r = axis_angle_to_matrix(axis_angle)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    m = np.eye(4)
    if invert:
        m[:3, :3] = r.T
        m[:3, 3] = -r.T @ t
    else:
        m[:3, :3] = r
        m[:3, 3] = t
    return m


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` (ROS order) -> ``[3, 3]`` rotation matrix."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation -> unit quaternion ``(x, y, z, w)`` with ``w >= 0``."""
    r = np.asarray(r, dtype=np.float64)
    w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def interpolate_pose(stamps_ns: np.ndarray, poses: np.ndarray, at_ns: int, max_gap_ns: int) -> Optional[np.ndarray]:
    """``[4, 4]`` pose at ``at_ns`` from time-sorted ``poses [N, 4, 4]``: linear in translation, spherical-linear
    in rotation between the two bracketing samples; None when they are more than ``max_gap_ns`` apart, or
    ``at_ns`` lies outside the samples (no extrapolation)."""
    if len(stamps_ns) == 0 or at_ns < stamps_ns[0] or at_ns > stamps_ns[-1]:
        return None
    j = int(np.searchsorted(stamps_ns, at_ns))
    if stamps_ns[j] == at_ns:
        return poses[j].copy()
    i = j - 1
    if stamps_ns[j] - stamps_ns[i] > max_gap_ns:
        return None
    a = (at_ns - stamps_ns[i]) / (stamps_ns[j] - stamps_ns[i])
    q0, q1 = matrix_to_quaternion(poses[i][:3, :3]), matrix_to_quaternion(poses[j][:3, :3])
    if q0 @ q1 < 0:
        q1 = -q1
    angle = np.arccos(np.clip(q0 @ q1, -1.0, 1.0))
    q = q0 if angle < 1e-9 else (np.sin((1 - a) * angle) * q0 + np.sin(a * angle) * q1) / np.sin(angle)
    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix(q)
    out[:3, 3] = (1 - a) * poses[i][:3, 3] + a * poses[j][:3, 3]
    return out
