"""A camera's calibration (the fields of ``sensor_msgs/CameraInfo``): validation and rectification.

Shared by the node (rclpy messages) and training/evaluation (rosbags messages): both build a
:class:`CameraCalibration` with :meth:`CameraCalibration.from_msg`, refuse it if :meth:`problem` names one,
and undistort with :class:`Rectifier` when asked to (image_proc's rectify: ``K, D`` distorted -> ``R``
rotated -> ``P`` projected). Rectification is off by default everywhere: ``image_rect`` + its camera_info is
the ROS convention, and undistorting an already-rectified image twice bends it.

Distortion models (REP 104 / image_geometry): ``plumb_bob`` and ``rational_polynomial`` go to
``cv2.initUndistortRectifyMap``, ``equidistant`` (fisheye, 4 coefficients) to ``cv2.fisheye``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .geometry import PinholeIntrinsics

#: Coefficient counts OpenCV accepts for each model (a 3-coefficient D makes OpenCV assert on every frame).
DISTORTION_COEFFICIENTS = {"plumb_bob": (4, 5, 8, 12, 14), "rational_polynomial": (8, 12, 14),
                           "equidistant": (4,)}
#: Larger coefficients are garbage: real lenses stay far below this even for rational_polynomial's k4-k6,
#: and a D of 1e30 remaps every pixel outside the image (a flat-colour frame with no warning).
MAX_ABS_DISTORTION = 1e3


@dataclass(frozen=True)
class CameraCalibration:
    """One camera's calibration; ``intrinsics`` is the pinhole model of the *rectified* image (P, else K)."""

    intrinsics: PinholeIntrinsics     # from P when P is set, else K (image_geometry's rule)
    k: np.ndarray                     # [3, 3] raw (distorted) camera matrix
    d: np.ndarray                     # [n] distortion coefficients
    distortion_model: str
    tx: float = 0.0                   # P[0, 3] = -fx' * baseline (second camera of a stereo pair), pixels*m
    ty: float = 0.0                   # P[1, 3]
    r: np.ndarray = None              # [3, 3] rectification rotation; identity when unset (all zero)
    p: np.ndarray = None              # [3, 4] projection of the rectified image; from K when unset

    @classmethod
    def from_msg(cls, msg) -> "CameraCalibration":
        """From an rclpy or rosbags CameraInfo (fields width, height, distortion_model, d, k, r, p)."""
        k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        p = np.asarray(msg.p, dtype=np.float64).ravel()
        r = np.asarray(msg.r, dtype=np.float64).ravel()
        r = r.reshape(3, 3) if r.size == 9 and np.any(r != 0) else np.eye(3)
        # image_geometry's rule: P when set, else K. A P with a NaN or inf is "set" (kept, so problem() refuses
        # it) rather than silently replaced by K: NaN > 0 is False.
        if p.size == 12 and (p[0] > 0 or not np.all(np.isfinite(p))):
            p = p.reshape(3, 4)
        else:
            p = np.hstack([k, np.zeros((3, 1))])
        intr = PinholeIntrinsics.from_projection(p, int(msg.width), int(msg.height))
        return cls(intr, k, np.asarray(msg.d, dtype=np.float64).ravel(), str(msg.distortion_model),
                   float(p[0, 3]), float(p[1, 3]), r, p)

    @property
    def baseline(self) -> float:
        """Stereo baseline in metres (positive for a right camera), from P's Tx."""
        return -self.tx / self.intrinsics.fx if self.intrinsics.fx else 0.0

    @property
    def distorted(self) -> bool:
        return bool(self.d.size and np.any(~(np.abs(self.d) <= 1e-12)))     # NaN counts as distorted (refused)

    def problem(self, rectify: bool = False) -> Optional[str]:
        """Why this calibration cannot be used (with the fix), or None. ``rectify``: D and R must be usable too."""
        w, h = self.intrinsics.width, self.intrinsics.height
        if w <= 0 or h <= 0:
            return f"camera_info has size {w}x{h}; a calibrated camera_info carries the image size"
        if not np.all(np.isfinite(self.p)):
            return (f"camera_info P {self.p.ravel().tolist()} has non-finite values: fix the camera driver's "
                    "calibration (camera_info_url)")
        if not self.intrinsics.is_valid():
            i = self.intrinsics
            return (f"camera_info has invalid intrinsics (fx={i.fx}, fy={i.fy}, cx={i.cx}, cy={i.cy}): "
                    "calibrate the camera (camera_calibration) or fix its camera_info_url")
        if not rectify or not self.distorted:
            return None
        if not (self.k[0, 0] > 0 and self.k[1, 1] > 0 and np.all(np.isfinite(self.k))):
            return f"camera_info K {self.k.ravel().tolist()} is not a camera matrix (fx, fy > 0, finite)"
        allowed = DISTORTION_COEFFICIENTS.get(self.distortion_model)
        if allowed is None:
            return (f"distortion_model {self.distortion_model!r} is not supported for rectification; use one of "
                    f"{sorted(DISTORTION_COEFFICIENTS)} or subscribe to image_rect with rectify off")
        if self.d.size not in allowed:
            return (f"camera_info has {self.d.size} distortion coefficients; {self.distortion_model} takes "
                    f"{' or '.join(map(str, allowed))}")
        if not np.all(np.isfinite(self.d)) or np.max(np.abs(self.d)) > MAX_ABS_DISTORTION:
            return f"camera_info D {self.d.tolist()} has non-finite or absurd (> {MAX_ABS_DISTORTION:g}) values"
        if not np.all(np.isfinite(self.r)) or abs(abs(np.linalg.det(self.r)) - 1.0) > 1e-3:
            return f"camera_info R {self.r.ravel().tolist()} is not a rotation"
        return None


class Rectifier:
    """Undistorts (and rotates by R) images of one calibration through cached remap tables.

    The output is the image whose pinhole model is ``calibration.intrinsics`` (from P).
    """

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._maps = None

    def maps(self, calib: CameraCalibration, width: int, height: int):
        """(map1, map2) for ``cv2.remap``, rebuilt only when the calibration or size changes."""
        import cv2

        key = (width, height, calib.distortion_model, calib.k.tobytes(), calib.d.tobytes(), calib.r.tobytes(),
               calib.p.tobytes())
        if key != self._key:
            new_k = calib.p[:3, :3]
            if calib.distortion_model == "equidistant":
                self._maps = cv2.fisheye.initUndistortRectifyMap(calib.k, calib.d, calib.r, new_k, (width, height),
                                                                 cv2.CV_16SC2)
            else:
                self._maps = cv2.initUndistortRectifyMap(calib.k, calib.d, calib.r, new_k, (width, height),
                                                         cv2.CV_16SC2)
            self._key = key
        return self._maps

    def __call__(self, image: np.ndarray, calib: CameraCalibration) -> np.ndarray:
        """``[H, W, C]`` distorted image -> rectified image of the same size."""
        import cv2

        h, w = image.shape[:2]
        return cv2.remap(image, *self.maps(calib, w, h), interpolation=cv2.INTER_LINEAR)
