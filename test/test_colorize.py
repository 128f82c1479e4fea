"""Colourised depth against an independent computation with OpenCV's own turbo colour map."""
from __future__ import annotations

import cv2
import numpy as np

from spidepth_ros.colorize import DEFAULT_PERCENTILE, colorize_depth


def reference_colorize(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = (1.0 / np.clip(depth, lo, hi) - 1.0 / hi) / (1.0 / lo - 1.0 / hi)
    idx = np.clip(t * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(idx, cv2.COLORMAP_TURBO)


def test_colours_follow_inverse_depth_on_turbo():
    rng = np.random.default_rng(4)
    depth = (rng.random((37, 53)) * 30 + 0.5).astype(np.float32)
    depth[3, :7] = np.nan
    depth[5, 2] = 0.0
    valid = np.isfinite(depth) & (depth > 0)
    out = colorize_depth(depth, invalid_bgr=(1, 2, 3))
    lo = float(depth[valid].min())
    hi = float(np.percentile(depth[valid], DEFAULT_PERCENTILE, method="lower"))
    expected = reference_colorize(np.where(valid, depth, hi), lo, hi)
    expected[~valid] = (1, 2, 3)
    np.testing.assert_array_equal(out, expected)
    # near is red-ish, far is blue-ish (turbo, BGR)
    near = out[np.unravel_index(np.nanargmin(np.where(valid, depth, np.inf)), depth.shape)]
    assert near[2] > near[0]


def test_fixed_range_and_all_invalid():
    depth = np.array([[1.0, 2.0], [4.0, 100.0]], np.float32)
    np.testing.assert_array_equal(colorize_depth(depth, 1.0, 10.0), reference_colorize(depth, 1.0, 10.0))
    assert not colorize_depth(np.full((3, 4), np.nan, np.float32)).any()
