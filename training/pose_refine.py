"""Direct pose refinement: a few optimisation steps on each pair's 6-DoF pose, the depth held fixed.

A PoseNet learns real camera motion far too slowly on a CPU budget (its head scales its output by 0.01; see
docs/real_data.md), while free pose parameters optimised by the same photometric loss converge within tens of
steps. So, per batch: start from PoseNet's transform, optimise a correction ``[R(da) | dt] @ T`` for
``steps`` Adam steps on the view-synthesis error with the depth detached, and let the depth network learn from
the refined poses. PoseNet is trained towards the refined poses (an L1 on the transform entries), so it becomes
a better starting point batch after batch.
"""
from __future__ import annotations

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


def refine_transforms(depth: torch.Tensor, target: torch.Tensor, sources: list[torch.Tensor],
                      transforms: list[torch.Tensor], k: torch.Tensor, inv_k: torch.Tensor, steps: int,
                      lr_translation: float, lr_rotation: float, ssim_alpha: float = 0.85,
                      ssim_window: int = 7) -> list[torch.Tensor]:
    """Refined (detached) target-to-source transforms, one per source.

    The objective per pair is the mean over pixels of ``min(reprojection, identity)`` error (identity: the source
    unwarped), so static or textureless pixels do not pull the pose. ``depth`` ``[B, 1, H, W]`` is not changed.
    ``lr_translation`` is a fraction of each target's median depth per step: the depth's scale is arbitrary in
    monocular training, and a step in model units would be too small for one scale and too large for another
    (the median, not the mean: a few far pixels would inflate the step).
    """
    depth = depth.detach()
    depth_scale = depth.flatten(1).median(1).values[:, None]      # [B, 1]: the translation's natural unit
    refined = []
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
    return refined
