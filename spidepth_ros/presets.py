"""Named SPIdepth model configurations.

A preset carries everything the official weights do not store: the input size the network was trained at,
the depth range of the Self Query Layer bins (``min_depth``/``max_depth`` change the output but live in no
checkpoint) and the input normalisation. Shapes that *are* stored (patch size, query count, bin count, FFN
width) are also here, so a checkpoint's preset can be recognised from its tensor shapes
(:func:`spidepth_ros.checkpoint.detect_preset`).

Input convention for every preset: RGB, float32 in [0, 1], NCHW. ConvNeXt backbones take it as is; the
ResNet-50 encoder normalises internally with ``(x - 0.45) / 0.225`` (part of the network, as in the official
code), so no preset asks the caller to normalise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

#: Official KITTI depth range (metres, or model units for monocular training).
KITTI_MIN_DEPTH = 0.001
KITTI_MAX_DEPTH = 80.0


@dataclass(frozen=True)
class ModelPreset:
    """One DepthNet (+ PoseNet) configuration.

    Attributes:
        name: registry key.
        encoder_type: ``"unet"`` (timm ``features_only`` backbone + U-Net decoder) or ``"resnet_encdec"``
            (torchvision ResNet-50 + ``DecoderBN``, the official ``resnet_lite`` branch).
        backbone: timm model name for ``"unet"``; ``"resnet50"`` for ``"resnet_encdec"``.
        height, width: network input size in pixels. The depth output is ``height/2 x width/2``.
        model_dim: channels of the U-Net output = Self Query Layer embedding size E.
        patch_size: Self Query Layer patch size P (on the half-resolution feature map).
        query_nums: number of queries Q (needs ``patches >= Q``).
        dim_out: number of depth bins D.
        transformer_ff: feed-forward width of the transformer (1024 full, 512 "Lite").
        decoder_channels: U-Net decoder widths, deepest first.
        out_indices: timm ``features_only`` indices; None keeps the backbone's default (official behaviour).
        resnet_features: ``DecoderBN`` bottleneck width ``nf`` (resnet_encdec only).
        min_depth, max_depth: bin range of the Self Query Layer, in model units.
        pose_backbone: timm backbone of the PoseNet (6-channel input).
        official: True for the configurations published with SPIdepth.
        description: one line for ``--help`` and docs.
    """

    name: str
    encoder_type: str
    backbone: str
    height: int
    width: int
    patch_size: int
    query_nums: int
    dim_out: int
    transformer_ff: int
    model_dim: int = 32
    decoder_channels: tuple[int, ...] = (1024, 512, 256, 128)
    out_indices: Optional[tuple[int, ...]] = None
    resnet_features: int = 256
    min_depth: float = KITTI_MIN_DEPTH
    max_depth: float = KITTI_MAX_DEPTH
    pose_backbone: str = "resnet18"
    official: bool = False
    description: str = ""
    input_mean: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    input_std: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    @property
    def output_height(self) -> int:
        return self.height // 2

    @property
    def output_width(self) -> int:
        return self.width // 2

    def num_patches(self, height: Optional[int] = None, width: Optional[int] = None) -> int:
        """Self Query Layer token count S for an input of ``height x width`` (default: the preset's)."""
        h = (height or self.height) // 2
        w = (width or self.width) // 2
        return (h // self.patch_size) * (w // self.patch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ModelPreset":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preset fields {sorted(unknown)}; known fields: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def replace(self, **changes) -> "ModelPreset":
        data = self.to_dict()
        data.update(changes)
        return ModelPreset.from_dict(data)


#: Maximum number of Self Query Layer tokens (rows of the learned positional encoding).
MAX_PATCHES = 500

PRESETS: dict[str, ModelPreset] = {}


def register_preset(preset: ModelPreset) -> ModelPreset:
    PRESETS[preset.name] = preset
    return preset


register_preset(ModelPreset(
    name="cvnxt_h_320x1024", encoder_type="unet", backbone="convnextv2_huge", height=320, width=1024,
    patch_size=32, query_nums=64, dim_out=64, transformer_ff=1024, official=True,
    description="Official SPIdepth ConvNeXtV2-Huge U-Net, KITTI 320x1024 (args_files/hisfog/kitti/cvnXt_H)."))
register_preset(ModelPreset(
    name="cvnxt_l_320x1024", encoder_type="unet", backbone="convnext_large", height=320, width=1024,
    patch_size=32, query_nums=64, dim_out=64, transformer_ff=1024, official=True,
    description="Official SPIdepth ConvNeXt-Large U-Net, KITTI 320x1024 (cvnXt_L)."))
register_preset(ModelPreset(
    name="resnet50_192x640", encoder_type="resnet_encdec", backbone="resnet50", height=192, width=640,
    patch_size=16, query_nums=64, dim_out=64, transformer_ff=512, official=True,
    description="Official ResNet-50 encoder-decoder + Lite Self Query Layer, KITTI 192x640."))
register_preset(ModelPreset(
    name="resnet50_320x1024", encoder_type="resnet_encdec", backbone="resnet50", height=320, width=1024,
    patch_size=20, query_nums=128, dim_out=128, transformer_ff=512, min_depth=0.01, official=True,
    description="Official ResNet-50 encoder-decoder + Lite Self Query Layer, KITTI 320x1024 (min depth 0.01)."))
register_preset(ModelPreset(
    name="small_r18_96x320", encoder_type="unet", backbone="resnet18", height=96, width=320,
    patch_size=8, query_nums=32, dim_out=32, transformer_ff=256, decoder_channels=(128, 64, 32, 16),
    out_indices=(1, 2, 3, 4), min_depth=KITTI_MIN_DEPTH, max_depth=40.0,
    description="Small timm ResNet-18 U-Net for CPUs and the synthetic demo (96x320, bins 0.001-40)."))
register_preset(ModelPreset(
    name="small_r18_192x640", encoder_type="unet", backbone="resnet18", height=192, width=640,
    patch_size=16, query_nums=32, dim_out=32, transformer_ff=256, decoder_channels=(128, 64, 32, 16),
    out_indices=(1, 2, 3, 4), min_depth=KITTI_MIN_DEPTH, max_depth=80.0,
    description="Small timm ResNet-18 U-Net at KITTI's 192x640."))


def get_preset(name: str) -> ModelPreset:
    """Return the preset called ``name`` or raise a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
