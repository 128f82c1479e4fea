"""Official ``ResnetEncoderDecoder`` (``resnet_lite`` configs): torchvision ResNet-50 + ``DecoderBN``.

Keys match the official ``encoder.pth``: ``encoder.encoder.*`` (the whole torchvision model, unused ``fc``
included) and ``decoder.*``. Output ``[B, model_dim, H/2, W/2]``.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

#: Normalisation the official ResNet encoder applies to its [0, 1] input, inside the network.
RESNET_INPUT_MEAN = 0.45
RESNET_INPUT_STD = 0.225
#: Skip channels of torchvision ResNet-50 at strides 16, 8, 4, 2 (hard-coded upstream, as here).
RESNET50_SKIP_CHANNELS = (1024, 512, 256, 64)
RESNET50_BOTTLENECK = 2048


class ResnetEncoder(nn.Module):
    """torchvision ResNet returning the 5 feature maps at strides 2, 4, 8, 16, 32."""

    def __init__(self, num_layers: int = 50) -> None:
        super().__init__()
        builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                    50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if num_layers not in builders:
            raise ValueError(f"ResNet depth {num_layers} not supported; use one of {sorted(builders)}")
        self.encoder = builders[num_layers](weights=None)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - RESNET_INPUT_MEAN) / RESNET_INPUT_STD
        e = self.encoder
        f0 = e.relu(e.bn1(e.conv1(x)))
        f1 = e.layer1(e.maxpool(f0))
        f2 = e.layer2(f1)
        f3 = e.layer3(f2)
        f4 = e.layer4(f3)
        return [f0, f1, f2, f3, f4]


class UpSampleBN(nn.Module):
    """Resize to the skip (align_corners=True), concat, [3x3 conv -> BN -> LeakyReLU] x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


class DecoderBN(nn.Module):
    """AdaBins-style decoder. ``conv2`` is a 1x1 conv with padding=1 (an upstream quirk, kept on purpose)."""

    def __init__(self, num_features: int = 256, num_classes: int = 32,
                 bottleneck_features: int = RESNET50_BOTTLENECK,
                 skip_channels: tuple[int, int, int, int] = RESNET50_SKIP_CHANNELS) -> None:
        super().__init__()
        nf = num_features
        self.conv2 = nn.Conv2d(bottleneck_features, nf, kernel_size=1, stride=1, padding=1)
        self.up1 = UpSampleBN(nf + skip_channels[0], nf // 2)
        self.up2 = UpSampleBN(nf // 2 + skip_channels[1], nf // 4)
        self.up3 = UpSampleBN(nf // 4 + skip_channels[2], nf // 8)
        self.up4 = UpSampleBN(nf // 8 + skip_channels[3], nf // 16)
        self.conv3 = nn.Conv2d(nf // 16, num_classes, kernel_size=3, stride=1, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f0, f1, f2, f3, f4 = features
        x = self.conv2(f4)
        x = self.up1(x, f3)
        x = self.up2(x, f2)
        x = self.up3(x, f1)
        x = self.up4(x, f0)
        return self.conv3(x)


class ResnetEncoderDecoder(nn.Module):
    """ResNet-50 encoder + ``DecoderBN``; input ``[B, 3, H, W]`` RGB in [0, 1]."""

    def __init__(self, num_layers: int = 50, num_features: int = 256, model_dim: int = 32) -> None:
        super().__init__()
        if num_layers != 50:
            raise ValueError("the official DecoderBN skip widths are those of ResNet-50; num_layers must be 50")
        self.encoder = ResnetEncoder(num_layers)
        self.decoder = DecoderBN(num_features=num_features, num_classes=model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
