"""The official SPIdepth networks (github.com/Lavreniuk/SPIdepth), built from a local checkout for parity tests
and side-by-side benchmarks. Nothing is downloaded: the checkout's path comes from ``SPIDEPTH_OFFICIAL_REPO``
and the official encoder's ``pretrained=True`` download is replaced by empty torchvision networks."""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Optional

OFFICIAL_REPO_ENV = "SPIDEPTH_OFFICIAL_REPO"
_PACKAGE = "spidepth_official_networks"


def official_repo() -> Optional[Path]:
    """The checkout named by SPIDEPTH_OFFICIAL_REPO, if it holds networks/Unet.py."""
    root = os.environ.get(OFFICIAL_REPO_ENV, "")
    return Path(root) if root and (Path(root) / "networks" / "Unet.py").exists() else None


def official_module(module: str, repo: Path):
    if _PACKAGE not in sys.modules:
        pkg = types.ModuleType(_PACKAGE)
        pkg.__path__ = [str(repo / "networks")]
        sys.modules[_PACKAGE] = pkg
    return importlib.import_module(f"{_PACKAGE}.{module}")


def build_official(preset, repo: Path):
    """(encoder, depth decoder) of the official code for ``preset``, random weights, eval mode."""
    if preset.encoder_type == "unet":
        enc = official_module("Unet", repo).Unet(pretrained=False, backbone=preset.backbone, in_channels=3,
                                                 num_classes=preset.model_dim,
                                                 decoder_channels=list(preset.decoder_channels))
    else:
        import torchvision

        resnet_mod = official_module("resnet_encoder", repo)
        # the official encoder passes pretrained=True positionally (a download): give its module a models
        # namespace that builds the same torchvision networks empty (torchvision itself is left untouched)
        names = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
        resnet_mod.models = types.SimpleNamespace(**{
            n: (lambda *a, _build=getattr(torchvision.models, n), **k: _build(weights=None)) for n in names})
        enc = resnet_mod.ResnetEncoderDecoder(num_layers=50, num_features=preset.resnet_features,
                                              model_dim=preset.model_dim)
    if preset.transformer_ff == 512:
        dec_cls = official_module("lite_depth_decoder_QTR", repo).Lite_Depth_Decoder_QueryTr
    else:
        dec_cls = official_module("depth_decoder_QTR", repo).Depth_Decoder_QueryTr
    dec = dec_cls(in_channels=preset.model_dim, patch_size=preset.patch_size, dim_out=preset.dim_out,
                  embedding_dim=preset.model_dim, query_nums=preset.query_nums, num_heads=4,
                  min_val=preset.min_depth, max_val=preset.max_depth)
    return enc.eval(), dec.eval()


def official_depth(enc, dec, x):
    """The official forward: decoder(encoder(x)), depth at ("disp", 0) when it returns a dict."""
    out = dec(enc(x))
    return out[("disp", 0)] if isinstance(out, dict) else out
