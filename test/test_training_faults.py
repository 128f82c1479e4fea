"""Faults a user of spidepth-train hits, each refused or repaired with a clear message (issue #13, part 5)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spidepth_ros.training.cli import main, remove_stale_partial_saves

REPO_CONFIG = "config/train.yaml"


@pytest.mark.parametrize("case", ["missing", "not_a_bag", "missing_val"])
def test_bad_bag_paths_end_with_one_line_naming_the_path(tmp_path, capsys, case):
    (tmp_path / "folder").mkdir()
    good = tmp_path / "good"
    good.mkdir()
    (good / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    bags = {"missing": [str(tmp_path / "nope")], "not_a_bag": [str(tmp_path / "folder")],
            "missing_val": [str(good)]}[case]
    argv = ["--config", REPO_CONFIG, "--bags", *bags, "--out", str(tmp_path / "run"), "--no-progress"]
    if case == "missing_val":
        argv += ["--val-bags", str(tmp_path / "val_nope")]
    t0 = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spidepth-train: ")
    named = {"missing": "nope does not exist", "not_a_bag": "folder has no metadata.yaml",
             "missing_val": "val_nope does not exist"}[case]
    assert named in err[0]
    assert not (tmp_path / "run").exists()        # refused before anything was built or written
    assert time.monotonic() - t0 < 30


def test_stale_partial_saves_are_removed_but_a_live_writers_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.pt.tmp-{dead.pid}"
    live = tmp_path / f".best.pt.tmp-{os.getppid()}"
    keep = tmp_path / "last.pt"
    for f in (stale, live, keep):
        f.write_bytes(b"partial")
    assert remove_stale_partial_saves(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and keep.exists()


def test_set_given_twice_keeps_both_groups():
    import argparse

    from spidepth_ros.training import cli

    parsed = {}

    def fake_load(path, overrides):
        parsed["overrides"] = list(overrides)
        raise SystemExit(0)

    original = cli.load_config
    cli.load_config = fake_load
    try:
        with pytest.raises(SystemExit):
            cli.main(["--config", REPO_CONFIG, "--set", "optim.lr=1e-5", "--set", "seed=3", "optim.epochs=2"])
    finally:
        cli.load_config = original
    assert parsed["overrides"][:3] == ["optim.lr=1e-5", "seed=3", "optim.epochs=2"]
    assert isinstance(argparse, object)


def test_flipped_item_mirrors_the_principal_point_about_pixel_centres(rng):
    """A mirrored image maps pixel u to W-1-u, so the flipped item's cx (pixels) must be W-1-cx (1-cx/W was off
    by one pixel)."""
    from spidepth_ros.training.data import FrameStore, TripletDataset

    width, height, cx = 6, 4, 1.8
    frames = (rng.random((3, height, width, 3)) * 255).astype(np.uint8)
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 0.6, 0.9, (cx + 0.5) / width, 0.5     # normalised: (cx + 0.5) / W
    store = FrameStore(frames, np.arange(3, dtype=np.int64), k, np.ones(3, np.float32), "cam")
    data = TripletDataset([store], [(0, 0, 1, 2)] * 8, width, height, augment=True, flip=True, jitter=False, seed=3)
    flips = [np.random.default_rng([3, 0, i]).random() < 0.5 for i in range(8)]   # the dataset's own rule
    assert any(flips) and not all(flips)
    for i, flipped in enumerate(flips):
        got = float(data[i]["K"][0, 2])
        assert got == pytest.approx(width - 1 - cx if flipped else cx, abs=1e-6)


def test_collapse_and_regression_warnings_name_the_problem():
    """The thresholds in words, on the numbers of docs/real_data.md's fine-tune runs."""
    from spidepth_ros.training.diagnostics import collapse_warnings, validation_warnings

    assert validation_warnings({"val_abs_rel": 0.7243, "val_const_abs_rel": 0.5515}, 0.1125) == \
        ["the model is no better than a constant depth on the validation frames"]
    worse = validation_warnings({"val_abs_rel": 0.2343, "val_const_abs_rel": 0.5515}, 0.1125)
    assert len(worse) == 1 and "worse than the initial model's 0.1125" in worse[0]
    assert validation_warnings({"val_abs_rel": 0.1111, "val_const_abs_rel": 0.5515}, 0.1125) == []
    assert validation_warnings({"val_photometric": 0.05}, 0.1125) == []
    drift = collapse_warnings({"train_depth_median": 2.44, "train_depth_spread_p95_p5": 86.0,
                               "train_automask_fraction": 0.42}, [(14.13, "the first epoch's")])
    assert len(drift) == 1 and "drifted 0.2x" in drift[0]
    flat = collapse_warnings({"train_depth_median": 10.0, "train_depth_spread_p95_p5": 1.2,
                              "train_automask_fraction": 0.6}, [(10.0, "the first epoch's")])
    assert len(flat) == 2 and "flattening" in flat[0] and "60% of pixels are automasked" in flat[1]
    assert "data.frame_offset" in flat[1] and "target_parallax_px" not in flat[1]
    # triplets chosen by parallax ignore frame_offset / min_motion: the advice names the key that acts
    by_parallax = collapse_warnings({"train_automask_fraction": 0.6}, parallax_triplets=True)
    assert "Raise data.target_parallax_px" in by_parallax[0] and "data.frame_offset" not in by_parallax[0]
    turned = collapse_warnings({"train_refine_rotation_saturated_fraction": 0.5})
    assert len(turned) == 1 and "50% of pose refinements ran out of rotation" in turned[0]
    lost = collapse_warnings({"train_unmeasured_rotation_fraction": 0.3})
    assert len(lost) == 1 and "30% of pairs had no rotation measured" in lost[0]
    assert collapse_warnings({"train_unmeasured_rotation_fraction": 0.1,
                              "train_refine_rotation_saturated_fraction": 0.1}) == []
    short = collapse_warnings({"train_depth_median": 10.0, "train_depth_spread_p95_p5": 3.0,
                               "train_refine_saturated_fraction": 0.8}, [(10.0, "the first epoch's")])
    assert len(short) == 1 and "80% of pose refinements ran out of reach" in short[0] and \
        "pose.refine_lr_translation" in short[0]
    assert collapse_warnings({"train_refine_saturated_fraction": 0.1}) == []


def test_drift_is_measured_from_the_first_epoch_of_a_fine_tune_and_over_a_window_from_scratch():
    """A fine-tune keeps its starting model's scale; a scratch run settles its own (25 -> 4-7 units on the real
    recording, where the first-epoch rule warned on a healthy run), so a scratch run is compared with the previous
    epoch (a jump) and with the epoch DRIFT_WINDOW back, never its first SETTLE_EPOCHS (a steady drift)."""
    from spidepth_ros.training.diagnostics import (DRIFT_FACTOR, DRIFT_WINDOW, SETTLE_EPOCHS, collapse_warnings,
                                                   drift_references)

    def warnings(medians, from_scratch):
        return collapse_warnings({"train_depth_median": medians[-1]}, drift_references(medians, from_scratch))

    settling = [25.0, 18.0, 11.0, 7.0, 4.5, 5.2]          # 25 / 4.5 > DRIFT_FACTOR overall, < 2x per epoch
    assert settling[0] / min(settling) > DRIFT_FACTOR
    assert all(warnings(settling[:n], from_scratch=True) == [] for n in range(1, len(settling) + 1))
    fine_tune = [14.13, 9.0, 2.44]
    assert len(warnings(fine_tune, from_scratch=False)) == 1
    assert "drifted 0.2x from the first epoch's (14.13 -> 2.44)" in warnings(fine_tune, from_scratch=False)[0]
    jump = [6.0, 5.5, 30.0]
    assert "drifted 5.5x from the previous epoch's (5.50 -> 30.00)" in warnings(jump, from_scratch=True)[0]
    # settled at 6 units, then x1.5 every epoch: never 4x between two epochs, 5x over four of them
    steady = [20.0, 12.0, 8.0, 6.0, 6.0] + [6.0 * 1.5 ** i for i in range(1, 5)]
    assert all(b / a < DRIFT_FACTOR for a, b in zip(steady, steady[1:]))
    found = [warnings(steady[:n], from_scratch=True) for n in range(1, len(steady) + 1)]
    assert found[-1] and "drifted 5.1x from epoch 4's (6.00 -> 30.38)" in found[-1][0], found
    assert not any(found[:-1])
    assert SETTLE_EPOCHS + DRIFT_WINDOW >= 5
    assert drift_references([], from_scratch=False) == [] and drift_references([3.0], True) == []


def test_threads_zero_takes_this_process_share_of_the_cpus():
    """threads: 0 must not give every torchrun process and every DataLoader worker all cores."""
    from spidepth_ros.training.cli import auto_threads

    assert auto_threads(0, cpu_count=16, local_world_size=1) == 16
    assert auto_threads(0, cpu_count=16, local_world_size=4) == 4
    assert auto_threads(3, cpu_count=16, local_world_size=2) == 2       # 16 // (2 x 4)
    assert auto_threads(7, cpu_count=2, local_world_size=2) == 1        # never 0
    import os

    if hasattr(os, "sched_getaffinity"):
        assert auto_threads(0, local_world_size=1) == len(os.sched_getaffinity(0))


def test_every_training_key_is_in_the_documented_config_and_shipped_recipes_load():
    """config/train.yaml is the documentation of every key (a new key without a line there fails here), and the
    shipped recipes parse against the dataclasses (a renamed key in a recipe fails here)."""
    import dataclasses

    import yaml

    from spidepth_ros.training.config import TrainConfig, load_config

    documented = yaml.safe_load((Path(__file__).parents[1] / REPO_CONFIG).read_text())
    defaults = TrainConfig()
    for section in dataclasses.fields(defaults):
        value = getattr(defaults, section.name)
        if dataclasses.is_dataclass(value):
            missing = [f.name for f in dataclasses.fields(value) if f.name not in (documented.get(section.name) or {})]
            assert not missing, f"{section.name}: {missing} not documented in {REPO_CONFIG}"
        else:
            assert section.name in documented, f"{section.name} not documented in {REPO_CONFIG}"
    for recipe in ("train_handheld.yaml", "demo_mono.yaml", "demo_train.yaml", "demo_pose.yaml"):
        cfg = load_config(Path(__file__).parents[1] / "config" / recipe)
        assert cfg.model.preset == "small_r18_96x320"
    handheld = load_config(Path(__file__).parents[1] / "config" / "train_handheld.yaml")
    assert handheld.pose.init == "image_rotation" and handheld.data.max_frame_offset > 0


def test_pose_errors_of_a_known_rotation_and_direction_offset():
    """pose_errors on transforms built with a known error: a 3 degree extra rotation about an arbitrary axis and a
    translation turned 20 degrees and scaled 5x (monocular scale is not an error)."""
    from spidepth_ros.geometry import axis_angle_to_matrix
    from spidepth_ros.training.diagnostics import pose_errors

    recorded = np.eye(4)
    recorded[:3, :3] = axis_angle_to_matrix([0.02, -0.05, 0.01])
    recorded[:3, 3] = [0.1, 0.0, 0.8]
    axis = np.array([0.3, 0.8, -0.5]) / np.linalg.norm([0.3, 0.8, -0.5])
    estimated = recorded.copy()
    estimated[:3, :3] = recorded[:3, :3] @ axis_angle_to_matrix(np.radians(3.0) * axis)
    normal = np.cross(recorded[:3, 3], [0.0, 1.0, 0.0])
    normal /= np.linalg.norm(normal)
    estimated[:3, 3] = 5.0 * axis_angle_to_matrix(np.radians(20.0) * normal) @ recorded[:3, 3]
    rotation, direction = pose_errors(torch.tensor(estimated)[None], torch.tensor(recorded)[None])
    assert float(rotation[0]) == pytest.approx(3.0, abs=1e-4)
    assert float(direction[0]) == pytest.approx(20.0, abs=1e-4)


def test_best_epoch_is_chosen_by_plain_numbers_not_the_refined_photometric():
    """Without depth metrics best.pt follows PoseNet's photometric error (no refinement optimised it on the
    validation frames), not the refined poses' one; with depth metrics, AbsRel."""
    from spidepth_ros.training.cli import BestTracker
    from spidepth_ros.training.evaluate import spread_indices

    tracker = BestTracker()
    assert tracker.update(0, {"val_photometric": 0.040, "val_photometric_posenet": 0.20})
    assert not tracker.update(1, {"val_photometric": 0.030, "val_photometric_posenet": 0.21})
    assert tracker.update(2, {"val_photometric": 0.050, "val_photometric_posenet": 0.19})
    assert tracker.key == "val_photometric_posenet" and tracker.epoch == 2
    assert tracker.update(3, {"val_photometric_posenet": 0.30, "val_abs_rel": 0.5})   # like with like from here
    assert list(spread_indices(200, 5)) == [0, 50, 100, 149, 199] and list(spread_indices(3, 10)) == [0, 1, 2]


def test_a_checkpoint_saved_before_refine_method_resumes_with_adam():
    from spidepth_ros.training.config import config_from_dict, upgrade_saved_config

    old = {"pose": {"init": "image_rotation", "refine_steps": 20, "refine_lr_translation": 0.002}}
    assert config_from_dict(upgrade_saved_config(old)).pose.refine_method == "adam"
    new = {"pose": {"refine_method": "lm", "refine_steps": 5}}
    assert config_from_dict(upgrade_saved_config(new)).pose.refine_method == "lm"
    assert config_from_dict(upgrade_saved_config({})).pose.refine_method == "lm"


def test_an_optimiser_state_saved_before_posenet_had_its_own_group_resumes():
    """Checkpoints written when PoseNet shared the decoder's parameter group (2 groups) load into today's 3: the
    split puts exactly the PoseNet parameters (with their Adam moments) in the third group, and an old run keeps
    PoseNet's learning rate (upgrade_saved_config sets pose_lr_factor 1)."""
    from spidepth_ros.training.config import config_from_dict, upgrade_saved_config
    from spidepth_ros.training.trainer import Trainer, split_pose_param_group

    old_cfg = upgrade_saved_config({"model": {"preset": "small_r18_96x320"}, "optim": {"lr": 2e-4}})
    assert old_cfg["optim"]["pose_lr_factor"] == 1.0
    # a run saved before PoseNet became a correction resumes with the PoseNet it has (absolute, upstream's units)
    older = upgrade_saved_config({"pose": {"init": "image_rotation"}, "loss": {"ssim_alpha": 0.85}})
    assert older["pose"]["posenet_residual"] is False and older["loss"]["translation_scaling"] == "mean_inverse_depth"
    assert not config_from_dict(older).pose.posenet_residual and config_from_dict({}).pose.posenet_residual
    cfg = config_from_dict({"model": {"preset": "small_r18_96x320"}, "optim": {"lr": 2e-4, "pose_lr_factor": 10.0}})
    trainer = Trainer(cfg, torch.device("cpu"))
    for p in [*trainer.depth_net.parameters(), *trainer.pose_net.parameters()]:
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()                                        # Adam moments for every parameter
    today = trainer.optimizer.state_dict()
    g = today["param_groups"]
    merged = {**g[1], "params": g[1]["params"] + g[2]["params"]}     # the layout of an old checkpoint
    old = {"state": today["state"], "param_groups": [g[0], merged]}
    old_sched = {**trainer.scheduler.state_dict(), "base_lrs": [2e-4, 2e-4], "_last_lr": [2e-4, 2e-4]}
    decoder = len(list(trainer.depth_net.depth_decoder.parameters()))
    split, sched = split_pose_param_group(old, old_sched, decoder, 10.0)
    assert [grp["params"] for grp in split["param_groups"]] == [grp["params"] for grp in g]
    assert split["param_groups"][2]["lr"] == pytest.approx(2e-3) and sched["base_lrs"][2] == pytest.approx(2e-3)
    trainer.optimizer.load_state_dict(split)
    assert split_pose_param_group(today, trainer.scheduler.state_dict(), decoder, 10.0)[0] is today
