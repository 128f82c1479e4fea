"""Parity with the official SPIdepth code (github.com/Lavreniuk/SPIdepth), when a checkout is available.

Set SPIDEPTH_OFFICIAL_REPO to the checkout's root. The official modules are built with random weights,
saved in the official trainer's layout (encoder.pth with its height/width/use_stereo extras, depth.pth), loaded
by our loader, and both run on the same input: max relative difference <= 1e-4. The ConvNeXtV2-Huge preset
(2.9 GB of weights, ~1 TMAC) runs only with SPIDEPTH_PARITY_HUGE=1.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

OFFICIAL = os.environ.get("SPIDEPTH_OFFICIAL_REPO", "")
pytestmark = pytest.mark.skipif(not (OFFICIAL and (Path(OFFICIAL) / "networks" / "Unet.py").exists()),
                                reason="set SPIDEPTH_OFFICIAL_REPO to a checkout of Lavreniuk/SPIdepth")


def official(module: str):
    pkg = "spidepth_official_networks"
    if pkg not in sys.modules:
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(Path(OFFICIAL) / "networks")]
        sys.modules[pkg] = mod
    return importlib.import_module(f"{pkg}.{module}")


def build_official(preset):
    if preset.encoder_type == "unet":
        enc = official("Unet").Unet(pretrained=False, backbone=preset.backbone, in_channels=3,
                                    num_classes=preset.model_dim, decoder_channels=list(preset.decoder_channels))
    else:
        resnet_mod = official("resnet_encoder")
        import torchvision

        # the official encoder passes pretrained=True positionally (a download): give its module a models
        # namespace that builds the same torchvision networks empty (torchvision itself is left untouched)
        names = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
        resnet_mod.models = types.SimpleNamespace(**{
            n: (lambda *a, _build=getattr(torchvision.models, n), **k: _build(weights=None)) for n in names})
        enc = resnet_mod.ResnetEncoderDecoder(num_layers=50, num_features=preset.resnet_features,
                                              model_dim=preset.model_dim)
    if preset.transformer_ff == 512:
        dec_cls = official("lite_depth_decoder_QTR").Lite_Depth_Decoder_QueryTr
    else:
        dec_cls = official("depth_decoder_QTR").Depth_Decoder_QueryTr
    dec = dec_cls(in_channels=preset.model_dim, patch_size=preset.patch_size, dim_out=preset.dim_out,
                  embedding_dim=preset.model_dim, query_nums=preset.query_nums, num_heads=4,
                  min_val=preset.min_depth, max_val=preset.max_depth)
    return enc.eval(), dec.eval()


def randomize_batchnorm(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


PRESETS = ["resnet50_192x640", "resnet50_320x1024", "cvnxt_l_320x1024"] + \
    (["cvnxt_h_320x1024"] if os.environ.get("SPIDEPTH_PARITY_HUGE") else [])


@pytest.mark.parametrize("name", PRESETS)
def test_outputs_match_official_implementation(name, tmp_path):
    from spidepth_ros.checkpoint import load_official_folder
    from spidepth_ros.presets import get_preset

    preset = get_preset(name)
    torch.manual_seed(0)
    enc, dec = build_official(preset)
    randomize_batchnorm(enc)
    folder = tmp_path / "weights"
    folder.mkdir()
    sd = enc.state_dict()
    sd.update(height=preset.height, width=preset.width, use_stereo=True)   # as trainer.save_model writes
    torch.save(sd, folder / "encoder.pth")
    torch.save(dec.state_dict(), folder / "depth.pth")
    ours, _ = load_official_folder(folder, name).build()
    x = torch.rand(1, 3, preset.height, preset.width)
    with torch.no_grad():
        ref = dec(enc(x))
        if isinstance(ref, dict):
            ref = ref[("disp", 0)]
        got = ours(x)
    assert got.shape == ref.shape == (1, 1, preset.height // 2, preset.width // 2)
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel <= 1e-4, rel
    del enc, dec, ours
