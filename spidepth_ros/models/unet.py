"""U-Net over a timm ``features_only`` backbone (official ``networks/Unet.py`` design).

Parameter names match the official ``encoder.pth`` (``encoder.*`` = timm FeatureListNet, ``decoder.blocks.*``,
``decoder.final_conv``). Output: ``[B, model_dim, H/2, W/2]`` for a backbone whose features have strides
4, 8, 16 and 32 (ConvNeXt by default; ResNets with ``out_indices=(1, 2, 3, 4)``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import timm
import torch
from torch import nn
from torch.nn import functional as F


class Conv2dBnAct(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU; children named ``conv``, ``bn``, ``act`` as upstream."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class DecoderBlock(nn.Module):
    """Upsample (to the skip's size, align_corners=True; or x2, align_corners=False), concat, 2 convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBnAct(in_channels, out_channels)
        self.conv2 = Conv2dBnAct(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """Decoder over reversed encoder features (deepest first)."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], final_channels: int) -> None:
        super().__init__()
        enc = list(encoder_channels)
        dec = list(decoder_channels)
        ins = [enc[0]] + dec[:-1]
        skips = enc[1:] + [0]
        in_channels = [i + s for i, s in zip(ins, skips)]
        if len(in_channels) < len(dec):
            in_channels.append(in_channels[-1] // 2)
        self.center = nn.Identity()
        self.blocks = nn.ModuleList(DecoderBlock(i, o) for i, o in zip(in_channels, dec))
        self.final_conv = nn.Conv2d(dec[-1], final_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[0])
        skips = features[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return self.final_conv(x)


class TimmUnet(nn.Module):
    """timm backbone + U-Net decoder. Input ``[B, 3, H, W]`` RGB in [0, 1] (no normalisation, as upstream)."""

    def __init__(self, backbone: str, model_dim: int = 32, decoder_channels: Sequence[int] = (1024, 512, 256, 128),
                 out_indices: Optional[Sequence[int]] = None, pretrained_path: Optional[str] = None) -> None:
        super().__init__()
        kwargs = {"features_only": True, "in_chans": 3, "pretrained": False}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if pretrained_path:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained_path)})
        self.encoder = timm.create_model(backbone, **kwargs)
        channels = list(reversed(self.encoder.feature_info.channels()))
        self.decoder = UnetDecoder(channels, decoder_channels, model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        features.reverse()
        return self.decoder(features)
