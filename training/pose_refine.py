"""Direct pose refinement: a few optimisation steps on each pair's 6-DoF pose, the depth held fixed.

A PoseNet learns real camera motion far too slowly on a CPU budget (its head scales its output by 0.01; see
docs/real_data.md), while free pose parameters optimised by the same photometric loss converge within tens of
steps. So, per batch: start from PoseNet's transform, optimise a correction ``[R(da) | dt] @ T`` for
``steps`` Adam steps on the view-synthesis error with the depth detached, and let the depth network learn from
the refined poses. PoseNet is trained towards the refined poses (an L1 on the transform entries), so it becomes
a better starting point batch after batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import photometric_error
from .warping import warp


def rotation_exp(axis_angle: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` -> ``[B, 3, 3]`` by the matrix exponential of the skew matrix: exact, and unlike the
    ``axis / |axis|`` form its gradient at zero is not zero (a correction starting at zero would never rotate)."""
    x, y, z = axis_angle.unbind(-1)
    o = torch.zeros_like(x)
    skew = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(-1, 3, 3)
    return torch.linalg.matrix_exp(skew)


def compose_correction(delta_rotation: torch.Tensor, delta_translation: torch.Tensor,
                       transform: torch.Tensor) -> torch.Tensor:
    """``[R(da) | dt] @ T`` for ``[B, 3]`` corrections and ``[B, 4, 4]`` transforms."""
    correction = torch.zeros_like(transform)
    correction[:, :3, :3] = rotation_exp(delta_rotation)
    correction[:, :3, 3] = delta_translation
    correction[:, 3, 3] = 1
    return correction @ transform


#: a translation correction that moved this share of the most its steps can move (steps x lr on one axis: Adam's
#: step never exceeds its learning rate) ran out of steps: the true translation probably lies further out
SATURATION_SHARE = 0.9


@dataclass
class RefinedPoses:
    """What :func:`refine_transforms` found."""

    transforms: list[torch.Tensor]     # per source: refined, detached target-to-source transforms [B, 4, 4]
    saturated: torch.Tensor            # [num_sources * B] bool: the translation correction hit its step limit


def refine_transforms(depth: torch.Tensor, target: torch.Tensor, sources: list[torch.Tensor],
                      transforms: list[torch.Tensor], k: torch.Tensor, inv_k: torch.Tensor, steps: int,
                      lr_translation: float, lr_rotation: float, ssim_alpha: float = 0.85,
                      ssim_window: int = 7) -> RefinedPoses:
    """Refined (detached) target-to-source transforms, one per source, and which pairs ran out of reach.

    The objective per pair is the mean over pixels of ``min(reprojection, identity)`` error (identity: the source
    unwarped), so static or textureless pixels do not pull the pose. ``depth`` ``[B, 1, H, W]`` is not changed.
    ``lr_translation`` is a fraction of each target's median depth per step: the depth's scale is arbitrary in
    monocular training, and a step in model units would be too small for one scale and too large for another
    (the median, not the mean: a few far pixels would inflate the step). So the translation correction can move at
    most ``steps * lr_translation`` of the median depth per axis; a pair that gets within ``SATURATION_SHARE`` of
    that is reported as saturated (the trainer warns when many are: docs/real_data.md, monocular synthetic).
    """
    depth = depth.detach()
    depth_scale = depth.flatten(1).median(1).values[:, None]      # [B, 1]: the translation's natural unit
    refined, saturated = [], []
    reach = steps * lr_translation
    with torch.enable_grad():
        for source, transform in zip(sources, transforms):
            transform = transform.detach()
            identity = photometric_error(source, target, ssim_alpha, ssim_window)
            b = transform.shape[0]
            da = torch.zeros(b, 3, dtype=transform.dtype, device=transform.device, requires_grad=True)
            dt = torch.zeros(b, 3, dtype=transform.dtype, device=transform.device, requires_grad=True)
            opt = torch.optim.Adam([{"params": [da], "lr": lr_rotation}, {"params": [dt], "lr": lr_translation}])
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                synth = warp(source, depth, k, inv_k, compose_correction(da, dt * depth_scale, transform))
                error = torch.minimum(photometric_error(synth, target, ssim_alpha, ssim_window), identity)
                # a sum over the batch so that each pair's own mean error drives its own correction
                error.mean(dim=(1, 2, 3)).sum().backward()
                opt.step()
            refined.append(compose_correction(da.detach(), dt.detach() * depth_scale, transform))
            saturated.append(dt.detach().abs().amax(dim=1) >= SATURATION_SHARE * reach)
    return RefinedPoses(refined, torch.cat(saturated) if saturated else torch.zeros(0, dtype=torch.bool))
