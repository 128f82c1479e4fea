"""Metric scale at run time from the camera's known height above the floor (no rclpy).

A monocular self-supervised model predicts depth up to a factor, and re-decides it on every frame. With the
camera's height known, every frame's floor plane fitted in the predicted depth (:func:`ground_scale.floor_plane`)
gives that frame's factor: known height / fitted height. One frame's fit can be wrong (a table top, a ramp, a
wall low in the image), so :class:`CameraHeightScale` applies the median of the recent accepted factors, refuses
a factor far from it, holds the last good value while no floor is visible, and re-locks when the scene's scale
really changes (several consecutive refused frames that agree with each other). Before any floor has been seen
it applies the model's own scale.

Units: depth in model units in, metres out; the floor plane is returned in metres in the camera optical frame
(x right, y down, z forward), with its normal pointing from the camera towards the floor.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .geometry import PinholeIntrinsics
from .ground_scale import GroundPlane, floor_plane

#: Accepted per-frame factors the applied scale is the median of.
WINDOW_FRAMES = 30
#: A frame's factor more than this factor away from the applied one is refused as a wrong floor fit.
MAX_FRAME_RATIO = 1.5
LOG_MAX_FRAME_RATIO = float(np.log(MAX_FRAME_RATIO))
#: This many consecutive refused frames that agree (within MAX_FRAME_RATIO of their median) re-lock the scale:
#: the model's scale changed (a new scene), not the floor fit.
RELOCK_FRAMES = 5
#: Frames over which the floor-fit share is reported.
SHARE_WINDOW_FRAMES = 50
#: RANSAC hypotheses per frame: fewer than an offline fit's 200, as this runs on every frame and the temporal
#: filter absorbs a worse fit now and then (0.63 -> 0.25 ms per frame at 160x48 on 2 cores, bench/node.py).
ONLINE_RANSAC_ITERATIONS = 64
#: Every 3rd pixel in x and y of the lower image (~400 points at 160x48): the per-frame fit's cost is scoring
#: hypotheses against points, and the filter averages the fits.
ONLINE_STRIDE = 3


@dataclass(frozen=True)
class ScaleReport:
    """What the node applies to one frame and why (for /diagnostics)."""

    scale: float                     # metres per model unit applied to this frame
    source: str                      # "model" (no floor seen yet), "floor" (this frame's floor agreed), "held"
    frame_scale: Optional[float]     # this frame's own floor-fit factor (None: no floor)
    spread: float                    # p95/p5 of the accepted factors in the window (1.0 = perfectly steady)
    floor_share: float               # share of the recent frames with a floor fit
    age_s: Optional[float]           # seconds since the last accepted floor (None: never)
    floor: Optional[GroundPlane]     # the floor in metres (normal, camera height) when known


class CameraHeightScale:
    """Temporal filter of per-frame floor-fit scales for one camera."""

    def __init__(self, camera_height_m: float, model_scale: float = 1.0, seed: int = 0) -> None:
        if not camera_height_m > 0:
            raise ValueError(f"camera_height must be > 0 metres, got {camera_height_m}")
        self.camera_height_m = camera_height_m
        self.model_scale = model_scale
        self._accepted: deque[float] = deque(maxlen=WINDOW_FRAMES)      # log factors
        self._refused: deque[float] = deque(maxlen=RELOCK_FRAMES)
        self._found: deque[bool] = deque(maxlen=SHARE_WINDOW_FRAMES)
        self._last_floor_time: Optional[float] = None
        self._normal: Optional[np.ndarray] = None
        self._rng = np.random.default_rng(seed)

    @property
    def scale(self) -> float:
        return float(np.exp(np.median(self._accepted))) if self._accepted else self.model_scale

    def update(self, depth: np.ndarray, intrinsics: PinholeIntrinsics, now_s: float) -> ScaleReport:
        """Fit this frame's floor in ``depth`` (model units, ``intrinsics`` its pinhole model) and return the
        scale to apply to it."""
        plane = floor_plane(depth, intrinsics, self._rng, stride=ONLINE_STRIDE, iterations=ONLINE_RANSAC_ITERATIONS)
        self._found.append(plane is not None)
        frame_scale = self.camera_height_m / plane.distance if plane is not None and plane.distance > 0 else None
        source = "held" if self._accepted else "model"
        if frame_scale is not None:
            log_s = float(np.log(frame_scale))
            if not self._accepted or abs(log_s - float(np.median(self._accepted))) <= LOG_MAX_FRAME_RATIO:
                self._accepted.append(log_s)
                self._refused.clear()
                self._last_floor_time, self._normal, source = now_s, plane.normal, "floor"
            else:
                self._refused.append(log_s)
                if len(self._refused) == RELOCK_FRAMES and \
                        max(self._refused) - min(self._refused) <= 2 * LOG_MAX_FRAME_RATIO:
                    self._accepted.clear()
                    self._accepted.extend(self._refused)
                    self._refused.clear()
                    self._last_floor_time, self._normal, source = now_s, plane.normal, "floor"
        ordered = sorted(self._accepted)             # (30 values: sorting beats np.percentile's overhead)
        spread = float(np.exp(ordered[int(0.95 * (len(ordered) - 1))] - ordered[int(0.05 * (len(ordered) - 1))])) \
            if ordered else 1.0
        floor = GroundPlane(self._normal, self.camera_height_m, 1.0) if self._normal is not None else None
        return ScaleReport(self.scale, source, frame_scale, spread, float(np.mean(self._found)),
                           None if self._last_floor_time is None else now_s - self._last_floor_time, floor)


def height_above_floor(points: np.ndarray, floor: GroundPlane) -> np.ndarray:
    """``[..., 3]`` points (metres, optical frame) -> their height above ``floor`` (metres; NaN stays NaN).

    The floor is ``n . X = d`` with ``n`` pointing down towards it and ``d`` the camera's height, so a point's
    height above it is ``d - n . X``.
    """
    return floor.distance - points @ floor.normal
