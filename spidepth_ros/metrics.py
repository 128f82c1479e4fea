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
