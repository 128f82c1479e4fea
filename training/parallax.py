"""Translation parallax between frames, measured from the images alone (no poses).

Self-supervised depth learns from the part of the image motion that depends on depth: the parallax of the
camera's translation. A hand-held camera mostly rotates, and rotation moves every pixel the same way whatever
its depth (the flow of a pure rotation is the homography ``K R K^-1``). So for a frame pair we track corners
(Lucas-Kanade), fit the rotation that best explains the tracks (orthogonal Procrustes on the normalised rays,
re-fitted on the best 70 %) and measure what is left:

    parallax = median over tracks of | project(R ray_i) - p_j |       (pixels of the network image)

A pair with ~0 px parallax explains a flat depth as well as the true one (issue #13: 0.8 px median at 30 Hz
offset 1 gave the true depth a -2 % margin; 2.5 px and more gave it ~20 %). The training set takes, for each
target frame, the nearest source frames whose parallax reaches ``data.target_parallax_px``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from spidepth_ros.geometry import matrix_to_axis_angle, project_points, unit_rays

#: corners tracked per pair (more cost little at network resolution)
MAX_CORNERS = 300
#: fraction of tracks kept when re-fitting the rotation (the rest: outliers, moving objects, far parallax)
INLIER_FRACTION = 0.7
#: a pair with fewer good tracks than this has no measured parallax (NaN)
MIN_TRACKS = 12
#: forward-backward tracking error above which a track is dropped (pixels)
FB_MAX_PX = 0.5


@dataclass(frozen=True)
class PairMotion:
    """What the images say about the motion between two frames."""

    parallax_px: float      # median translation parallax after removing the best rotation (NaN: unmeasured)
    rotation_deg: float     # angle of that rotation
    tracks: int             # corners tracked in both frames
    rotation: Optional[np.ndarray] = None   # [3, 3] that rotation: rays of the first frame -> the second's


def rotation_from_rays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation ``R`` minimising ``sum |R a_i - b_i|^2`` over unit rays ``a, b: [N, 3]`` (Kabsch)."""
    h = a.T @ b
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def rotation_compensated_parallax(p0: np.ndarray, p1: np.ndarray, k: np.ndarray) -> PairMotion:
    """Parallax left after the best-fitting rotation maps the points ``p0 [N, 2]`` onto ``p1 [N, 2]`` (pixels,
    intrinsics ``k`` 3x3 of the same image)."""
    if len(p0) < MIN_TRACKS:
        return PairMotion(float("nan"), float("nan"), len(p0), None)
    a, b = unit_rays(p0, k), unit_rays(p1, k)
    keep = np.arange(len(a))
    for _ in range(2):
        r = rotation_from_rays(a[keep], b[keep])
        residual = np.linalg.norm(project_points(a @ r.T, k) - p1, axis=1)
        keep = np.argsort(residual)[: max(MIN_TRACKS, int(len(a) * INLIER_FRACTION))]
    residual = np.linalg.norm(project_points(a @ r.T, k) - p1, axis=1)
    angle = np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))
    return PairMotion(float(np.median(residual)), float(angle), len(p0), r)


def track(grey0: np.ndarray, grey1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners of ``grey0`` (uint8 ``[H, W]``) tracked into ``grey1``, forward-backward checked: ``[N, 2]`` each."""
    import cv2

    corners = cv2.goodFeaturesToTrack(grey0, MAX_CORNERS, qualityLevel=0.01, minDistance=4)
    if corners is None:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    fwd, ok1, _ = cv2.calcOpticalFlowPyrLK(grey0, grey1, corners, None, winSize=(15, 15), maxLevel=3)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(grey1, grey0, fwd, None, winSize=(15, 15), maxLevel=3)
    good = (ok1[:, 0] == 1) & (ok2[:, 0] == 1) & (np.linalg.norm(back - corners, axis=2)[:, 0] < FB_MAX_PX)
    return corners[good, 0], fwd[good, 0]


def pair_motion(rgb0: np.ndarray, rgb1: np.ndarray, k: np.ndarray) -> PairMotion:
    """:class:`PairMotion` between two ``[H, W, 3]`` uint8 frames with pixel intrinsics ``k`` (3x3)."""
    import cv2

    g0 = cv2.cvtColor(np.ascontiguousarray(rgb0), cv2.COLOR_RGB2GRAY)
    g1 = cv2.cvtColor(np.ascontiguousarray(rgb1), cv2.COLOR_RGB2GRAY)
    p0, p1 = track(g0, g1)
    return rotation_compensated_parallax(p0, p1, k)


@dataclass(frozen=True)
class MotionTable:
    """Image-measured motion from frame ``i`` to ``i + o`` at ``[i, o - 1]`` (NaN past the end or where too few
    corners were tracked)."""

    parallax_px: np.ndarray     # [N, max_offset] translation parallax, pixels
    rotation_deg: np.ndarray    # [N, max_offset] angle of the best-fitting rotation
    rotation_vec: np.ndarray    # [N, max_offset, 3] that rotation as an axis-angle vector (rays of i -> rays of i+o)


def parallax_table(frames: np.ndarray, k: np.ndarray, max_offset: int, progress: bool = False,
                   desc: str = "parallax") -> MotionTable:
    """:class:`MotionTable` of ``frames`` ``[N, H, W, 3]`` uint8 for offsets ``1..max_offset``."""
    from tqdm import tqdm

    n = len(frames)
    parallax = np.full((n, max_offset), np.nan, np.float32)
    rotation = np.full((n, max_offset), np.nan, np.float32)
    vectors = np.full((n, max_offset, 3), np.nan, np.float32)
    for i in tqdm(range(n), desc=desc, unit="frame", disable=not progress):
        for o in range(1, max_offset + 1):
            if i + o >= n:
                break
            m = pair_motion(frames[i], frames[i + o], k)
            parallax[i, o - 1], rotation[i, o - 1] = m.parallax_px, m.rotation_deg
            if m.rotation is not None:
                vectors[i, o - 1] = matrix_to_axis_angle(m.rotation)
    return MotionTable(parallax, rotation, vectors)


def choose_source(parallax: np.ndarray, target: int, direction: int, want_px: float,
                  allowed: Optional[np.ndarray] = None) -> Optional[int]:
    """The nearest frame before (``direction`` -1) or after (+1) ``target`` whose parallax to it reaches
    ``want_px``; None if none within the table's offsets. ``allowed[j]`` False excludes frame ``j``."""
    n, max_offset = parallax.shape
    for o in range(1, max_offset + 1):
        j = target + direction * o
        if j < 0 or j >= n:
            return None
        if allowed is not None and not allowed[j]:
            continue
        value = parallax[min(j, target), o - 1]
        if np.isfinite(value) and value >= want_px:
            return j
    return None
