"""Colourised depth for people to look at (not for machines: the depth topic carries metres)."""
from __future__ import annotations

from typing import Optional

import numpy as np

#: Percentile used to pick the far end of the colour scale when no max is given (like the official test).
DEFAULT_PERCENTILE = 95.0


def _turbo_lut() -> np.ndarray:
    import cv2

    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO).reshape(256, 3)  # BGR


_LUT: Optional[np.ndarray] = None


def _percentile_lower(values: np.ndarray, percentile: float) -> float:
    """``np.percentile(values, percentile, method="lower")`` by partial sort (10x faster than a full one)."""
    k = int(np.floor(percentile / 100.0 * (values.size - 1)))
    return float(np.partition(values, k)[k])


def colorize_depth(depth: np.ndarray, min_depth: Optional[float] = None, max_depth: Optional[float] = None,
                   invalid_bgr: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """``[H, W]`` metres -> ``[H, W, 3]`` uint8 **BGR** (near = red, far = blue; NaN = ``invalid_bgr``).

    Colour is taken on inverse depth, so near structure gets most of the scale.
    """
    global _LUT
    if _LUT is None:
        _LUT = _turbo_lut()
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.broadcast_to(np.array(invalid_bgr, np.uint8), depth.shape + (3,)).copy()
    values = depth[valid]
    lo = min_depth if min_depth is not None else float(values.min())
    hi = max_depth if max_depth is not None else _percentile_lower(values, DEFAULT_PERCENTILE)
    hi = max(hi, lo * 1.0001 + 1e-6)
    inv = np.where(valid, 1.0 / np.clip(depth, lo, hi), 1.0 / hi)
    t = (inv - 1.0 / hi) / (1.0 / lo - 1.0 / hi)
    idx = np.clip(t * 255.0, 0, 255).astype(np.uint8)
    out = np.take(_LUT, idx, axis=0)       # 4x faster than _LUT[idx] for the same result
    out[~valid] = invalid_bgr
    return out
