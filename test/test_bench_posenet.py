"""bench/posenet_distill.py's compositions of PoseNet's outputs, against transforms composed from known camera poses.

The bench's time-reversed estimate (PoseNet fed (target, prev) and (next, target)) and the mean of the two
estimates are documented findings (docs/real_data.md); a swapped pair or a missing inversion would make them
score a wrong pose. An oracle PoseNet that knows each frame's world pose must give the true transforms through
every composition.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from spidepth_ros.geometry import axis_angle_to_matrix, matrix_to_axis_angle

BENCH = Path(__file__).resolve().parents[1] / "bench" / "posenet_distill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("posenet_distill_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def world_poses(seed: int) -> list[np.ndarray]:
    """Three camera-to-world transforms ``[4, 4]``: the previous, the target and the next frame."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        m = np.eye(4)
        m[:3, :3] = axis_angle_to_matrix(rng.normal(size=3) * 0.2)
        m[:3, 3] = rng.normal(size=3)
        out.append(m)
    return out


def target_to_source(world: list[np.ndarray], target: int, source: int) -> np.ndarray:
    """The transform taking points from ``target``'s camera frame to ``source``'s (what the warp takes)."""
    return np.linalg.inv(world[source]) @ world[target]


def oracle_pose_net(world: list[np.ndarray]):
    """A PoseNet that reads which frames it was given (each image is filled with its frame's index) and outputs the
    exact motion with the first as target and the second as source, as (axis-angle, translation) ``[1, 1, 1, 3]``."""
    def pose_net(pair: torch.Tensor):
        first, second = int(pair[0, 0, 0, 0]), int(pair[0, 3, 0, 0])
        m = target_to_source(world, first, second)
        return (torch.tensor(matrix_to_axis_angle(m[:3, :3]), dtype=torch.float32).view(1, 1, 1, 3),
                torch.tensor(m[:3, 3], dtype=torch.float32).view(1, 1, 1, 3))
    return pose_net


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_reversed_and_mean_estimates_are_the_true_transforms(bench, seed):
    world = world_poses(seed)
    frame = lambda index: torch.full((1, 3, 4, 4), float(index))            # noqa: E731
    # unit depth: the depth-relative scaling multiplies the translation by 1
    batch = {"prev_aug": frame(0), "target_aug": frame(1), "next_aug": frame(2), "depth": torch.ones(1, 1, 4, 4)}
    truth = [target_to_source(world, 1, 0), target_to_source(world, 1, 2)]
    net = oracle_pose_net(world)
    forward = bench.posenet_poses(net, "depth_relative")
    backward = bench.posenet_poses(net, "depth_relative", time_reversed=True)
    for which in (forward, backward, bench.chordal_mean(forward, backward)):
        got = which(batch)
        for estimate, true in zip(got, truth):
            np.testing.assert_allclose(estimate[0].numpy(), true, atol=1e-5)
    # the two pairs are different motions, so a swapped pair could not pass
    assert np.abs(truth[0] - truth[1]).max() > 0.1


def test_chordal_mean_of_two_turns_is_the_half_turn(bench):
    """Rotations by +a and -a about one axis average to the identity; translations average arithmetically."""
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    first, second = np.eye(4), np.eye(4)
    first[:3, :3], first[:3, 3] = axis_angle_to_matrix(axis * 0.3), [1.0, 2.0, 3.0]
    second[:3, :3], second[:3, 3] = axis_angle_to_matrix(-axis * 0.3), [3.0, 2.0, 1.0]
    as_batch = lambda m: [torch.tensor(m, dtype=torch.float32)[None]]        # noqa: E731
    mean = bench.chordal_mean(lambda b: as_batch(first), lambda b: as_batch(second))({})[0][0].numpy()
    np.testing.assert_allclose(mean[:3, :3], np.eye(3), atol=1e-5)
    np.testing.assert_allclose(mean[:3, 3], [2.0, 2.0, 2.0], atol=1e-6)


@pytest.mark.parametrize("gain", [0.0, 0.5, 1.0])
def test_rotation_gain_scales_the_residual_correction_angle(bench, gain):
    """``gain<k>``: a residual PoseNet's rotation correction, scaled in angle by k, after the measured rotation; the
    translation is the correction's own (for the inverted previous pair, turned by the scaled rotation)."""
    world = world_poses(2)
    frame = lambda index: torch.full((1, 3, 4, 4), float(index))            # noqa: E731
    rng = np.random.default_rng(7)
    measured = [axis_angle_to_matrix(rng.normal(size=3) * 0.1) for _ in range(2)]
    start = []
    for r in measured:
        m = torch.eye(4)
        m[:3, :3] = torch.tensor(r, dtype=torch.float32)
        start.append(m[None])
    batch = {"prev_aug": frame(0), "target_aug": frame(1), "next_aug": frame(2), "depth": torch.ones(1, 1, 4, 4),
             "start": start}
    got = bench.posenet_poses(oracle_pose_net(world), "depth_relative", residual=True, rotation_gain=gain)(batch)
    for i, (pair, inverted) in enumerate([((0, 1), True), ((1, 2), False)]):
        motion = target_to_source(world, *pair)           # what the oracle outputs for the pair in temporal order
        correction = np.eye(4)
        correction[:3, :3] = axis_angle_to_matrix(gain * matrix_to_axis_angle(motion[:3, :3]))
        correction[:3, 3] = motion[:3, 3]
        if inverted:
            correction = np.linalg.inv(correction)
        expected = correction.copy()
        expected[:3, :3] = measured[i] @ correction[:3, :3]
        np.testing.assert_allclose(got[i][0].numpy(), expected, atol=1e-5)
    if gain == 0.0:                                       # no correction: exactly the measured rotation
        np.testing.assert_allclose(got[1][0, :3, :3].numpy(), measured[1], atol=1e-6)
