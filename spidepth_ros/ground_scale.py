"""Metric scale without a depth sensor: the camera's known height above a flat floor.

A monocular model's depth is right up to one factor. Back-projecting the lower part of each predicted depth map
(optical frame: x right, y down, z forward) and fitting the floor plane robustly gives the camera's height in
model units; the known height in metres over the median of those gives ``depth_scale``. The floor must be
roughly level in the camera frame (the camera's pitch/roll within ``MAX_TILT_DEG``) and visible in the lower
image; frames without a floor plane are skipped.
"""
from __future__ import annotations

import dataclasses
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
    least squares on its inliers; None if no such plane is found.

    All ``iterations`` hypotheses are scored at once (one ``[N, iterations]`` product): the node runs this on
    every frame with ``scale_source: camera_height``.
    """
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points) < 50:
        return None
    points = points.astype(np.float64, copy=False)
    cos_tilt = np.cos(np.radians(max_tilt_deg))
    triples = points[rng.integers(0, len(points), (iterations, 3))]              # [K, 3 points, 3]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-12
    normals, triples = normals[ok] / norms[ok, None], triples[ok]
    normals *= np.where(normals[:, 1:2] < 0, -1.0, 1.0)                          # towards the floor (+y)
    d = np.einsum("kj,kj->k", normals, triples[:, 0])
    ok = (normals[:, 1] >= cos_tilt) & (d > 0)
    if not ok.any():
        return None
    normals, d = normals[ok], d[ok]
    # scoring is most of the cost: float32 halves it (a count of inliers needs no more precision)
    residual = points.astype(np.float32) @ normals.T.astype(np.float32) - d.astype(np.float32)
    counts = np.count_nonzero(np.abs(residual) < (rel_tolerance * d).astype(np.float32), axis=0)
    best = int(np.argmax(counts))
    n, dist = normals[best], d[best]
    inliers = points[np.abs(points @ n - dist) < rel_tolerance * dist]
    centroid = inliers.mean(axis=0)
    centred = inliers - centroid
    normal = np.linalg.eigh(centred.T @ centred)[1][:, 0]     # least-squares normal: smallest eigenvector
    if normal[1] < 0:
        normal = -normal
    distance = float(normal @ centroid)
    return GroundPlane(normal, distance, len(inliers) / len(points))


def floor_plane(depth: np.ndarray, intrinsics: PinholeIntrinsics, rng: np.random.Generator,
                stride: int = 2, iterations: int = 200) -> Optional[GroundPlane]:
    """The floor in ``depth`` (its units), fitted in the lower image, or None when no floor is visible."""
    h = depth.shape[0]
    top = (int(FLOOR_ROWS_FROM * h) // stride) * stride
    # only the rows searched: the same pixels as backprojecting all and slicing, a third of the work
    lower = dataclasses.replace(intrinsics, cy=intrinsics.cy - top, height=h - top)
    points = backproject(depth[top:], lower, stride).reshape(-1, 3)
    plane = fit_ground_plane(points, rng, iterations)
    if plane is None or plane.inlier_fraction < MIN_INLIER_FRACTION:
        return None
    return plane


def camera_height(depth: np.ndarray, intrinsics: PinholeIntrinsics, rng: np.random.Generator,
                  stride: int = 2) -> Optional[float]:
    """Height of the camera above the floor in ``depth``'s units, or None when no floor is visible."""
    plane = floor_plane(depth, intrinsics, rng, stride)
    return plane.distance if plane is not None else None


def scale_from_heights(heights: Sequence[float], known_height_m: float) -> float:
    """``depth_scale`` (metres per model unit) from per-frame heights in model units and the true height."""
    valid = [x for x in heights if x is not None and np.isfinite(x) and x > 0]
    if not valid:
        raise ValueError("no frame showed a floor plane: check that the floor is visible in the lower image and the "
                         "camera is roughly level")
    return float(known_height_m / np.median(valid))
