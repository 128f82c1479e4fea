"""Parity with the official SPIdepth code (github.com/Lavreniuk/SPIdepth), when a checkout is available.

Set SPIDEPTH_OFFICIAL_REPO to the checkout's root. The official modules are built with random weights,
saved in the official trainer's layout (encoder.pth with its height/width/use_stereo extras, depth.pth), loaded
by our loader, and both run on the same input: max relative difference <= 1e-4. The ConvNeXtV2-Huge preset
(2.9 GB of weights, ~1 TMAC) runs only with SPIDEPTH_PARITY_HUGE=1.
"""
from __future__ import annotations

import os

import pytest
import torch

from spidepth_ros.tools.official import build_official as _build_official, official_depth, official_repo

REPO = official_repo()
pytestmark = pytest.mark.skipif(REPO is None, reason="set SPIDEPTH_OFFICIAL_REPO to a checkout of Lavreniuk/SPIdepth")


def build_official(preset):
    return _build_official(preset, REPO)


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
        ref = official_depth(enc, dec, x)
        got = ours(x)
    assert got.shape == ref.shape == (1, 1, preset.height // 2, preset.width // 2)
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel <= 1e-4, rel
    del enc, dec, ours
