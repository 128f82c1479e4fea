"""Metric scale without a depth sensor: the camera's known height above a flat floor.

A monocular model's depth is right up to one factor. Back-projecting the lower part of each predicted depth map
(optical frame: x right, y down, z forward) and fitting the floor plane robustly gives the camera's height in
model units; the known height in metres over the median of those gives ``depth_scale``. The floor must be
roughly level in the camera frame (the camera's pitch/roll within ``MAX_TILT_DEG``) and visible in the lower
image; frames without a floor plane are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .geometry import PinholeIntrinsics, backproject

#: the floor normal may tilt this much from the camera's +y (down) axis
MAX_TILT_DEG = 30.0
#: plane inlier band, relative to the plane's distance from the camera
REL_TOLERANCE = 0.03
#: share of the lower image that must lie on the plane for a frame to count
MIN_INLIER_FRACTION = 0.2
#: image rows below this fraction of the height are searched for the floor
FLOOR_ROWS_FROM = 0.55


@dataclass(frozen=True)
class GroundPlane:
    normal: np.ndarray        # [3] unit normal pointing from the camera towards the floor (y down)
    distance: float           # camera height above the plane, in the depth map's units
    inlier_fraction: float


def fit_ground_plane(points: np.ndarray, rng: np.random.Generator, iterations: int = 200,
                     rel_tolerance: float = REL_TOLERANCE, max_tilt_deg: float = MAX_TILT_DEG
                     ) -> Optional[GroundPlane]:
    """RANSAC plane ``n . X = d`` (d > 0, n within ``max_tilt_deg`` of +y) over ``points`` ``[N, 3]``, refined by
    least squares on its inliers; None if no such plane is found."""
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) < 50:
        return None
    cos_tilt = np.cos(np.radians(max_tilt_deg))
    best_count, best = 0, None
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n = n / norm
        if n[1] < 0:
            n = -n
        if n[1] < cos_tilt:
            continue
        d = float(n @ a)
        if d <= 0:
            continue
        count = int(np.count_nonzero(np.abs(points @ n - d) < rel_tolerance * d))
        if count > best_count:
            best_count, best = count, (n, d)
    if best is None:
        return None
    n, d = best
    inliers = points[np.abs(points @ n - d) < rel_tolerance * d]
    centroid = inliers.mean(axis=0)
    normal = np.linalg.svd(inliers - centroid, full_matrices=False)[2][-1]
    if normal[1] < 0:
        normal = -normal
    distance = float(normal @ centroid)
    return GroundPlane(normal, distance, len(inliers) / len(points))


def camera_height(depth: np.ndarray, intrinsics: PinholeIntrinsics, rng: np.random.Generator,
                  stride: int = 2) -> Optional[float]:
    """Height of the camera above the floor in ``depth``'s units, or None when no floor is visible."""
    h = depth.shape[0]
    top = int(FLOOR_ROWS_FROM * h)
    points = backproject(depth, intrinsics, stride)[top // stride:].reshape(-1, 3)
    plane = fit_ground_plane(points.astype(np.float64), rng)
    if plane is None or plane.inlier_fraction < MIN_INLIER_FRACTION:
        return None
    return plane.distance


def scale_from_heights(heights: Sequence[float], known_height_m: float) -> float:
    """``depth_scale`` (metres per model unit) from per-frame heights in model units and the true height."""
    valid = [x for x in heights if x is not None and np.isfinite(x) and x > 0]
    if not valid:
        raise ValueError("no frame showed a floor plane: check that the floor is visible in the lower image and the "
                         "camera is roughly level")
    return float(known_height_m / np.median(valid))
