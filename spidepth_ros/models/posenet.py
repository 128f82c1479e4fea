"""SPIdepth's "strengthened" PoseNet: a timm backbone over a 6-channel frame pair.

Input ``[B, 6, H, W]`` = two RGB frames in [0, 1], concatenated in temporal order. Output: axis-angle
``[B, 1, 1, 3]`` (radians) and translation ``[B, 1, 1, 3]`` (model units), scaled by 0.01 as upstream.
Keys match the official ``pose.pth``.
"""
from __future__ import annotations

from typing import Optional

import timm
import torch
from torch import nn

#: Output scaling of the pose head (upstream constant; keeps initial motions small).
POSE_OUTPUT_SCALE = 0.01


class PoseNet(nn.Module):
    def __init__(self, backbone: str = "resnet18", pretrained_path: Optional[str] = None) -> None:
        super().__init__()
        kwargs = {"features_only": True, "in_chans": 6, "pretrained": False}
        if pretrained_path:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_path)})
        self.encoder = timm.create_model(backbone, **kwargs)
        last = self.encoder.feature_info.channels()[-1]
        self.squeeze = nn.Sequential(nn.Conv2d(last, 256, kernel_size=1), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.Sequential(nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True)),
            nn.Sequential(nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True)),
            nn.Conv2d(256, 6, kernel_size=1))

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(pair)[-1]
        x = self.decoder(self.squeeze(x))
        x = POSE_OUTPUT_SCALE * x.mean(dim=(2, 3)).view(-1, 1, 1, 6)
        return x[..., :3], x[..., 3:]
