"""The trainer's loss against the truth of a rendered sequence: the true depth and the true camera motion go
through ``Trainer.compute_loss`` itself (not only through the loss module), so a prev/next swap, ``invert`` on
the wrong pair, PoseNet's translation scaled when a stereo frame fixes the scale, or a refinement / distillation
that is not wired to the warp each move the numbers checked here.

The depth network's output is replaced by the rendered depth and PoseNet by a stand-in that answers each pair
with the true motion between its two frames (first camera -> second camera, PoseNet's convention): what a perfect
network would say. Everything between them and the loss is the trainer's own code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spidepth_ros.geometry import matrix_to_axis_angle
from spidepth_ros.synth import SynthConfig, render_sequence
from spidepth_ros.training.config import config_from_dict
from spidepth_ros.training.data import TripletDataset
from spidepth_ros.training.trainer import Trainer
from test_handheld import _loss_and_warped_transforms as warped_with   # the loss module's inputs, spied
from test_handheld import posed_bag

# a slow camera on a path with turns (hand-held-like parallax of a few pixels), every rendered frame kept
SEQUENCE = SynthConfig(frames=14, seed=4, width=320, height=96, speed=2.0)
TRIPLETS = [(0, 3, 6, 9), (0, 5, 8, 11)]          # (store, prev, target, next): offsets of 3 frames (0.6 m)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    _, store = posed_bag(SEQUENCE, tmp_path_factory.mktemp("oracle"))
    frames = list(render_sequence(SEQUENCE))
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], TRIPLETS, 320, 96, augment=False),
                                                  batch_size=len(TRIPLETS))))
    depth = torch.stack([torch.from_numpy(np.clip(frames[t].depth, 0.1, 80.0))[None] for _, _, t, _ in TRIPLETS])
    return frames, batch, depth.float()


class TruthPoseNet(nn.Module):
    """Answers a pair ``[a, b]`` of the batch with the true motion from camera a to camera b (axis-angle and
    translation, metres), found by matching the input images to the rendered frames."""

    def __init__(self, frames, batch) -> None:
        super().__init__()
        self.frames = frames
        self.images = {name: batch[name] for name in ("prev", "target", "next")}
        self.index = {"prev": [p for _, p, _, _ in TRIPLETS], "target": [t for _, _, t, _ in TRIPLETS],
                      "next": [n for _, _, _, n in TRIPLETS]}
        self.dummy = nn.Parameter(torch.zeros(()))     # so the optimiser has something of PoseNet's

    def _which(self, image: torch.Tensor) -> str:
        return next(name for name, ref in self.images.items() if torch.equal(image, ref))

    def forward(self, pair: torch.Tensor):
        first, second = self._which(pair[:, :3]), self._which(pair[:, 3:])
        aa, t = [], []
        for a, b in zip(self.index[first], self.index[second]):
            motion = np.linalg.inv(self.frames[b].world_T_cam) @ self.frames[a].world_T_cam   # points a -> b
            aa.append(matrix_to_axis_angle(motion[:3, :3]))
            t.append(motion[:3, 3])
        as_tensor = lambda v: torch.tensor(np.array(v), dtype=torch.float32).view(-1, 1, 1, 3)   # noqa: E731
        return as_tensor(aa) + 0 * self.dummy, as_tensor(t) + 0 * self.dummy


def oracle_trainer(pose: dict, loss: dict, frames, batch, depth, tmp_path) -> Trainer:
    # the stand-in answers the whole motion in metres scaled as upstream's PoseNet is (the default since is a
    # correction to the measured rotation, relative to the scene depth: test_training.py covers that wiring)
    pose = {"posenet_residual": False, **pose}
    loss = {"translation_scaling": "mean_inverse_depth", **loss}
    cfg = config_from_dict({"model": {"preset": "small_r18_96x320"}, "pose": pose, "loss": loss,
                            "data": {"max_frame_offset": 4, "pose_topic": "/camera/pose"}, "out_dir": str(tmp_path)})
    trainer = Trainer(cfg, torch.device("cpu"))
    trainer.predict_depth = lambda images: depth            # the rendered depth in place of the network's
    trainer.pose_net = TruthPoseNet(frames, batch)
    return trainer


def true_transforms(frames) -> list[torch.Tensor]:
    """Per source (prev, next): ``[B, 4, 4]`` target -> source, ``inv(world_T_source) @ world_T_target``."""
    return [torch.tensor(np.stack([np.linalg.inv(frames[tr[1 + 2 * i]].world_T_cam) @ frames[tr[2]].world_T_cam
                                   for tr in TRIPLETS]), dtype=torch.float32) for i in range(2)]


def photometric(trainer, batch) -> float:
    with torch.no_grad():
        return float(trainer.compute_loss(batch)["photometric"])


PLAIN = {"automask": False, "smoothness": 0.0}


def test_posenet_path_with_the_true_motion_explains_the_frames(scene, tmp_path):
    """PoseNet's pairs go in temporal order and only the previous one is inverted: with the true motion and the
    true depth the warp explains the target; swapping prev and next, or inverting the other pair, does not."""
    frames, batch, depth = scene
    trainer = oracle_trainer({"init": "posenet", "refine_steps": 0}, {**PLAIN, "translation_scaling": "none"},
                             frames, batch, depth, tmp_path)
    out, seen = warped_with(trainer, batch)
    for got, want in zip(seen, true_transforms(frames)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-4)
    truth = float(out["photometric"])
    swapped = dict(batch, prev=batch["next"], next=batch["prev"])          # what a prev/next mix-up warps
    identity = oracle_trainer({"init": "recorded", "refine_steps": 0}, PLAIN, frames, batch, depth, tmp_path)
    no_motion = photometric(identity, dict(batch, recorded_transform=torch.eye(4).expand(2, 2, 4, 4).clone()))
    assert truth < 0.35 * no_motion, (truth, no_motion)
    assert truth < 0.35 * photometric(trainer, swapped), (truth, photometric(trainer, swapped))


class ResidualTruthPoseNet(TruthPoseNet):
    """What a perfect residual PoseNet (``pose.posenet_residual``) answers: per pair, the rotation that the
    batch's measured image rotation still lacks and the true translation, as a fraction of the target's
    harmonic-mean depth (``depth_relative``). The trainer applies the correction after the measured rotation
    (``R_image @ R``) and inverts the previous pair's output, so for target -> prev with true ``[R_t | t_t]`` the
    answer is ``R = R_t^T R_image``, ``t = -R t_t``; for target -> next ``R = R_image^T R_t``, ``t = t_t``."""

    def __init__(self, frames, batch, depth) -> None:
        super().__init__(frames, batch)
        self.truth = true_transforms(frames)
        self.measured = batch["image_rotation"]
        self.mean_inverse = (1.0 / depth).mean(dim=(1, 2, 3)).numpy()

    def forward(self, pair: torch.Tensor):
        first = self._which(pair[:, :3])
        source = 0 if first == "prev" else 1
        aa, t = [], []
        for k in range(pair.shape[0]):
            true = self.truth[source][k].double().numpy()
            measured = self.measured[k, source].double().numpy()
            if source == 0:
                r = true[:3, :3].T @ measured
                trans = -r @ true[:3, 3]
            else:
                r = measured.T @ true[:3, :3]
                trans = true[:3, 3]
            aa.append(matrix_to_axis_angle(r))
            t.append(trans * self.mean_inverse[k])
        as_tensor = lambda v: torch.tensor(np.array(v), dtype=torch.float32).view(-1, 1, 1, 3)   # noqa: E731
        return as_tensor(aa) + 0 * self.dummy, as_tensor(t) + 0 * self.dummy


def test_residual_posenet_with_the_true_correction_gives_the_true_motion(scene, tmp_path):
    """The default PoseNet (a correction after the measured rotation, translation relative to the scene depth):
    answering the true correction, its transforms are the true ones (the composition's order, the previous pair's
    inversion and the depth-relative scale are all in this), and its photometric error is the truth's."""
    frames, batch, depth = scene
    trainer = oracle_trainer({"init": "image_rotation", "posenet_residual": True, "posenet_start": False},
                             {**PLAIN, "translation_scaling": "depth_relative"}, frames, batch, depth, tmp_path)
    assert trainer.posenet_residual
    trainer.pose_net = ResidualTruthPoseNet(frames, batch, depth)
    with torch.no_grad():
        aa_p, t_p = trainer.pose_net(torch.cat([batch["prev_aug"], batch["target_aug"]], 1))
        aa_n, t_n = trainer.pose_net(torch.cat([batch["target_aug"], batch["next_aug"]], 1))
        poses = trainer._poses(batch, depth, (aa_p, t_p, aa_n, t_n))
        out = trainer.compute_loss(batch, validation=True)
    for got, want, start in zip(poses.posenet, true_transforms(frames), poses.start):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-4)
        assert float((start - want).abs().max()) > 1e-3        # the measured rotation alone is not the truth
    truth = photometric(oracle_trainer({"init": "recorded", "refine_steps": 0}, PLAIN, frames, batch, depth,
                                       tmp_path), batch)
    assert float(out["photometric_posenet"]) == pytest.approx(truth, rel=1e-3)
    assert float(out["photometric_start"]) > 1.5 * truth


def test_recorded_poses_reach_the_warp_unchanged_and_in_order(scene, tmp_path):
    frames, batch, depth = scene
    trainer = oracle_trainer({"init": "recorded", "refine_steps": 0}, PLAIN, frames, batch, depth, tmp_path)
    truth = photometric(trainer, batch)
    reversed_order = dict(batch, recorded_transform=batch["recorded_transform"].flip(1))
    assert truth < 0.35 * photometric(trainer, reversed_order)
    transposed = batch["recorded_transform"].clone()
    transposed[..., :3, :3] = transposed[..., :3, :3].transpose(-1, -2)    # the turn the wrong way round
    assert truth < 0.8 * photometric(trainer, dict(batch, recorded_transform=transposed))


def test_stereo_frame_turns_off_the_translation_scaling(scene, tmp_path):
    """With a stereo 's' frame the metric baseline fixes the scale, so PoseNet's translation is used as it is:
    with metric depth and PoseNet's true metric motion, the error stays that of the truth. (The 's' frame here is
    black, so it never wins the per-pixel minimum and the temporal pairs decide.)"""
    frames, batch, depth = scene
    trainer = oracle_trainer({"init": "posenet", "refine_steps": 0}, PLAIN, frames, batch, depth, tmp_path)
    stereo = dict(batch, stereo=torch.zeros_like(batch["target"]), stereo_T=torch.eye(4).expand(2, 4, 4).clone())
    with_stereo = photometric(trainer, stereo)
    scaled_mono = photometric(trainer, batch)       # monocular: t x mean(1/depth) ~ t / 10, far from the truth
    unscaled = oracle_trainer({"init": "posenet", "refine_steps": 0}, {**PLAIN, "translation_scaling": "none"},
                              frames, batch, depth, tmp_path)
    assert with_stereo == pytest.approx(photometric(unscaled, batch), rel=1e-4)
    assert with_stereo < 0.5 * scaled_mono, (with_stereo, scaled_mono)


@pytest.mark.parametrize("method", ["lm", "adam"])
def test_refinement_finds_the_translation_and_the_warp_and_distillation_use_it(scene, tmp_path, method):
    """The default start (the measured rotation, no translation) refined with the true depth: the translation
    the warp uses points the true way and has about the true length; the warp's error is near the truth's; the
    distillation is PoseNet's L1 to exactly those refined transforms."""
    frames, batch, depth = scene
    pose = {"init": "image_rotation", "refine_method": method, "refine_steps": 5 if method == "lm" else 40,
            "refine_lr_translation": 0.004, "posenet_start": False}
    trainer = oracle_trainer(pose, PLAIN, frames, batch, depth, tmp_path)
    out, seen = warped_with(trainer, batch)
    truth_trainer = oracle_trainer({"init": "recorded", "refine_steps": 0}, PLAIN, frames, batch, depth, tmp_path)
    truth, start = photometric(truth_trainer, batch), float(out["photometric"])
    for got, want in zip(seen, true_transforms(frames)):
        t_got, t_want = got[:, :3, 3], want[:, :3, 3]
        cos = (t_got * t_want).sum(1) / (t_got.norm(dim=1) * t_want.norm(dim=1))
        assert float(cos.min()) > np.cos(np.radians(15)), (t_got, t_want)
        ratio = t_got.norm(dim=1) / t_want.norm(dim=1)
        assert float((ratio - 1).abs().max()) < 0.3, ratio
    no_translation = oracle_trainer({"init": "image_rotation", "refine_method": "adam", "refine_steps": 1,
                                     "refine_lr_translation": 0.0, "refine_lr_rotation": 0.0},
                                    PLAIN, frames, batch, depth, tmp_path)
    rotation_only = photometric(no_translation, batch)
    assert start < truth + 0.25 * (rotation_only - truth), (start, truth, rotation_only)
    # PoseNet (here the truth, scaled by the mean inverse depth m as the monocular warp takes it) against the
    # refined transforms, the rotation entries as they are and the translation as a fraction of the harmonic-mean
    # depth 1/m: the same L1 the trainer adds
    mean_inverse = (1.0 / depth).mean(dim=(1, 2, 3))[:, None]
    want = 0.0
    for i, (refined, true) in enumerate(zip(seen, true_transforms(frames))):
        posenet = true.clone()
        posenet[:, :3, 3] = true[:, :3, 3] * mean_inverse
        want += float((posenet[:, :3, :3] - refined[:, :3, :3]).abs().mean())
        want += float(((posenet[:, :3, 3] - refined[:, :3, 3]) * mean_inverse).abs().mean())
    assert float(out["pose_distill"]) == pytest.approx(want, rel=1e-4)


def test_posenet_start_is_taken_where_it_explains_the_pair_better(scene, tmp_path):
    """``pose.posenet_start``: the truth-telling PoseNet beats the rotation-only start on every pair."""
    frames, batch, depth = scene
    trainer = oracle_trainer({"init": "image_rotation", "posenet_start": True}, {**PLAIN,
                             "translation_scaling": "none"}, frames, batch, depth, tmp_path)
    out = trainer.compute_loss(batch)
    assert float(out["refine_posenet_start_fraction"]) == 1.0
    trainer_off = oracle_trainer({"init": "image_rotation", "posenet_start": False}, {**PLAIN,
                                 "translation_scaling": "none"}, frames, batch, depth, tmp_path)
    assert "refine_posenet_start_fraction" not in trainer_off.compute_loss(batch)


def test_lm_gradient_is_the_cost_gradient_by_finite_differences():
    """The analytic Jacobian of the LM refinement (rotation, translation, exposure gain and bias) against central
    differences of its own cost, on a smooth image where bilinear sampling has a derivative (a flipped sign in the
    rotation block, the bug it had while being written, gives a relative error near 1)."""
    from spidepth_ros.training import pose_refine as pr

    torch.manual_seed(0)
    b, h, w = 2, 64, 96
    v, u = torch.meshgrid(torch.arange(h + 0.0), torch.arange(w + 0.0), indexing="ij")
    source = torch.stack([torch.sin(u * 0.08 + v * 0.05), torch.cos(u * 0.06 - v * 0.07),
                          torch.sin(u * 0.05) * torch.cos(v * 0.09)])[None].expand(b, 3, h, w) * 0.04 + 0.5
    target = source + 0.003 * torch.randn(b, 3, h, w)
    depth = (2 + torch.rand(b, 1, 1, 1) * 3) * torch.ones(b, 1, h, w) + 0.5 * torch.sin(u / 20)[None, None]
    k = torch.tensor([[60.0, 0, 47.5], [0, 60.0, 31.5], [0, 0, 1]]).expand(b, 3, 3).clone()
    transform = torch.eye(4).expand(b, 4, 4).clone()
    transform[:, :3, 3] = torch.tensor([0.01, 0.005, 0.02])
    level = pr._make_level(depth, target, source.contiguous(), k, 0)
    unit = depth.flatten(1).median(1).values
    brightness = torch.tensor([[0.02, 0.01], [0.0, -0.01]])
    _, _, gradient = pr._evaluate(level, transform, True, unit, False, brightness)

    def cost(step: torch.Tensor) -> torch.Tensor:
        return pr._evaluate(level, pr._correct(transform, step, unit), False, unit, False, brightness + step[:, 6:])[0]

    eps = 1e-4
    numeric = torch.stack([(cost(eps * torch.eye(8)[i].expand(b, 8)) - cost(-eps * torch.eye(8)[i].expand(b, 8)))
                           / (2 * eps) for i in range(8)], 1)
    pose_error = (gradient[:, :6] - numeric[:, :6]).norm(dim=1) / numeric[:, :6].norm(dim=1)
    assert float(pose_error.max()) < 0.05, (gradient, numeric)
    np.testing.assert_allclose(gradient[:, 6:].numpy(), numeric[:, 6:].numpy(), rtol=1e-3)
