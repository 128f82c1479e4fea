"""DepthNet = encoder-decoder (``encoder.pth``) + Self Query Layer head (``depth.pth``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..presets import ModelPreset
from .posenet import PoseNet
from .resnet_encdec import ResnetEncoderDecoder
from .sql_decoder import SelfQueryDepthHead
from .unet import TimmUnet


class DepthNet(nn.Module):
    """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, 1, H/2, W/2]`` depth in (min_depth, max_depth) model units."""

    def __init__(self, preset: ModelPreset, backbone_weights: Optional[str] = None) -> None:
        super().__init__()
        self.preset = preset
        if preset.encoder_type == "unet":
            self.encoder: nn.Module = TimmUnet(preset.backbone, preset.model_dim, preset.decoder_channels,
                                               preset.out_indices, pretrained_path=backbone_weights)
        elif preset.encoder_type == "resnet_encdec":
            layers = int(preset.backbone.removeprefix("resnet"))
            self.encoder = ResnetEncoderDecoder(layers, preset.resnet_features, preset.model_dim)
        else:
            raise ValueError(f"unknown encoder_type {preset.encoder_type!r}; use 'unet' or 'resnet_encdec'")
        self.depth_decoder = SelfQueryDepthHead(
            embedding_dim=preset.model_dim, patch_size=preset.patch_size, query_nums=preset.query_nums,
            dim_out=preset.dim_out, transformer_ff=preset.transformer_ff, min_depth=preset.min_depth,
            max_depth=preset.max_depth)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a clear error before running for sizes the Self Query Layer cannot take."""
        self.depth_decoder.check_feature_size(height // 2, width // 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.depth_decoder(self.encoder(image))


def build_depth_net(preset: ModelPreset, backbone_weights: Optional[str] = None) -> DepthNet:
    """Random-init DepthNet for ``preset``; ``backbone_weights`` is a local timm checkpoint file (optional)."""
    return DepthNet(preset, backbone_weights)


def build_pose_net(preset: ModelPreset, backbone_weights: Optional[str] = None) -> PoseNet:
    return PoseNet(preset.pose_backbone, backbone_weights)
