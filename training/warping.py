"""View-synthesis geometry in torch (batch and size taken from the inputs, nothing baked in).

Same conventions as :mod:`spidepth_ros.geometry` (optical frame, integer pixel centres, ``T`` maps points
from the target camera into the source camera); a parity test checks both agree.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues. ``[B, 3]`` (or ``[B, 1, 1, 3]``) radians -> ``[B, 3, 3]``; the torch twin of
    :func:`spidepth_ros.geometry.axis_angle_to_matrix` (parity-tested).

    Written as ``cos(t) I + (sin(t)/t) [v]x + ((1 - cos(t))/t^2) v v^T`` with the coefficients' Taylor series
    below 1e-3 rad, so it is exact at zero and so is its gradient (the ``v / (|v| + eps)`` form upstream uses
    has a zero gradient there: a pose correction starting at zero could never rotate).
    """
    v = axis_angle.reshape(-1, 3)
    theta2 = (v * v).sum(1)[:, None, None]
    small = theta2 < 1e-6
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    sinc = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    cosc = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    cos = torch.where(small, 1 - theta2 / 2, torch.cos(theta))
    x, y, z = v.unbind(1)
    o = torch.zeros_like(x)
    skew = torch.stack([o, -z, y, z, o, -x, -y, x, o], 1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(skew)
    return cos * eye + sinc * skew + cosc * (v[:, :, None] * v[:, None, :])


def pose_from_axis_angle(axis_angle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """PoseNet outputs -> ``[B, 4, 4]`` ``cam_T_cam`` (``invert=True`` for the previous frame's pair)."""
    r = axis_angle_to_matrix(axis_angle)
    t = translation.reshape(-1, 3, 1)
    m = torch.zeros(r.shape[0], 4, 4, dtype=r.dtype, device=r.device)
    m[:, 3, 3] = 1
    if invert:
        rt = r.transpose(1, 2)
        m[:, :3, :3] = rt
        m[:, :3, 3:] = -rt @ t
    else:
        m[:, :3, :3] = r
        m[:, :3, 3:] = t
    return m


def scale_translation_by_mean_inverse_depth(translation: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """PoseNet translation ``[B, ..., 3]`` x mean inverse target depth -> ``[B, 3]`` (upstream trainer's rule).

    The official ``trainer.generate_images_pred`` does this for its ``posecnn`` PoseNet without stereo (after
    arXiv 1712.00175): PoseNet's output is read as translation relative to the scene's depth. It does *not* make
    the warp independent of the depth's scale: with depth x s the translation becomes t / s while the points are
    s times farther, so the translation's share of the image motion changes by 1/s^2 (the rotation's not at
    all). We keep it for parity with the official trainer (test_official_loss_parity.py);
    ``loss.translation_scaling: none`` turns it off. ``depth``: ``[B, 1, H, W]``; not detached, as upstream
    (the depth gets gradient through this too).
    """
    mean_inv_depth = (1.0 / depth).mean(dim=(2, 3)).reshape(-1, 1)
    return translation.reshape(-1, 3) * mean_inv_depth


def scale_translation_by_harmonic_mean_depth(translation: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """PoseNet translation ``[B, ..., 3]`` as a fraction of the target's harmonic-mean depth -> ``[B, 3]``.

    ``loss.translation_scaling: depth_relative``: the translation is ``raw / mean(1/depth)``, so PoseNet predicts
    motion relative to the scene (hand-held ~0.02 per pair, driving ~0.1) whatever scale the depth network has
    drifted to, and a depth scaled by s scales the translation by s: the warp is unchanged (the upstream rule
    above changes it by 1/s^2). The harmonic mean weighs the near pixels, which carry the parallax. ``depth``:
    ``[B, 1, H, W]``, not detached (as upstream's rule).
    """
    mean_inv_depth = (1.0 / depth).mean(dim=(2, 3)).reshape(-1, 1)
    return translation.reshape(-1, 3) / mean_inv_depth


def pixel_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[3, H*W]`` homogeneous integer pixel coordinates (u, v, 1), row-major ('ij' over rows, cols)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], 0)


def backproject(depth: torch.Tensor, inv_k: torch.Tensor) -> torch.Tensor:
    """Depth ``[B, 1, H, W]`` + ``inv_K`` ``[B, 3, 3]`` (or 4x4) -> points ``[B, 3, H*W]`` (optical frame)."""
    b, _, h, w = depth.shape
    rays = inv_k[:, :3, :3] @ pixel_grid(h, w, depth.dtype, depth.device)
    return rays * depth.reshape(b, 1, -1)


def project(points: torch.Tensor, k: torch.Tensor, t: torch.Tensor, height: int, width: int,
            eps: float = 1e-7) -> torch.Tensor:
    """Points ``[B, 3, N]`` in the target camera -> ``grid_sample`` grid ``[B, H, W, 2]`` in the source image.

    ``t`` ``[B, 4, 4]`` maps target to source; ``k`` ``[B, 3, 3]`` (or 4x4) is in pixels.
    Normalisation ``2 u / (W - 1) - 1`` pairs with ``align_corners=True`` (the upstream choice).
    """
    cam = t[:, :3, :3] @ points + t[:, :3, 3:]
    pix = k[:, :3, :3] @ cam
    uv = pix[:, :2] / (pix[:, 2:3] + eps)
    u = uv[:, 0] / (width - 1) * 2 - 1
    v = uv[:, 1] / (height - 1) * 2 - 1
    return torch.stack([u, v], -1).view(-1, height, width, 2)


def warp(source: torch.Tensor, depth: torch.Tensor, k: torch.Tensor, inv_k: torch.Tensor,
         t: torch.Tensor) -> torch.Tensor:
    """Synthesise the target view from ``source`` ``[B, C, H, W]`` given target depth and ``T`` (target->source)."""
    h, w = depth.shape[-2:]
    grid = project(backproject(depth, inv_k), k, t, h, w)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)


def derotate(source: torch.Tensor, rotation: torch.Tensor, k: torch.Tensor, inv_k: torch.Tensor) -> torch.Tensor:
    """``source`` ``[B, C, H, W]`` resampled into the target camera's orientation: the warp with the target-to-
    source ``rotation`` ``[B, 3, 3]`` and no translation (the homography ``K R K^-1``, independent of depth), so
    that what still differs from the target is translation parallax and the rotation's error."""
    b, _, h, w = source.shape
    t = torch.eye(4, dtype=source.dtype, device=source.device).repeat(b, 1, 1)
    t[:, :3, :3] = rotation
    ones = torch.ones(b, 1, h, w, dtype=source.dtype, device=source.device)
    return warp(source, ones, k, inv_k, t)

