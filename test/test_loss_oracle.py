"""The self-supervised loss against the truth of a synthetic sequence whose camera poses are known: with the true
depth and the true relative poses the view-synthesis error is far below that of a flat depth map and that of the
identity pose. If warping, intrinsics, pose direction or the SSIM/L1 terms were wrong, this margin would vanish."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spidepth_ros.synth import SynthConfig, render_sequence
from spidepth_ros.training.config import LossConfig
from spidepth_ros.training.losses import SelfSupervisedLoss
from spidepth_ros.training.warping import pose_from_axis_angle, scale_translation_by_mean_inverse_depth

OFFSET = 3        # frames between target and sources: ~1.2 m of travel at 4 m/s and 10 Hz


@pytest.fixture(scope="module")
def sequence():
    cfg = SynthConfig(width=320, height=96, frames=2 * OFFSET + 1, seed=7)
    return cfg, list(render_sequence(cfg))


def tensor_image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def intrinsics_4x4(cfg: SynthConfig) -> torch.Tensor:
    """``[1, 4, 4]`` K of the rendered camera, as the loss and the refinement take it."""
    k = torch.eye(4)[None]
    k[0, :3, :3] = torch.from_numpy(cfg.intrinsics.matrix()).float()
    return k


def photometric(cfg, frames, depth: np.ndarray, transforms) -> float:
    k = intrinsics_4x4(cfg)
    target = frames[OFFSET]
    sources = [tensor_image(frames[0].rgb), tensor_image(frames[2 * OFFSET].rgb)]
    loss = SelfSupervisedLoss(LossConfig(automask=False, smoothness=0.0))
    out = loss(torch.from_numpy(depth)[None, None].float(), tensor_image(target.rgb), sources,
               [torch.from_numpy(t)[None].float() for t in transforms], k, torch.linalg.inv(k))
    return float(out["photometric"])


@pytest.mark.parametrize("seed, speed", [(7, 4.0), (4, 2.0)])
def test_true_depth_and_pose_beat_flat_depth_identity_pose_and_a_transposed_turn(seed, speed):
    """Both sequences turn 2-5.5 degrees between the target and its sources. Measured ratios (2026-12-02): truth /
    flat 0.18, truth / identity 0.06-0.10, truth / transposed rotation 0.05-0.10; the bounds leave ~1.7x margin."""
    cfg = SynthConfig(width=320, height=96, frames=2 * OFFSET + 1, seed=seed, speed=speed)
    frames = list(render_sequence(cfg))
    target = frames[OFFSET]
    # poses are camera -> world: the target-to-source transform is inv(source) @ target
    true_t = [np.linalg.inv(frames[i].world_T_cam) @ target.world_T_cam for i in (0, 2 * OFFSET)]
    turns = [np.degrees(np.arccos(np.clip((np.trace(t[:3, :3]) - 1) / 2, -1, 1))) for t in true_t]
    assert max(turns) > 2.0                            # a turn for a transposed rotation to get wrong
    depth = np.clip(target.depth, 0.1, 80.0)
    truth = photometric(cfg, frames, depth, true_t)
    flat = photometric(cfg, frames, np.full_like(depth, np.median(depth)), true_t)
    identity = photometric(cfg, frames, depth, [np.eye(4), np.eye(4)])
    transposed = []
    for t in true_t:
        wrong = t.copy()
        wrong[:3, :3] = t[:3, :3].T
        transposed.append(wrong)
    turned_wrong = photometric(cfg, frames, depth, transposed)
    assert truth < 0.3 * flat and truth < 0.17 * identity and truth < 0.17 * turned_wrong, \
        (truth, flat, identity, turned_wrong)


def test_pose_matrix_convention_matches_the_true_relative_pose(sequence):
    """pose_from_axis_angle(invert=False) builds x' = R x + t; invert=True its exact inverse."""
    cfg, frames = sequence
    t_next = np.linalg.inv(frames[2 * OFFSET].world_T_cam) @ frames[OFFSET].world_T_cam
    rot = torch.from_numpy(t_next[:3, :3])
    angle = torch.arccos(((torch.trace(rot) - 1) / 2).clamp(-1, 1))
    axis = torch.stack([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]]) / (2 * torch.sin(angle))
    aa = (axis * angle)[None]
    m = pose_from_axis_angle(aa, torch.from_numpy(t_next[:3, 3])[None])
    np.testing.assert_allclose(m[0].numpy(), t_next, atol=1e-6)
    inv = pose_from_axis_angle(aa, torch.from_numpy(t_next[:3, 3])[None], invert=True)
    np.testing.assert_allclose(inv[0].numpy(), np.linalg.inv(t_next), atol=1e-6)


def test_translation_scaling_is_upstreams_formula():
    depth = torch.tensor([[[[1.0, 2.0], [4.0, 4.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    t = torch.tensor([[[[0.1, -0.2, 0.3]]], [[[1.0, 1.0, 1.0]]]])       # PoseNet's [B, 1, 1, 3]
    scaled = scale_translation_by_mean_inverse_depth(t, depth)
    np.testing.assert_allclose(scaled.numpy(), [[0.1 * 0.5, -0.2 * 0.5, 0.3 * 0.5], [2.0, 2.0, 2.0]], rtol=1e-6)


def test_depth_relative_translation_keeps_the_warp_when_the_depth_is_rescaled():
    """``depth_relative``: translation = PoseNet's x the harmonic-mean depth (1 / mean(1/d); 2 and 0.5 here), so
    a depth map scaled by s gives s times the translation and every pixel lands where it did; the upstream rule
    moves them (its translation goes as 1/s while the points go as s)."""
    from spidepth_ros.training.warping import backproject, project, scale_translation_by_harmonic_mean_depth

    depth = torch.tensor([[[[1.0, 2.0], [4.0, 4.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    t = torch.tensor([[[[0.1, -0.2, 0.3]]], [[[1.0, 1.0, 1.0]]]])
    np.testing.assert_allclose(scale_translation_by_harmonic_mean_depth(t, depth).numpy(),
                               [[0.2, -0.4, 0.6], [0.5, 0.5, 0.5]], rtol=1e-6)
    k = torch.tensor([[[2.0, 0, 0.5, 0], [0, 2.0, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]).expand(2, 4, 4)
    inv_k = torch.linalg.inv(k)

    def pixels(depth_map, scale_fn):
        transform = torch.eye(4).repeat(2, 1, 1)
        transform[:, :3, 3] = scale_fn(t, depth_map)
        return project(backproject(depth_map, inv_k), k, transform, 2, 2)

    same = pixels(depth, scale_translation_by_harmonic_mean_depth)
    torch.testing.assert_close(pixels(3.0 * depth, scale_translation_by_harmonic_mean_depth), same)
    moved = pixels(3.0 * depth, scale_translation_by_mean_inverse_depth)
    assert float((moved - pixels(depth, scale_translation_by_mean_inverse_depth)).abs().max()) > 0.01


def test_direct_refinement_recovers_the_true_pose_from_identity(sequence):
    """With the true depth held fixed, 40 refinement steps from the identity pose recover the true translation of
    adjacent frames (0.4 m) and bring the error near the truth's. (From 1.2 m away, offset 3, they do not:
    forward motion leaves the photometric basin; the trainer starts from PoseNet's pose and uses offset 1.)"""
    from spidepth_ros.training.pose_refine import refine_transforms

    cfg, frames = sequence
    target = frames[OFFSET]
    neighbours = (OFFSET - 1, OFFSET + 1)
    true_t = [np.linalg.inv(frames[i].world_T_cam) @ target.world_T_cam for i in neighbours]
    depth = torch.from_numpy(np.clip(target.depth, 0.1, 80.0))[None, None].float()
    k = intrinsics_4x4(cfg)
    sources = [tensor_image(frames[i].rgb) for i in neighbours]
    refined = refine_transforms(depth, tensor_image(target.rgb), sources, [torch.eye(4)[None]] * 2, k,
                                torch.linalg.inv(k), steps=40, lr_translation=0.003, lr_rotation=0.005).transforms
    for got, want in zip(refined, true_t):
        err = np.linalg.norm(got[0, :3, 3].numpy() - want[:3, 3])
        assert err < 0.15 * np.linalg.norm(want[:3, 3]), (got[0, :3, 3], want[:3, 3])
    from spidepth_ros.training.losses import photometric_error
    from spidepth_ros.training.warping import warp

    def error(transform) -> float:
        return float(sum(photometric_error(warp(s, depth, k, torch.linalg.inv(k), t), tensor_image(target.rgb)).mean()
                         for s, t in zip(sources, transform)))

    start = error([torch.eye(4)[None]] * 2)
    truth = error([torch.from_numpy(t)[None].float() for t in true_t])
    assert error(refined) < truth + 0.1 * (start - truth)


def _refine_two_frame_pairs(lr_translation: float, steps: int, lr_rotation: float) -> tuple[list[float], float]:
    """Relative translation errors and the saturated share of refinements from the true rotation and no
    translation, with the true depth, at offset 2 (0.8 m of forward driving) around four targets."""
    from spidepth_ros.training.pose_refine import refine_transforms

    cfg = SynthConfig(width=320, height=96, frames=26, seed=7)
    frames = list(render_sequence(cfg))
    k = intrinsics_4x4(cfg)
    errors, saturated = [], []
    for centre in (5, 10, 15, 20):
        target, neighbours = frames[centre], (centre - 2, centre + 2)
        true_t = [np.linalg.inv(frames[i].world_T_cam) @ target.world_T_cam for i in neighbours]
        rotation_only = []
        for t in true_t:
            start = np.eye(4)
            start[:3, :3] = t[:3, :3]
            rotation_only.append(torch.from_numpy(start)[None].float())
        depth = torch.from_numpy(np.clip(target.depth, 0.1, 80.0))[None, None].float()
        refined = refine_transforms(depth, tensor_image(target.rgb), [tensor_image(frames[i].rgb) for i in neighbours],
                                    rotation_only, k, torch.linalg.inv(k), steps, lr_translation, lr_rotation)
        errors += [np.linalg.norm(got[0, :3, 3].numpy() - want[:3, 3]) / np.linalg.norm(want[:3, 3])
                   for got, want in zip(refined.transforms, true_t)]
        saturated += refined.saturated.tolist()
    return errors, float(np.mean(saturated))


def test_demo_mono_refinement_reaches_the_true_translation_of_two_frame_pairs():
    """config/demo_mono.yaml starts each pair from the measured rotation and no translation (pose.init:
    image_rotation), so its refinement must reach the whole translation: 0.8 m at offset 2 (the recipe's parallax
    target picks offsets of ~2), ~7 % of the median depth. Fed the true depth and the true rotation, its step size and
    count recover it within 25 % (median over pairs) and rarely hit their step limit. 20 steps of 0.002, the
    hand-held recipe's, reach at most 4 %: they miss by 35-50 % and most of them saturate, which is what the
    trainer's warning looks for (docs/real_data.md)."""
    from spidepth_ros.training.config import load_config
    from spidepth_ros.training.diagnostics import SATURATION_LIMIT

    pose_cfg = load_config("config/demo_mono.yaml").pose
    errors, saturated = _refine_two_frame_pairs(pose_cfg.refine_lr_translation, pose_cfg.refine_steps,
                                                pose_cfg.refine_lr_rotation)
    assert np.median(errors) < 0.25 and saturated < SATURATION_LIMIT, (errors, saturated)
    short_errors, short_saturated = _refine_two_frame_pairs(0.002, pose_cfg.refine_steps, pose_cfg.refine_lr_rotation)
    assert np.median(short_errors) > 0.3 and short_saturated > SATURATION_LIMIT, (short_errors, short_saturated)
