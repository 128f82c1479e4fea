"""Direct pose refinement: a few optimisation steps on each pair's 6-DoF pose, the depth held fixed.

Two optimisers: :func:`refine_transforms_lm` (the default, ``pose.refine_method: lm``), Levenberg-Marquardt on
the Huber-weighted colour residual with an analytic Jacobian, coarse to fine, and :func:`refine_transforms`
(``adam``), Adam steps on the training loss's SSIM + L1 error. On the truth-fed oracle (test_loss_oracle.py)
5 LM iterations on 3 levels land as close to the true translation as 20 Adam steps, at ~1/7 of the time.


A PoseNet learns real camera motion far too slowly on a CPU budget (its head scales its output by 0.01; see
docs/real_data.md), while free pose parameters optimised by the same photometric loss converge within tens of
steps. So, per batch: start from PoseNet's transform, optimise a correction ``[R(da) | dt] @ T`` for
``steps`` Adam steps on the view-synthesis error with the depth detached, and let the depth network learn from
the refined poses. PoseNet is trained towards the refined poses (an L1 on the transform entries), so it becomes
a better starting point batch after batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from .losses import photometric_error
from .warping import axis_angle_to_matrix, backproject, warp


def compose_correction(delta_rotation: torch.Tensor, delta_translation: torch.Tensor,
                       transform: torch.Tensor) -> torch.Tensor:
    """``[R(da) | dt] @ T`` for ``[B, 3]`` corrections and ``[B, 4, 4]`` transforms."""
    correction = torch.zeros_like(transform)
    correction[:, :3, :3] = axis_angle_to_matrix(delta_rotation)
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
    rotation_saturated: torch.Tensor   # [num_sources * B] bool: the rotation correction hit its step limit


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
    refined, saturated, rotation_saturated = [], [], []
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
            rotation_saturated.append(da.detach().abs().amax(dim=1) >= SATURATION_SHARE * steps * lr_rotation)
    empty = torch.zeros(0, dtype=torch.bool)
    return RefinedPoses(refined, torch.cat(saturated) if saturated else empty,
                        torch.cat(rotation_saturated) if rotation_saturated else empty)


# -- Levenberg-Marquardt on the photometric residual ----------------------------------------------------------

#: Huber threshold on a colour residual (image values in [0, 1]): residuals beyond it (occlusions, moving
#: objects, specularities) pull linearly instead of quadratically
HUBER_DELTA = 0.1
#: LM damping: the starting value, and the factors it shrinks by after a better step and grows by after a worse one
LM_DAMPING = 1e-2
LM_SHRINK = 4.0
LM_GROW = 4.0
AUTOMASK_FROM_LEVEL = 1


def intrinsics_at_level(k: torch.Tensor, level: int) -> torch.Tensor:
    """``K`` ``[B, 3+, 3+]`` of an image downsampled ``2**level`` times by 2x2 averaging, pixel-centre convention:
    a pixel centre ``u`` of the full image lies at ``(u + 0.5) / s - 0.5`` of the small one."""
    s = 2.0 ** level
    out = k[:, :3, :3].clone()
    out[:, 0, 0] /= s
    out[:, 1, 1] /= s
    out[:, 0, 2] = (out[:, 0, 2] + 0.5) / s - 0.5
    out[:, 1, 2] = (out[:, 1, 2] + 0.5) / s - 0.5
    return out


def _central_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/du and d/dv of ``[B, C, H, W]`` by central differences (one-sided at the border)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gu = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gv = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return gu, gv


def _huber(residual: torch.Tensor, delta: float) -> torch.Tensor:
    a = residual.abs()
    return torch.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta))


@dataclass
class _Level:
    """One pyramid level of one pair: images, target points and the identity (no-motion) cost per pixel."""

    target: torch.Tensor        # [B, C, N] target colours
    source_stack: torch.Tensor  # [B, 3C, H, W] source colours and their d/du, d/dv
    points: torch.Tensor        # [B, 3, N] target points (target camera, model units)
    identity_cost: torch.Tensor  # [B, N] Huber cost of the unwarped source
    k: torch.Tensor             # [B, 3, 3]
    height: int
    width: int


def _make_level(depth, target, source, k, level: int) -> _Level:
    if level:
        f = 2 ** level
        # average inverse depth: a 2x2 block across an edge keeps its near surface's weight, as the image does
        depth = 1.0 / F.avg_pool2d(1.0 / depth, f)
        target = F.avg_pool2d(target, f)
        source = F.avg_pool2d(source, f)
    b, c, h, w = target.shape
    kl = intrinsics_at_level(k, level)
    points = backproject(depth, torch.linalg.inv(kl))
    gu, gv = _central_gradients(source)
    identity = _huber(source - target, HUBER_DELTA).sum(1).reshape(b, -1)
    return _Level(target.reshape(b, c, -1), torch.cat([source, gu, gv], 1), points, identity, kl, h, w)


def _evaluate(level: _Level, transform: torch.Tensor, want_jacobian: bool, translation_unit: torch.Tensor,
              automask: bool = True, brightness: Optional[torch.Tensor] = None):
    """Per-pair robust cost ``[B]`` of ``transform`` ``[B, 4, 4]`` and, if asked, the Gauss-Newton system
    (``H [B, 8, 8]``, ``g [B, 8]``) of a left correction ``[exp(da) | dt * translation_unit]`` and of the source's
    brightness ``[B, 2]`` (gain - 1, bias; None: 1 and 0).

    Cost per pixel: ``min(huber(I_s(warp(u)) - I_t(u)), huber(I_s(u) - I_t(u)))`` summed over channels (the
    identity term is the automask of the training loss: a pixel a static camera explains better does not pull
    the pose), averaged over pixels; a pixel warped outside the source image or behind it costs its identity.
    """
    b, c, n = level.target.shape
    q = transform[:, :3, :3] @ level.points + transform[:, :3, 3:]          # [B, 3, N] source camera
    x, y, z = q.unbind(1)
    z_safe = z.clamp_min(1e-6)
    fx, fy = level.k[:, 0, 0, None], level.k[:, 1, 1, None]
    u = fx * x / z_safe + level.k[:, 0, 2, None]
    v = fy * y / z_safe + level.k[:, 1, 2, None]
    valid = (z > 1e-6) & (u >= 0) & (u <= level.width - 1) & (v >= 0) & (v <= level.height - 1)
    grid = torch.stack([u / (level.width - 1) * 2 - 1, v / (level.height - 1) * 2 - 1], -1).view(b, 1, n, 2)
    sampled = F.grid_sample(level.source_stack, grid, mode="bilinear", padding_mode="border",
                            align_corners=True)[:, :, 0]                     # [B, 3C, N]
    if brightness is None:
        brightness = torch.zeros(b, 2, dtype=transform.dtype, device=transform.device)
    gain = 1 + brightness[:, 0, None, None]                                  # [B, 1, 1]
    # the source's exposure may differ (auto-exposure): its colours are matched as gain * source + bias
    residual = gain * sampled[:, :c] + brightness[:, 1, None, None] - level.target     # [B, C, N]
    warped_cost = _huber(residual, HUBER_DELTA).sum(1)
    used = valid & (warped_cost < level.identity_cost) if automask else valid
    cost = torch.where(used, warped_cost, level.identity_cost).mean(1)
    if not want_jacobian:
        return cost, None, None
    gu, gv = sampled[:, c:2 * c], sampled[:, 2 * c:]                         # [B, C, N]
    inv_z = 1.0 / z_safe
    # d(u, v)/dq, then dq/d(da, dt) = [-[q]x | I] for the left correction
    du_dq = torch.stack([fx * inv_z, torch.zeros_like(x), -fx * x * inv_z ** 2], 1)      # [B, 3, N]
    dv_dq = torch.stack([torch.zeros_like(x), fy * inv_z, -fy * y * inv_z ** 2], 1)

    def through_correction(d_dq: torch.Tensor) -> torch.Tensor:              # [B, 3, N] -> [B, 6, N]
        a, bb, cc = d_dq.unbind(1)
        rot = torch.stack([y * cc - z * bb, z * a - x * cc, x * bb - y * a], 1)   # d . (e_i x q) = (q x d)_i
        return torch.cat([rot, d_dq * translation_unit[:, None, None]], 1)

    ju, jv = through_correction(du_dq), through_correction(dv_dq)           # [B, 6, N]
    jac = gain[..., None] * (gu[:, :, None] * ju[:, None] + gv[:, :, None] * jv[:, None])    # [B, C, 6, N]
    # and d residual / d (gain - 1, bias): the sampled source colour, and 1
    jac = torch.cat([jac, sampled[:, :c, None], torch.ones_like(sampled[:, :c, None])], 2)  # [B, C, 8, N]
    # IRLS weights of the Huber cost, zero where the pixel is not used
    weight = torch.where(residual.abs() <= HUBER_DELTA, torch.ones_like(residual),
                         HUBER_DELTA / residual.abs().clamp_min(1e-12)) * used[:, None]
    wj = jac * weight[:, :, None]
    hessian = torch.einsum("bcin,bcjn->bij", wj, jac) / n
    gradient = torch.einsum("bcin,bcn->bi", wj, residual) / n
    return cost, hessian, gradient


def _correct(transform: torch.Tensor, step: torch.Tensor, translation_unit: torch.Tensor) -> torch.Tensor:
    return compose_correction(step[:, :3], step[:, 3:6] * translation_unit[:, None], transform)


@dataclass
class LMResult:
    """What :func:`refine_transforms_lm` found, per source."""

    transforms: list[torch.Tensor]     # refined, detached target-to-source transforms [B, 4, 4]
    start_cost: torch.Tensor           # [num_sources * B] full-resolution cost of the chosen start
    final_cost: torch.Tensor           # [num_sources * B] and of the refined transform
    start_index: torch.Tensor          # [num_sources * B] which candidate start each pair began from


def refine_transforms_lm(depth: torch.Tensor, target: torch.Tensor, sources: list[torch.Tensor],
                         starts: list[list[torch.Tensor]], k: torch.Tensor, iterations: int = 3,
                         levels: int = 3, rotation_stiffness: float = 0.0) -> LMResult:
    """Levenberg-Marquardt refinement of each pair's 6-DoF pose on the photometric residual, depth held fixed.

    ``depth`` ``[B, 1, H, W]`` (model units), ``target`` and ``sources`` ``[B, 3, H, W]`` in [0, 1], ``k``
    ``[B, 3+, 3+]`` pixels of the ``H x W`` images. ``starts[i]`` lists candidate target-to-source transforms
    ``[B, 4, 4]`` for source ``i`` (e.g. the image rotation with no translation, and PoseNet's pose): per pair,
    the one with the lowest full-resolution cost is refined. ``iterations`` LM iterations run on each of
    ``levels`` pyramid levels, coarse to fine (a 2x2-averaged level widens the basin of convergence by 2x).

    The refined pose is ``[exp(a) | t * median depth] @ start``: the translation in units of each target's median
    depth, so the damping and the step are independent of the monocular depth's arbitrary scale.
    ``rotation_stiffness`` > 0 adds ``0.5 w |a|^2`` to each pair's cost, ``w`` that many times the data's own
    curvature in rotation (mean of the rotation block's diagonal at the level's first evaluation): a start whose
    rotation was measured (from feature tracks, ~0.2 deg) is kept unless the images insist, so that a still
    inaccurate depth cannot trade that rotation for a translation (on a near-flat depth map they look alike).
    A step is kept only if it lowers the cost (then the damping shrinks), otherwise the damping grows: the cost
    never increases.
    """
    depth = depth.detach().float()
    unit = depth.flatten(1).median(1).values                                 # [B] model units
    refined, start_costs, final_costs, chosen = [], [], [], []
    with torch.no_grad():
        for source, candidates in zip(sources, starts):
            full = _make_level(depth, target, source, k, 0)
            costs = torch.stack([_evaluate(full, c.detach().float(), False, unit)[0] for c in candidates])
            best = costs.argmin(0)                                           # [B]
            start = torch.stack([c.detach().float() for c in candidates])[best, torch.arange(len(best))]
            start_cost = costs.min(0).values
            # (a, t) of the correction and the source's (gain - 1, bias)
            x = torch.zeros(len(best), 8, dtype=start.dtype, device=start.device)
            for level_index in reversed(range(levels)):
                level = full if level_index == 0 else _make_level(depth, target, source, k, level_index)
                automask = level_index < AUTOMASK_FROM_LEVEL
                data_cost, hessian, gradient = _evaluate(level, _correct(start, x, unit), True, unit, automask,
                                                         x[:, 6:])
                weight = rotation_stiffness * hessian[:, :3, :3].diagonal(dim1=1, dim2=2).mean(1)     # [B]
                prior_h = torch.diag_embed(torch.cat([weight[:, None].expand(-1, 3), torch.zeros_like(x[:, 3:])], 1))
                zeros = torch.zeros_like(x[:, 3:])

                def with_prior(cost, h, g, state):
                    rot = state[:, :3]
                    return (cost + 0.5 * weight * (rot * rot).sum(1), h + prior_h,
                            g + torch.cat([weight[:, None] * rot, zeros], 1))

                cost, hessian, gradient = with_prior(data_cost, hessian, gradient, x)
                damping = torch.full_like(cost, LM_DAMPING)
                for _ in range(iterations):
                    diag = hessian.diagonal(dim1=1, dim2=2)
                    system = hessian + torch.diag_embed(damping[:, None] * diag + 1e-9)
                    step = torch.nan_to_num(-torch.linalg.solve(system, gradient[..., None])[..., 0])
                    proposal = x + step
                    new_data, new_h, new_g = _evaluate(level, _correct(start, proposal, unit), True, unit, automask,
                                                       proposal[:, 6:])
                    new_cost, new_h, new_g = with_prior(new_data, new_h, new_g, proposal)
                    better = new_cost < cost
                    data_cost = torch.where(better, new_data, data_cost)
                    x = torch.where(better[:, None], proposal, x)
                    hessian = torch.where(better[:, None, None], new_h, hessian)
                    gradient = torch.where(better[:, None], new_g, gradient)
                    cost = torch.where(better, new_cost, cost)
                    damping = torch.where(better, damping / LM_SHRINK, damping * LM_GROW)
            transform = _correct(start, x, unit)
            refined.append(transform)
            start_costs.append(start_cost)
            final_costs.append(data_cost)    # the full-resolution level's, automasked: the start cost's measure
            chosen.append(best)
    return LMResult(refined, torch.cat(start_costs), torch.cat(final_costs), torch.cat(chosen))
