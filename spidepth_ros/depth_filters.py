"""Depth clean-up for clouds a costmap can use (no rclpy): flying pixels at depth edges, and a height band.

**Flying pixels.** Where a near object hides a far wall, any smooth depth map (a network's output, a bilinear
upsampling) passes through depths between the two: points that float in the air between the object and the
wall, which a costmap marks as obstacles. A pixel whose depth differs from one of its 4 neighbours by more than
``max_relative_jump`` of the nearer of the two lies on such a step and is dropped. On a surface seen at a
grazing angle ``theta`` the jump between neighbours is about ``pixel_angle / tan(theta)``, so the threshold also
drops surfaces seen more obliquely than ``atan(pixel_angle / max_relative_jump)`` (at the small preset's 160 px
output over 90 deg, 0.3 keeps everything steeper than 2.4 deg).

**Height band.** With the floor known (``scale_source: camera_height``) a point's height above it is
``d - n . X`` (:func:`spidepth_ros.metric_scale.height_above_floor`); points below ``min_height`` (the floor
itself, so it does not become an obstacle) or above ``max_height`` are dropped.
"""
from __future__ import annotations

import numpy as np


def flying_pixel_mask(depth: np.ndarray, max_relative_jump: float) -> np.ndarray:
    """``[H, W]`` depth (any units, NaN invalid) -> ``[H, W]`` bool, True where a pixel is on a depth step.

    A pixel is flagged when ``|d - d_n| > max_relative_jump * min(d, d_n)`` for one of its 4 neighbours ``d_n``
    (invalid neighbours never flag it). Vectorised: four shifted comparisons.
    """
    d = np.asarray(depth, dtype=np.float32)
    flagged = np.zeros(d.shape, bool)
    t = np.float32(max_relative_jump)
    for a, b in ((d[:, 1:], d[:, :-1]), (d[1:, :], d[:-1, :])):
        with np.errstate(invalid="ignore"):
            step = np.abs(a - b) > t * np.fmin(a, b)          # NaN compares False: invalid never flags
        if a.shape[1] != d.shape[1]:                          # horizontal pairs: both pixels of the pair
            flagged[:, 1:] |= step
            flagged[:, :-1] |= step
        else:
            flagged[1:, :] |= step
            flagged[:-1, :] |= step
    return flagged


def remove_flying_pixels(depth: np.ndarray, max_relative_jump: float) -> np.ndarray:
    """``depth`` with flying pixels set to NaN (in place; returned). ``max_relative_jump`` <= 0: unchanged."""
    if max_relative_jump > 0:
        depth[flying_pixel_mask(depth, max_relative_jump)] = np.nan
    return depth
