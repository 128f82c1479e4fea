"""Self-supervised losses of SPIdepth (reference section 5.3), as small functions and one module.

* photometric error: ``0.85 * (1 - SSIM)/2 (7x7) + 0.15 * L1``, channel-averaged, per pixel;
* per-pixel minimum over reprojection errors of all sources, with identity (unwarped) errors in the
  minimum as automasking (tiny noise breaks ties, as upstream);
* edge-aware smoothness of mean-normalised **depth** (weight 1e-3);
* (fine-tunes and the node's adaptation; not in the reference) a scale anchor: each frame's mean log depth held to a reference's.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import LossConfig
from .warping import warp

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """``clamp((1 - SSIM) / 2, 0, 1)`` per pixel and channel; ``window x window`` mean filter, reflect-padded."""
    pad = window // 2
    x = F.pad(x, (pad,) * 4, mode="reflect")
    y = F.pad(y, (pad,) * 4, mode="reflect")
    mu_x = F.avg_pool2d(x, window, 1)
    mu_y = F.avg_pool2d(y, window, 1)
    sigma_x = F.avg_pool2d(x * x, window, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, window, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, window, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - num / den) / 2, 0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.85,
                      ssim_window: int = 7) -> torch.Tensor:
    """``[B, 3, H, W]`` x2 -> ``[B, 1, H, W]``."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if alpha <= 0:
        return l1
    ssim = ssim_dissimilarity(pred, target, ssim_window).mean(1, keepdim=True)
    return alpha * ssim + (1 - alpha) * l1


def edge_aware_smoothness(depth: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Scalar: ``|d_x d| exp(-|d_x I|) + |d_y d| exp(-|d_y I|)`` on ``depth / mean(depth)``."""
    d = depth / (depth.mean(dim=(2, 3), keepdim=True) + 1e-7)
    gdx = (d[..., :, :-1] - d[..., :, 1:]).abs()
    gdy = (d[..., :-1, :] - d[..., 1:, :]).abs()
    gix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    giy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (gdx * torch.exp(-gix)).mean() + (gdy * torch.exp(-giy)).mean()


class SelfSupervisedLoss(nn.Module):
    """View-synthesis loss for one target frame and N source frames.

    ``forward(depth, target, sources, transforms, k, inv_k)``:
        depth: ``[B, 1, H, W]`` target depth (already upsampled to the image size).
        target: ``[B, 3, H, W]`` un-augmented target image in [0, 1].
        sources: list of ``[B, 3, H, W]`` un-augmented source images.
        transforms: list of ``[B, 4, 4]`` target-to-source camera transforms.
        k, inv_k: ``[B, 4, 4]`` intrinsics in pixels of the ``H x W`` images.
    Returns a dict: ``loss`` (scalar to optimise), ``photometric``, ``smoothness``, ``automask_fraction``
    (share of pixels where an identity error won), ``warped`` (list of synthesised images, detached).
    """

    def __init__(self, weights: LossConfig = LossConfig()) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, depth, target, sources, transforms, k, inv_k) -> dict:
        w = self.weights
        reprojection, warped = [], []
        for source, t in zip(sources, transforms):
            synth = warp(source, depth, k, inv_k, t)
            warped.append(synth.detach())
            reprojection.append(photometric_error(synth, target, w.ssim_alpha, w.ssim_window))
        errors = reprojection
        if w.automask:
            identity = [photometric_error(s, target, w.ssim_alpha, w.ssim_window) for s in sources]
            identity = [e + torch.randn_like(e) * 1e-5 for e in identity]
            errors = identity + reprojection
        stacked = torch.cat(errors, dim=1)
        min_err, idx = stacked.min(dim=1)
        photometric = min_err.mean()
        smooth = edge_aware_smoothness(depth, target)
        automask_fraction = (idx < len(sources)).float().mean() if w.automask else torch.zeros(())
        return {"loss": photometric + w.smoothness * smooth, "photometric": photometric.detach(),
                "smoothness": smooth.detach(), "automask_fraction": automask_fraction.detach(), "warped": warped}


def mean_log_depth(depth: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` depth (model units, > 0) -> ``[B]`` mean of its log: the frame's scale, as a number that
    changes by log(s) when the whole map is scaled by s."""
    return depth.clamp_min(1e-6).log().flatten(1).mean(dim=1)


def scale_anchor_loss(depth: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``(mean_log_depth(depth) - reference)^2``; ``reference``: ``[B]``, the same frames'
    mean log depth from the model training started from. Monocular training leaves the scale free, and on a
    stream it drifts frame by frame (a global correction cannot follow that); this holds every frame's scale where
    it was while the shape of the map learns. A 10 % scale change costs 0.0091."""
    return (mean_log_depth(depth) - reference).pow(2).mean()
