"""DepthNet/PoseNet structure against the reference checklist, forward shapes, and a naive re-implementation
of the Self Query Layer head."""
from __future__ import annotations

import math

import pytest
import torch

from spidepth_ros.checkpoint import expected_shapes
from spidepth_ros.models import SelfQueryDepthHead, SelfQueryLayerError, build_depth_net, build_pose_net
from spidepth_ros.presets import PRESETS, get_preset

# (encoder tensors, depth-head tensors, pose tensors, DepthNet parameters in millions) from
# spidepth-reference.md sections 7 and 9 (parameters exclude BatchNorm buffers).
CHECKLIST = {
    "cvnxt_h_320x1024": (426, 61, 128, 722.93),
    "cvnxt_l_320x1024": (390, 61, 128, 242.15),
    "resnet50_192x640": (380, 61, 128, 31.05),
    "resnet50_320x1024": (380, 61, 128, 37.78),
}
SHAPES = {
    "cvnxt_h_320x1024": {
        "enc": {"encoder.stem_0.weight": (352, 3, 4, 4), "encoder.stages_3.blocks.2.mlp.grn.weight": (4 * 2816,),
                "encoder.stages_2.blocks.26.mlp.fc1.weight": (4 * 1408, 1408),
                "encoder.stages_1.downsample.1.weight": (704, 352, 2, 2),
                "decoder.blocks.0.conv1.conv.weight": (1024, 4224, 3, 3),
                "decoder.blocks.1.conv1.conv.weight": (512, 1728, 3, 3),
                "decoder.blocks.2.conv1.conv.weight": (256, 864, 3, 3),
                "decoder.blocks.3.conv1.conv.weight": (128, 256, 3, 3),
                "decoder.blocks.0.conv1.bn.num_batches_tracked": (), "decoder.final_conv.weight": (32, 128, 1, 1)},
        "head": {"embedding_convPxP.weight": (32, 32, 32, 32), "positional_encodings": (500, 32),
                 "bins_regressor.0.weight": (1024, 2048), "bins_regressor.4.weight": (64, 256),
                 "transformer_encoder.layers.3.linear1.weight": (1024, 32), "convert_to_prob.0.weight": (64, 64, 1, 1)}},
    "cvnxt_l_320x1024": {
        "enc": {"encoder.stem_0.weight": (192, 3, 4, 4), "encoder.stages_0.blocks.0.gamma": (192,),
                "decoder.blocks.0.conv1.conv.weight": (1024, 2304, 3, 3),
                "decoder.blocks.1.conv1.conv.weight": (512, 1408, 3, 3),
                "decoder.blocks.2.conv1.conv.weight": (256, 704, 3, 3)},
        "head": {"bins_regressor.0.weight": (1024, 2048)}},
    "resnet50_192x640": {
        "enc": {"encoder.encoder.fc.weight": (1000, 2048), "decoder.conv2.weight": (256, 2048, 1, 1),
                "decoder.up1._net.0.weight": (128, 1280, 3, 3), "decoder.up2._net.0.weight": (64, 640, 3, 3),
                "decoder.up3._net.0.weight": (32, 320, 3, 3), "decoder.up4._net.0.weight": (16, 96, 3, 3),
                "decoder.up4._net.4.running_var": (16,), "decoder.conv3.weight": (32, 16, 3, 3)},
        "head": {"embedding_convPxP.weight": (32, 32, 16, 16), "transformer_encoder.layers.0.linear1.weight": (512, 32),
                 "bins_regressor.0.weight": (1024, 2048)}},
    "resnet50_320x1024": {
        "enc": {"decoder.conv2.weight": (256, 2048, 1, 1)},
        "head": {"embedding_convPxP.weight": (32, 32, 20, 20), "bins_regressor.0.weight": (2048, 4096),
                 "bins_regressor.2.weight": (256, 2048), "convert_to_prob.0.weight": (128, 128, 1, 1)}},
}
POSE = {"encoder.conv1.weight": (64, 6, 7, 7), "encoder.layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "squeeze.0.weight": (256, 512, 1, 1), "decoder.0.0.weight": (256, 256, 3, 3),
        "decoder.1.0.weight": (256, 256, 3, 3), "decoder.2.weight": (6, 256, 1, 1), "decoder.2.bias": (6,)}


@pytest.mark.parametrize("name", sorted(CHECKLIST))
def test_official_presets_match_reference_checklist(name):
    enc, head, pose = expected_shapes(get_preset(name))
    n_enc, n_head, n_pose, params_m = CHECKLIST[name]
    assert (len(enc), len(head), len(pose)) == (n_enc, n_head, n_pose)
    for key, shape in SHAPES[name]["enc"].items():
        assert tuple(enc[key]) == shape, key
    for key, shape in SHAPES[name]["head"].items():
        assert tuple(head[key]) == shape, key
    for key, shape in POSE.items():
        assert tuple(pose[key]) == shape, key
    assert not any(k.startswith("encoder.fc") for k in pose)
    with torch.device("meta"):
        net = build_depth_net(get_preset(name))
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_convnext_v2_has_grn_and_no_gamma():
    enc, _, _ = expected_shapes(get_preset("cvnxt_h_320x1024"))
    assert not any(k.endswith(".gamma") for k in enc)
    assert sum(1 for k in enc if k.endswith("mlp.grn.weight")) == 3 + 3 + 27 + 3


@pytest.mark.parametrize("hw,out", [((96, 320), (48, 160)), ((64, 256), (32, 128)), ((192, 640), (96, 320)),
                                    ((128, 416), (64, 208))])
def test_forward_shapes_small_preset(hw, out):
    torch.manual_seed(0)
    net = build_depth_net(get_preset("small_r18_96x320")).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 3, *hw))
    p = get_preset("small_r18_96x320")
    assert y.shape == (1, 1, *out)
    assert float(y.min()) > p.min_depth and float(y.max()) < p.max_depth


def test_resnet50_forward_shape_and_range():
    net = build_depth_net(get_preset("resnet50_192x640")).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 3, 192, 640))
    assert y.shape == (2, 1, 96, 320)
    assert torch.all((y > 0.001) & (y < 80))


@pytest.mark.parametrize("hw,patches", [((48, 160), 30), ((320, 1024), 1280)])
def test_sizes_the_self_query_layer_cannot_take(hw, patches):
    net = build_depth_net(get_preset("small_r18_96x320")).eval()
    with pytest.raises(SelfQueryLayerError, match=f"gives {patches} patches"):
        net.check_input_size(*hw)
    with pytest.raises(SelfQueryLayerError):
        with torch.no_grad():
            net(torch.rand(1, 3, *hw))


def test_posenet_output_and_scale():
    torch.manual_seed(0)
    pose = build_pose_net(get_preset("small_r18_96x320")).eval()
    x = torch.rand(2, 6, 96, 320)
    with torch.no_grad():
        aa, t = pose(x)
        feats = pose.decoder(pose.squeeze(pose.encoder(x)[-1]))
    assert aa.shape == (2, 1, 1, 3) and t.shape == (2, 1, 1, 3)
    expected = 0.01 * feats.mean(dim=(2, 3))
    torch.testing.assert_close(torch.cat([aa, t], -1).view(2, 6), expected)


def naive_sql_head(head: SelfQueryDepthHead, x: torch.Tensor) -> torch.Tensor:
    """The reference's section-2 description written out with loops and explicit formulas."""
    b, e, h, w = x.shape
    q = head.query_nums
    emb = head.embedding_convPxP(x)                       # [B, E, h/P, w/P]
    tokens = emb.flatten(2) + head.positional_encodings[:emb.shape[2] * emb.shape[3]].T[None]
    tokens = head.transformer_encoder(tokens.permute(2, 0, 1))
    queries = tokens[:q].permute(1, 0, 2)                 # [B, Q, E]
    pix = head.conv3x3(x)                                 # [B, E, h, w]
    out = torch.zeros(b, 1, h, w)
    for i in range(b):
        energy = torch.einsum("ehw,qe->qhw", pix[i], queries[i])          # [Q, h, w]
        weights = torch.softmax(energy.reshape(q, -1), dim=1)             # softmax over pixels
        summary = weights @ pix[i].reshape(e, -1).T                       # [Q, E]
        y = head.bins_regressor(summary.reshape(1, -1))[0]
        y = torch.relu(y) + 0.1
        y = y / y.sum()
        widths = (head.max_depth - head.min_depth) * y
        edges = head.min_depth + torch.cat([torch.zeros(1), torch.cumsum(widths, 0)])
        centers = 0.5 * (edges[:-1] + edges[1:])
        prob = head.convert_to_prob(energy[None])[0]                      # softmax over bins
        out[i, 0] = (prob * centers[:, None, None]).sum(0)
    return out


def test_sql_head_matches_naive_formula():
    torch.manual_seed(3)
    head = SelfQueryDepthHead(embedding_dim=32, patch_size=8, query_nums=16, dim_out=24, transformer_ff=64,
                              min_depth=0.5, max_depth=20.0).eval()
    x = torch.randn(2, 32, 40, 96)
    with torch.no_grad():
        torch.testing.assert_close(head(x), naive_sql_head(head, x), rtol=1e-4, atol=1e-4)


def test_all_presets_have_usable_patch_counts():
    for p in PRESETS.values():
        assert p.query_nums <= p.num_patches() <= 500, p.name
        assert p.height % 32 == 0 and p.width % 32 == 0
        assert math.isfinite(p.min_depth) and 0 < p.min_depth < p.max_depth
