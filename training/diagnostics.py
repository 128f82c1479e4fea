"""What a training epoch did to the geometry, and warnings in words when it is collapsing.

Self-supervised depth can "learn" a flat map: when the camera barely moves between the frames of a triplet, a
constant depth explains the source frames as well as the true one, the photometric loss stays flat, automasking
hides most pixels and the smoothness term rewards the flat answer. None of that shows in the loss, so every
epoch reports the depth spread, the automasked share, PoseNet's motion and the median depth, and says what to
change when one of them goes wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

#: depth p95/p5 below this means the map is flattening (real scenes span well over 2x in depth)
FLAT_SPREAD = 1.5
#: automasked share above this: most pixels are better explained by not moving at all
AUTOMASK_LIMIT = 0.5
#: validation AbsRel this much above the initial model's is a regression worth saying so
REGRESSION_FACTOR = 1.05
#: share of pose refinements at their step limit above which the translation the depth learns from is too short
SATURATION_LIMIT = 0.25
#: the median depth moving this many times away from its reference (drift_references) is a drift, not learning
DRIFT_FACTOR = 4.0
#: a scratch run is also compared with the epoch this many epochs back (a steady drift of a little per epoch)...
DRIFT_WINDOW = 5
#: ...but never with its first SETTLE_EPOCHS epochs, whose scale a barely trained network chose
SETTLE_EPOCHS = 3
#: share of pairs whose rotation could not be measured from the images (they start from the identity) above
#: which the image-rotation start is failing
UNMEASURED_LIMIT = 0.2


@dataclass
class EpochDiagnostics:
    """Running means over one epoch's training steps (fed the dicts :meth:`Trainer.compute_loss` returns)."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    steps: int = 0

    def add(self, out: dict) -> None:
        if out.get("skipped"):              # a non-finite loss: no update was made (Trainer.train_step)
            self.sums["nonfinite_steps"] = self.sums.get("nonfinite_steps", 0.0) + 1
            self.counts["nonfinite_steps"] = 1          # summed, not averaged
            self.steps += 1
            return
        depth = out["depth"].detach().float().flatten(1)
        q = torch.quantile(depth[:, :: max(1, depth.shape[1] // 20000)], torch.tensor([0.05, 0.5, 0.95]), dim=1)
        values = {"depth_spread_p95_p5": float((q[2] / q[0].clamp_min(1e-6)).mean()),
                  "depth_median": float(q[1].mean()),
                  "automask_fraction": float(out["automask_fraction"]),
                  "translation_norm": float(out.get("translation_norm", float("nan"))),
                  "rotation_deg": float(out.get("rotation_deg", float("nan")))}
        for key in ("frame_offset", "parallax_px",          # chosen offsets and their measured parallax
                    "refine_saturated_fraction",            # adam refinements whose translation ran out of reach
                    "refine_rotation_saturated_fraction",   # ... whose rotation did
                    "refine_posenet_start_fraction",        # lm refinements that started from PoseNet's pose
                    "refine_cost_reduction",                # lm: share of the start's photometric cost removed
                    "unmeasured_rotation_fraction",         # image_rotation pairs that fell back to the identity
                    "posenet_rotation_error_deg", "posenet_direction_error_deg"):   # against data.pose_topic
            if key in out and torch.isfinite(torch.as_tensor(out[key])):
                values[key] = float(out[key])
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.steps += 1

    def summary(self) -> dict:
        # a key absent from some steps (parallax unmeasured) is averaged over the steps that had it
        return {f"train_{k}": v / self.counts[k] for k, v in self.sums.items()} if self.steps else {}


def rotation_angle_deg(rotations: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of each rotation in ``[B, 3, 3]`` (from the trace), ``[B]``."""
    trace = rotations.diagonal(dim1=1, dim2=2).sum(-1)
    return torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1, 1)))


def pose_errors(estimated: torch.Tensor, recorded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error and translation-direction error, in degrees, of ``estimated [B, 4, 4]`` transforms against
    ``recorded [B, 4, 4]`` ones (same convention: target camera -> source camera). The direction error ignores
    scale (monocular translation has none of its own); it is NaN where either translation is below 1e-9."""
    rotation = rotation_angle_deg(estimated[:, :3, :3].transpose(1, 2) @ recorded[:, :3, :3])
    a, b = estimated[:, :3, 3], recorded[:, :3, 3]
    norms = a.norm(dim=1) * b.norm(dim=1)
    cos = ((a * b).sum(1) / norms.clamp_min(1e-30)).clamp(-1, 1)
    direction = torch.where(norms > 1e-18, torch.rad2deg(torch.arccos(cos)), torch.full_like(cos, float("nan")))
    return rotation, direction


def collapse_warnings(summary: dict, references: Sequence[tuple[float, str]] = (),
                      parallax_triplets: bool = False) -> list[str]:
    """Plain-language warnings for one epoch's :meth:`EpochDiagnostics.summary` (empty when all is well).

    ``references``: ``(median depth, its name)`` pairs the drift check compares with (:func:`drift_references`).
    ``parallax_triplets``: the run chooses triplets by ``data.target_parallax_px``, so the advice names that key
    (``data.frame_offset`` and ``data.min_motion`` do nothing then)."""
    warnings = []
    more_motion = ("raise data.target_parallax_px (and data.max_frame_offset if few targets reach it)"
                   if parallax_triplets else "raise data.frame_offset or data.min_motion")
    spread = summary.get("train_depth_spread_p95_p5")
    if spread is not None and spread < FLAT_SPREAD:
        warnings.append(f"the depth map is flattening (p95/p5 = {spread:.2f} < {FLAT_SPREAD}): frames in a triplet "
                        f"hardly differ, so a flat map explains them. {more_motion[0].upper() + more_motion[1:]}, "
                        "lower optim.lr, or start from weights that already see depth (model.init)")
    automask = summary.get("train_automask_fraction")
    if automask is not None and automask > AUTOMASK_LIMIT:
        warnings.append(f"{automask:.0%} of pixels are automasked (identity beats reprojection): the camera "
                        f"moves too little between the frames used. {more_motion[0].upper() + more_motion[1:]}; "
                        "a static or only rotating camera teaches no depth")
    saturated = summary.get("train_refine_saturated_fraction")
    if saturated is not None and saturated > SATURATION_LIMIT:
        warnings.append(f"{saturated:.0%} of pose refinements ran out of reach (their translation moved the most "
                        "pose.refine_steps x pose.refine_lr_translation of the median depth allows): the camera "
                        "moves further per chosen pair than the refinement can follow, and the depth learns from "
                        "too short translations. Use pose.refine_method: lm (no step limit), or raise "
                        "pose.refine_lr_translation (0.005 for a driving camera)"
                        + (" or lower data.target_parallax_px" if parallax_triplets else ""))
    rotation_saturated = summary.get("train_refine_rotation_saturated_fraction")
    if rotation_saturated is not None and rotation_saturated > SATURATION_LIMIT:
        warnings.append(f"{rotation_saturated:.0%} of pose refinements ran out of rotation (the correction moved "
                        "the most pose.refine_steps x pose.refine_lr_rotation allows): the start rotation is "
                        "further off than the refinement can correct. Use pose.refine_method: lm, or raise "
                        "pose.refine_lr_rotation")
    unmeasured = summary.get("train_unmeasured_rotation_fraction")
    if unmeasured is not None and unmeasured > UNMEASURED_LIMIT:
        warnings.append(f"{unmeasured:.0%} of pairs had no rotation measured from the images (too few corners "
                        "tracked: blur, no texture, or frames too far apart) and started from the identity. "
                        "Lower data.target_parallax_px so pairs are nearer, or use pose.init: posenet")
    median = summary.get("train_depth_median")
    for reference_median, reference in references:
        if median is None or not reference_median:
            continue
        ratio = median / reference_median
        if ratio > DRIFT_FACTOR or ratio < 1 / DRIFT_FACTOR:
            warnings.append(f"the median predicted depth drifted {ratio:.1f}x from {reference} "
                            f"({reference_median:.2f} -> {median:.2f}): the scale is running away. Lower optim.lr")
            break
    return warnings


def validation_warnings(result: dict, initial_abs_rel: Optional[float]) -> list[str]:
    """Warnings from one epoch's validation depth metrics against the initial model and a constant depth."""
    warnings = []
    abs_rel = result.get("val_abs_rel")
    if abs_rel is None:
        return warnings
    if abs_rel >= result.get("val_const_abs_rel", float("inf")):
        warnings.append("the model is no better than a constant depth on the validation frames")
    elif initial_abs_rel is not None and abs_rel > REGRESSION_FACTOR * initial_abs_rel:
        warnings.append(f"validation AbsRel {abs_rel:.4f} is worse than the initial model's {initial_abs_rel:.4f}: "
                        "training is making this model worse (best.pt keeps the better epoch). Lower optim.lr, "
                        "warm PoseNet up first (optim.pose_warmup_steps) or refine poses (pose.refine_steps)")
    return warnings


def drift_references(medians: list[float], from_scratch: bool) -> list[tuple[float, str]]:
    """The median depths to compare the newest epoch with, and their names, from every epoch's training median
    depth so far (``medians``, oldest first, the newest last; a resumed run's history included).

    A fine-tune: its first epoch's (the starting model's scale, so any drift accumulates against it). A run from
    scratch: the previous epoch's (a jump), and the one ``DRIFT_WINDOW`` epochs back but not among the first
    ``SETTLE_EPOCHS`` (a steady drift a little per epoch); never the first epochs' own, which a barely trained
    network chose (the real scratch run of docs/real_data.md went from 25 to 4-7 units while learning)."""
    newest = len(medians) - 1
    if not from_scratch:
        return [(medians[0], "the first epoch's")] if medians else []
    out = []
    if newest >= 1:
        out.append((medians[newest - 1], "the previous epoch's"))
    back = max(SETTLE_EPOCHS, newest - DRIFT_WINDOW)
    if newest - back >= 2:
        out.append((medians[back], f"epoch {back + 1}'s"))
    return out
