"""Checkpoint round trips (ours and the official folder layout) and clear refusals of bad files."""
from __future__ import annotations

import pickle

import pytest
import torch

from spidepth_ros.checkpoint import (CheckpointError, load_official_folder, load_weights, safe_torch_load,
                                     save_checkpoint, save_official_folder)
from spidepth_ros.models import build_depth_net, build_pose_net
from spidepth_ros.presets import get_preset


@pytest.fixture(scope="module")
def small_nets():
    torch.manual_seed(1)
    p = get_preset("small_r18_96x320")
    depth, pose = build_depth_net(p).eval(), build_pose_net(p).eval()
    # non-trivial BatchNorm statistics, so buffers are part of what must round-trip
    for m in depth.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return p, depth, pose


def outputs(depth, x):
    with torch.no_grad():
        return depth(x)


def test_our_checkpoint_round_trip(tmp_path, small_nets):
    p, depth, pose = small_nets
    path = save_checkpoint(tmp_path / "m.pt", p, depth, pose, config={"note": "x"})
    w = load_weights(path)
    assert w.preset == p and w.extra["config"] == {"note": "x"}
    d2, p2 = w.build(with_pose=True)
    x = torch.rand(1, 3, 96, 320)
    torch.testing.assert_close(outputs(d2, x), outputs(depth, x), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(p2(torch.rand(1, 6, 96, 320) * 0 + 0.5), pose(torch.rand(1, 6, 96, 320) * 0 + 0.5))


def test_official_layout_round_trip_with_extras_and_detection(tmp_path, small_nets):
    p, depth, pose = small_nets
    folder = save_official_folder(tmp_path / "official", depth, pose, use_stereo=True)
    raw = torch.load(folder / "encoder.pth", weights_only=True)
    assert raw["height"] == 96 and raw["width"] == 320 and raw["use_stereo"] is True
    w = load_official_folder(folder)          # preset detected from the tensor shapes
    assert w.preset.name == "small_r18_96x320" and w.pose is not None
    d2, _ = w.build()
    x = torch.rand(1, 3, 96, 320)
    torch.testing.assert_close(outputs(d2, x), outputs(depth, x), rtol=0, atol=0)


def test_official_resnet50_layout_detected(tmp_path):
    p = get_preset("resnet50_192x640")
    torch.manual_seed(0)
    depth = build_depth_net(p).eval()
    folder = save_official_folder(tmp_path / "r50", depth)
    w = load_weights(folder / "encoder.pth")
    assert w.preset.name == "resnet50_192x640"
    d2, _ = w.build()
    x = torch.rand(1, 3, 192, 640)
    torch.testing.assert_close(outputs(d2, x), outputs(depth, x), rtol=0, atol=0)


def test_missing_key_is_named(tmp_path, small_nets):
    p, depth, _ = small_nets
    folder = save_official_folder(tmp_path / "o", depth)
    sd = torch.load(folder / "depth.pth", weights_only=True)
    del sd["conv3x3.weight"]
    torch.save(sd, folder / "depth.pth")
    with pytest.raises(CheckpointError, match="conv3x3.weight"):
        load_official_folder(folder, "small_r18_96x320")
    with pytest.raises(CheckpointError, match="no preset matches"):
        load_official_folder(folder)


def test_wrong_shape_names_key_and_shapes(tmp_path, small_nets):
    p, depth, _ = small_nets
    folder = save_official_folder(tmp_path / "o", depth)
    with pytest.raises(CheckpointError, match=r"embedding_convPxP.weight has shape \[32, 32, 8, 8\], the preset "
                                              r"expects \[32, 32, 16, 16\]"):
        load_official_folder(folder, "small_r18_192x640")


def test_truncated_file(tmp_path, small_nets):
    p, depth, _ = small_nets
    path = save_checkpoint(tmp_path / "m.pt", p, depth)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch file"):
        load_weights(path)


class Evil:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_pickle_that_is_not_weights_only_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "spidepth_ros/1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        safe_torch_load(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_weights(raw)


def test_empty_missing_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_weights(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a spidepth_ros checkpoint"):
        load_weights(foreign)


def test_size_limit_is_checked_before_reading(tmp_path, small_nets, monkeypatch):
    import spidepth_ros.checkpoint as ck

    p, depth, _ = small_nets
    path = save_checkpoint(tmp_path / "m.pt", p, depth)
    monkeypatch.setattr(ck, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(CheckpointError, match="above the 1000-byte limit"):
        load_weights(path)
