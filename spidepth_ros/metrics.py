"""Depth error metrics (the KITTI/Eigen protocol), one numpy implementation for training, eval and the demo.

Per image: mask ``min_depth < gt < max_depth`` (and finite prediction), optional crop, optional median
scaling ``pred *= median(gt) / median(pred)`` over the mask, clamp ``pred`` to the range, then AbsRel,
SqRel, RMSE, RMSElog and the delta < 1.25^n accuracies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
#: the constant-depth baseline reported beside every evaluation (see :func:`evaluate_frame`)
BASELINE_NAMES = ("const_abs_rel", "const_a1")
#: Garg/Eigen crop as fractions of (rows, cols): rows [0.408, 0.992), cols [0.036, 0.964).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


@dataclass(frozen=True)
class EvalSettings:
    min_depth: float = 1e-3
    max_depth: float = 80.0
    median_scaling: bool = True
    fixed_scale: float = 1.0
    crop: Optional[tuple[float, float, float, float]] = None   # (top, bottom, left, right) fractions


def resize_to(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if pred.shape == (height, width):
        return pred
    return cv2.resize(pred.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def compute_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics on already-masked 1-D arrays of positive depths."""
    thresh = np.maximum(gt / pred, pred / gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25 ** 2)),
        "a3": float(np.mean(thresh < 1.25 ** 3)),
    }


def evaluate_frame(gt: np.ndarray, pred: np.ndarray, settings: EvalSettings) -> Optional[dict[str, float]]:
    """Metrics for one frame (``pred`` resized to ``gt``'s size). None if no pixel is valid.

    The returned dict also holds ``scale`` (the median ratio applied, or the fixed scale), ``pixels``, and the
    constant-depth baseline on the same pixels: ``const_abs_rel``/``const_a1`` of predicting the ground truth's
    median everywhere (what a collapsed, flat model scores after median scaling).
    """
    h, w = gt.shape
    pred = resize_to(pred, h, w) * settings.fixed_scale
    mask = np.isfinite(gt) & (gt > settings.min_depth) & (gt < settings.max_depth) & np.isfinite(pred) & (pred > 0)
    if settings.crop is not None:
        top, bottom, left, right = settings.crop
        crop = np.zeros_like(mask)
        crop[int(top * h):int(bottom * h), int(left * w):int(right * w)] = True
        mask &= crop
    if not mask.any():
        return None
    g, p = gt[mask].astype(np.float64), pred[mask].astype(np.float64)
    scale = settings.fixed_scale
    if settings.median_scaling:
        ratio = float(np.median(g) / np.median(p))
        p = p * ratio
        scale *= ratio
    p = np.clip(p, settings.min_depth, settings.max_depth)
    out = compute_errors(g, p)
    const = compute_errors(g, np.full_like(g, np.median(g)))
    out.update(scale=scale, pixels=int(mask.sum()), const_abs_rel=const["abs_rel"], const_a1=const["a1"])
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over frames, plus the median scale and its spread (std/median)."""
    if not rows:
        return {}
    out = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES + BASELINE_NAMES if k in rows[0]}
    scales = np.array([r["scale"] for r in rows])
    out["scale_median"] = float(np.median(scales))
    out["scale_std_over_median"] = float(np.std(scales) / np.median(scales))
    out["frames"] = len(rows)
    return out


def off_surface_mask(depth: np.ndarray, gt_depth: np.ndarray, intrinsics, rel_tolerance: float = 0.05,
                     radius: int = 2) -> np.ndarray:
    """``[H, W]`` bool: valid pixels of ``depth`` whose 3-D point lies farther than ``rel_tolerance`` of its depth
    from every ground-truth point within ``radius`` pixels (both maps on the same pixel grid, ``intrinsics``).

    "Every true surface" is searched in a window, not only along the same ray, so a point shifted along a surface
    is on it; a point floating between a near edge and the wall behind is not (the flying pixels of a costmap).
    """
    from .geometry import backproject

    pred = backproject(depth.astype(np.float64), intrinsics)
    gt = backproject(gt_depth.astype(np.float64), intrinsics)
    h, w = depth.shape
    best = np.full((h, w), np.inf)
    padded = np.full((h + 2 * radius, w + 2 * radius, 3), np.nan)
    padded[radius:radius + h, radius:radius + w] = gt
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            dist = np.linalg.norm(pred - padded[dy:dy + h, dx:dx + w], axis=2)
            best = np.fmin(best, dist)
    valid = np.isfinite(depth) & (depth > 0)
    return valid & ~(best <= rel_tolerance * depth)


def scale_consistency(depths: list, relative_poses: Optional[list] = None, intrinsics=None,
                      min_depth: float = 1e-3) -> dict[str, float]:
    """Frame-to-frame scale consistency of a depth stream: the log ratio of consecutive frames' scales.

    With ``relative_poses`` (``[4, 4]`` transforms taking frame i's camera coordinates to frame i+1's, one per
    consecutive pair; metres or any unit) and ``intrinsics`` (of the depth maps), each pair's ratio is the median,
    over pixels of frame i that land inside frame i+1, of frame i+1's depth at the landing pixel over the landing
    point's z: the same surfaces seen twice. Without poses it is the ratio of the two maps' medians (which also
    moves when the scene does). Returns ``p95_abs_log_ratio`` (the spread the acceptance bounds), its median and
    the number of pairs.
    """
    from .geometry import backproject

    logs = []
    for i in range(len(depths) - 1):
        a, b = np.asarray(depths[i], np.float64), np.asarray(depths[i + 1], np.float64)
        if relative_poses is None:
            va, vb = a[np.isfinite(a) & (a > min_depth)], b[np.isfinite(b) & (b > min_depth)]
            if va.size and vb.size:
                logs.append(np.log(np.median(vb) / np.median(va)))
            continue
        pts = backproject(a, intrinsics).reshape(-1, 3)
        pts = pts[np.all(np.isfinite(pts), axis=1) & (pts[:, 2] > min_depth)]
        t = np.asarray(relative_poses[i], np.float64)
        moved = pts @ t[:3, :3].T + t[:3, 3]
        moved = moved[moved[:, 2] > min_depth]
        u = np.rint(intrinsics.fx * moved[:, 0] / moved[:, 2] + intrinsics.cx).astype(int)
        v = np.rint(intrinsics.fy * moved[:, 1] / moved[:, 2] + intrinsics.cy).astype(int)
        inside = (u >= 0) & (u < b.shape[1]) & (v >= 0) & (v < b.shape[0])
        seen = b[v[inside], u[inside]]
        ok = np.isfinite(seen) & (seen > min_depth)
        if ok.sum() >= 20:
            logs.append(np.log(np.median(seen[ok] / moved[inside][ok, 2])))
    logs = np.abs(np.array(logs))
    if logs.size == 0:
        return {"p95_abs_log_ratio": float("nan"), "median_abs_log_ratio": float("nan"), "pairs": 0}
    return {"p95_abs_log_ratio": float(np.percentile(logs, 95)), "median_abs_log_ratio": float(np.median(logs)),
            "pairs": int(logs.size)}
