"""Training: geometry and losses against hand computations, bags in both storages, real short training runs,
exact resume, torchrun on the CPU, evaluation, and the errors users hit first."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spidepth_ros.bagio import BagError, BagWriter, iter_images
from spidepth_ros.metrics import EvalSettings
from spidepth_ros.synth import SynthConfig, render_sequence, write_bag
from spidepth_ros.training import losses, warping
from spidepth_ros.training.config import LossConfig, TrainConfig, load_config, save_config
from spidepth_ros.training.data import load_frames, select_triplets
from spidepth_ros.training.evaluate import evaluate_bags

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- geometry/losses
def test_ssim_of_identical_images_is_one(rng):
    x = torch.from_numpy(rng.random((2, 3, 20, 30)).astype(np.float32))
    assert float(losses.ssim_dissimilarity(x, x).max()) < 1e-6          # (1 - SSIM)/2 = 0  <=>  SSIM = 1
    assert float(losses.photometric_error(x, x).max()) < 1e-6
    y = x.clone()
    y[:, :, 10:] = 1 - y[:, :, 10:]
    assert float(losses.ssim_dissimilarity(x, y).mean()) > 0.1


def test_identity_pose_gives_zero_warp_error(rng):
    img = torch.from_numpy(rng.random((1, 3, 24, 32)).astype(np.float32))
    depth = torch.from_numpy(rng.uniform(1, 20, (1, 1, 24, 32)).astype(np.float32))
    k = torch.tensor([[30.0, 0, 15.5, 0], [0, 30.0, 11.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[None]
    warped = warping.warp(img, depth, k, torch.linalg.inv(k), torch.eye(4)[None])
    torch.testing.assert_close(warped, img, atol=1e-5, rtol=0)


def test_known_translation_moves_pixels_by_the_formula():
    h, w, fx, z, tx = 20, 40, 50.0, 10.0, 0.8
    k = torch.tensor([[fx, 0, 19.5, 0], [0, fx, 9.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[None]
    t = torch.eye(4)[None].clone()
    t[0, 0, 3] = tx                                    # target -> source: x' = x + tx
    pts = warping.backproject(torch.full((1, 1, h, w), z), torch.linalg.inv(k))
    grid = warping.project(pts, k, t, h, w)
    u_src = (grid[0, ..., 0] + 1) / 2 * (w - 1)
    u = torch.arange(w, dtype=torch.float32)[None].expand(h, w)
    torch.testing.assert_close(u_src, u + fx * tx / z, atol=1e-4, rtol=0)     # shift = fx * tx / Z = 4 px
    v_src = (grid[0, ..., 1] + 1) / 2 * (h - 1)
    torch.testing.assert_close(v_src, torch.arange(h, dtype=torch.float32)[:, None].expand(h, w), atol=1e-4, rtol=0)


def test_derotate_is_the_rotation_homography(rng):
    """``warping.derotate`` samples the source at K R K^-1 p for every target pixel p: OpenCV's perspective warp
    with that homography (as the inverse map) gives the same image; with R transposed it does not."""
    from spidepth_ros.geometry import axis_angle_to_matrix

    h, w = 48, 64
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)      # smooth: bilinear agrees
    k = np.array([[60.0, 0, 31.0], [0, 60.0, 24.0], [0, 0, 1]])
    r = axis_angle_to_matrix(np.array([0.01, -0.03, 0.02]))                            # ~2 degrees
    expected = cv2.warpPerspective(img, k @ r @ np.linalg.inv(k), (w, h),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    kt = torch.from_numpy(k).float()[None]
    got = warping.derotate(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(r).float()[None], kt,
                           torch.linalg.inv(kt))[0].permute(1, 2, 0).numpy()
    inner = (slice(6, -6), slice(6, -6))                   # away from the borders (OpenCV fills, we clamp)
    assert np.abs(got[inner] - expected[inner]).max() < 2e-3
    transposed = warping.derotate(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(r.T).float()[None],
                                  kt, torch.linalg.inv(kt))[0].permute(1, 2, 0).numpy()
    assert np.abs(transposed[inner] - expected[inner]).mean() > 20 * np.abs(got[inner] - expected[inner]).mean()


def test_true_depth_and_pose_explain_a_real_synthetic_pair():
    """Warping frame t+1 with the renderer's ground-truth depth and pose reproduces frame t."""
    cfg = SynthConfig(frames=2, seed=5, width=160, height=48, num_boxes=40)
    f0, f1 = list(render_sequence(cfg))
    t_src_from_tgt = np.linalg.inv(f1.world_T_cam) @ f0.world_T_cam
    k = torch.from_numpy(np.pad(cfg.intrinsics.matrix(), ((0, 1), (0, 1)))).float()[None]
    k[0, 3, 3] = 1
    target = torch.from_numpy(f0.rgb).permute(2, 0, 1)[None].float() / 255
    source = torch.from_numpy(f1.rgb).permute(2, 0, 1)[None].float() / 255
    depth = torch.from_numpy(f0.depth)[None, None]
    t = torch.from_numpy(t_src_from_tgt).float()[None]

    def error(d):
        return float(losses.photometric_error(warping.warp(source, d, k, torch.linalg.inv(k), t), target).mean())

    err_good = error(depth)
    # the true geometry explains the pair better than a wrong scale either way, and far better than no motion
    assert err_good < error(depth * 2) and err_good < error(depth * 0.5)
    assert err_good < 0.3 * float(losses.photometric_error(source, target).mean())


def test_smoothness_zero_for_constant_depth_and_min_reprojection():
    img = torch.rand(1, 3, 10, 10)
    assert float(losses.edge_aware_smoothness(torch.full((1, 1, 10, 10), 4.0), img)) == 0.0
    loss = losses.SelfSupervisedLoss(LossConfig(automask=True))
    k = torch.tensor([[10.0, 0, 4.5, 0], [0, 10.0, 4.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[None]
    out = loss(torch.ones(1, 1, 10, 10), img, [img, torch.rand(1, 3, 10, 10)], [torch.eye(4)[None]] * 2, k,
               torch.linalg.inv(k))
    # the first source is identical to the target: the per-pixel minimum is ~0 everywhere
    assert float(out["photometric"]) < 1e-4


# --------------------------------------------------------------------------------------------------------- bags
@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for name, storage, compressed, seed in (("train_mcap", "mcap", False, 1), ("train_sqlite", "sqlite3", True, 2),
                                             ("val", "mcap", False, 3)):
        out[name] = write_bag(SynthConfig(frames=24, seed=seed), root / name, storage, compressed, progress=False)
    return out


def test_bags_read_back_in_both_storages(bags):
    cfg = SynthConfig(frames=24, seed=2)
    expected = list(render_sequence(cfg))
    got = list(iter_images([bags["train_sqlite"]], "/camera/image_raw/compressed"))
    assert len(got) == 24 and got[3][0] == expected[3].stamp_ns
    np.testing.assert_array_equal(got[3][1], expected[3].rgb)           # png is lossless
    raw = list(iter_images([bags["train_mcap"]], "/camera/image_raw"))
    np.testing.assert_array_equal(raw[5][1], list(render_sequence(SynthConfig(frames=24, seed=1)))[5].rgb)
    depth = list(iter_images([bags["train_mcap"]], "/camera/depth", depth=True))
    assert depth[0][1].dtype == np.float32 and np.nanmax(depth[0][1]) < 40


def test_frame_store_intrinsics_and_motion(bags, tmp_path):
    store = load_frames(bags["train_mcap"], "/camera/image_raw", "/camera/camera_info", 320, 96, tmp_path,
                        progress=False)
    intr = SynthConfig().intrinsics
    np.testing.assert_allclose(store.k_normalized[0, 0], intr.fx / intr.width)
    np.testing.assert_allclose(store.k_normalized[1, 2], (intr.cy + 0.5) / intr.height)
    assert store.frames.shape == (24, 96, 320, 3) and np.all(store.motion[1:] > 0.01)
    cached = load_frames(bags["train_mcap"], "/camera/image_raw", "/camera/camera_info", 320, 96, tmp_path,
                         progress=False)
    np.testing.assert_array_equal(np.asarray(cached.frames), np.asarray(store.frames))
    triplets = select_triplets(store, 2, 0.5, 0.01)
    assert triplets[0] == (0, 2, 4) and len(triplets) == 20


def _fill_cache(args) -> bytes:
    bag, cache = args
    store = load_frames(Path(bag), "/camera/image_raw", "/camera/camera_info", 320, 96, Path(cache), progress=False)
    return np.asarray(store.frames).tobytes()


def test_two_processes_filling_one_cache_both_succeed(bags, tmp_path):
    """torchrun ranks (or two trainings sharing cache_dir) may decode the same bag at once."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        # (a timeout: with the shared temporary file of old, a worker failed and the pool hung)
        results = pool.map_async(_fill_cache, [(str(bags["train_sqlite"]), str(tmp_path))] * 2).get(timeout=300)
    expected = np.stack([cv2.resize(rgb, (320, 96), interpolation=cv2.INTER_AREA)
                         for _, rgb in iter_images([bags["train_sqlite"]], "/camera/image_raw/compressed")])
    assert results[0] == results[1] == expected.tobytes()
    assert not list(tmp_path.glob("*.tmp*"))                            # no temporary file left behind


def write_static_bag(path: Path, frames: int = 10, with_info: bool = True) -> Path:
    rgb = next(iter(render_sequence(SynthConfig(frames=1, seed=9))))
    with BagWriter(path, "mcap") as w:
        for i in range(frames):
            stamp = 1_000_000_000 + i * 100_000_000
            w.write("/camera/image_raw", w.image_msg(stamp, "cam", rgb.rgb, "rgb8"), stamp)
            if with_info:
                w.write("/camera/camera_info", w.camera_info_msg(stamp, "cam", SynthConfig().intrinsics), stamp)
    return path


def test_clear_errors(bags, tmp_path):
    from spidepth_ros.training.config import DataConfig
    from spidepth_ros.training.data import build_datasets

    with pytest.raises(BagError, match="does not exist"):
        list(iter_images([tmp_path / "nope"], "/camera/image_raw"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9, storage_identifier: mcap")
    with pytest.raises(BagError, match="cannot open"):
        list(iter_images([corrupt], "/camera/image_raw"))
    with pytest.raises(BagError, match=r"topic '/cam/left' is not in the bag; it has: .*/camera/image_raw"):
        list(iter_images([bags["train_mcap"]], "/cam/left"))
    no_info = write_static_bag(tmp_path / "noinfo", with_info=False)
    with pytest.raises(BagError, match="no intrinsics"):
        load_frames(no_info, "/camera/image_raw", "/camera/camera_info", 320, 96, tmp_path / "c", progress=False)
    static = write_static_bag(tmp_path / "static")
    with pytest.raises(BagError, match="too little parallax to train: .* lower data.target_parallax_px"):
        build_datasets(DataConfig(bags=(str(static),)), 320, 96, tmp_path / "c2", 0, progress=False)
    with pytest.raises(BagError, match="too few moving frames"):
        build_datasets(DataConfig(bags=(str(static),), target_parallax_px=0.0, max_frame_offset=0), 320, 96,
                       tmp_path / "c3", 0, progress=False)


# ----------------------------------------------------------------------------------------------------- training
def make_cfg(bags, out: Path, **optim) -> TrainConfig:
    from spidepth_ros.training.config import config_from_dict

    return config_from_dict({
        "data": {"bags": [str(bags["train_mcap"]), str(bags["train_sqlite"])], "val_bags": [str(bags["val"])],
                 "image_topic": "/camera/image_raw", "depth_topic": "/camera/depth", "color_jitter": False,
                 # the mechanics of the loop on PoseNet's poses at a fixed offset (the default recipe: its own tests)
                 "target_parallax_px": 0.0, "max_frame_offset": 0},
        "pose": {"init": "posenet", "refine_steps": 0},
        "loss": {"translation_scaling": "mean_inverse_depth"},       # upstream's PoseNet units and learning rate
        "model": {"preset": "small_r18_96x320"},
        "optim": {"batch_size": 4, "lr": 5e-4, "epochs": 1, "pose_lr_factor": 1.0, **optim},
        "out_dir": str(out), "seed": 0, "checkpoint_every": 3, "log_every": 1})


def test_config_yaml_overrides_and_errors(tmp_path):
    cfg = load_config(REPO / "config" / "train.yaml", ["optim.lr=3e-4", "data.bags=[a, b]"])
    assert cfg.optim.lr == 3e-4 and cfg.data.bags == ("a", "b") and cfg.loss.ssim_window == 7
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown keys \\['lrr'\\]"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="expected a number"):
        load_config(None, ["optim.lr=fast"])


def _trainer_and_data(cfg, cache):
    from spidepth_ros.training.data import build_datasets
    from spidepth_ros.training.trainer import Trainer

    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, torch.device("cpu"))
    data = build_datasets(cfg.data, 320, 96, cache, cfg.seed, progress=False)
    return trainer, data


def _abs_rel(trainer, bag) -> float:
    from spidepth_ros.runtime.preprocess import Preprocessor
    from spidepth_ros.metrics import summarize

    pre = Preprocessor(320, 96)
    trainer.depth_net.eval()
    with torch.no_grad():
        rows = evaluate_bags(lambda rgb: trainer.depth_net(torch.from_numpy(pre.prepare(rgb).tensor))[0, 0].numpy(),
                             [bag], "/camera/image_raw", "/camera/depth", EvalSettings(0.1, 40.0), progress=False)
    trainer.depth_net.train()
    return summarize(rows)["abs_rel"]


def test_short_training_lowers_loss_and_abs_rel(bags, tmp_path):
    from torch.utils.data import DataLoader, Subset

    cfg = make_cfg(bags, tmp_path / "run")
    trainer, data = _trainer_and_data(cfg, tmp_path / "cache")
    fixed = Subset(data.train, list(range(0, len(data.train), 4))[:8])
    batches = list(DataLoader(fixed, batch_size=4))

    def mean_photometric():
        trainer.depth_net.eval(), trainer.pose_net.eval()
        with torch.no_grad():
            v = float(np.mean([float(trainer.compute_loss(b)["photometric"]) for b in batches]))
        trainer.depth_net.train(), trainer.pose_net.train()
        return v

    loss0, rel0 = mean_photometric(), _abs_rel(trainer, bags["train_mcap"])
    for _ in range(12):
        for b in batches:
            trainer.train_step(b)
    loss1, rel1 = mean_photometric(), _abs_rel(trainer, bags["train_mcap"])
    assert loss1 < 0.9 * loss0
    assert rel1 < rel0


def test_resume_continues_with_the_same_next_step_loss(bags, tmp_path):
    from spidepth_ros.training.trainer import Trainer

    losses_full: list[float] = []
    cfg = make_cfg(bags, tmp_path / "full", max_steps=5)
    trainer, data = _trainer_and_data(cfg, tmp_path / "cache")
    trainer.fit(data.train, tmp_path / "full", on_log=lambda s, o: losses_full.append(float(o["loss"].detach())),
                progress=False)
    assert len(losses_full) == 5

    part = make_cfg(bags, tmp_path / "part", max_steps=3)          # "interrupted" after step 3
    t1, d1 = _trainer_and_data(part, tmp_path / "cache")
    t1.fit(d1.train, tmp_path / "part", progress=False)
    assert (tmp_path / "part" / "last.pt").exists() and (tmp_path / "part" / "config.yaml").exists()

    resumed_cfg = make_cfg(bags, tmp_path / "part", max_steps=5)
    torch.manual_seed(1234)                                          # resume must not depend on the fresh seed
    t2 = Trainer(resumed_cfg, torch.device("cpu"))
    t2.load(tmp_path / "part" / "last.pt")
    assert (t2.global_step, t2.step_in_epoch) == (3, 3)
    resumed: list[float] = []
    t2.fit(d1.train, tmp_path / "part", on_log=lambda s, o: resumed.append(float(o["loss"].detach())), progress=False)
    # equal up to CPU float reduction order (~1e-6); a different batch or RNG state moves it by >1e-3
    assert resumed == pytest.approx(losses_full[3:], rel=5e-5)


def test_training_cli_end_to_end_with_tensorboard(bags, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "spidepth_ros.training.cli", "--config", str(REPO / "config" / "train.yaml"),
           "--bags", str(bags["train_mcap"]), "--val-bags", str(bags["val"]), "--out", str(out), "--no-progress",
           "--set", "optim.epochs=1", "optim.batch_size=4", "data.depth_topic=/camera/depth", "threads=2"]
    run = subprocess.run(cmd, check=True, env=env, timeout=600, capture_output=True, text=True)
    assert (out / "last.pt").exists() and (out / "best.pt").exists() and (out / "config.yaml").exists()
    assert any((out / "tensorboard").iterdir())
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]                  # epoch 0: the initial model, before any step
    record = rows[-1]
    assert 0 < record["val_abs_rel"] < 5 and record["val_photometric"] > 0
    assert record["val_const_abs_rel"] > 0 and "train_depth_spread_p95_p5" in record
    assert record["train_automask_fraction"] >= 0 and record["train_translation_norm"] > 0
    assert "epoch 0 (initial model, before any step)" in run.stdout
    assert f"constant depth {record['val_const_abs_rel']:.4f}" in run.stdout
    # best.pt is the epoch with the lowest validation AbsRel (the initial model counts)
    best_epoch = min(rows, key=lambda r: r["val_abs_rel"])["epoch"]
    assert f"best.pt <- epoch {best_epoch} (by val_abs_rel)" in run.stdout


def parameters(net: torch.nn.Module) -> dict:
    """A copy of a network's trainable parameters (not its buffers: BatchNorm statistics move on every forward
    in train mode, so comparing state_dict() would call a network with no gradient 'learned')."""
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def test_pose_warmup_trains_posenet_only(bags, tmp_path):
    """optim.pose_warmup_steps: the depth network (weights and BatchNorm statistics) is untouched, PoseNet moves;
    after the warm-up both train."""
    cfg = make_cfg(bags, tmp_path / "warm", pose_warmup_steps=2, max_steps=3)
    trainer, data = _trainer_and_data(cfg, tmp_path / "cache")
    depth0 = {k: v.clone() for k, v in trainer.depth_net.state_dict().items()}
    loader = torch.utils.data.DataLoader(data.train, batch_size=4)
    batches = iter(loader)
    for _ in range(2):
        pose_before = parameters(trainer.pose_net)
        trainer.train_step(next(batches))
        # PoseNet's weights moved (parameters only: BatchNorm buffers change on any forward in train mode)
        assert any(not torch.equal(v, dict(trainer.pose_net.named_parameters())[k]) for k, v in pose_before.items())
    # the frozen depth network: weights AND BatchNorm statistics untouched
    assert all(torch.equal(v, trainer.depth_net.state_dict()[k]) for k, v in depth0.items())
    depth_params = parameters(trainer.depth_net)
    trainer.train_step(next(batches))
    assert any(not torch.equal(v, dict(trainer.depth_net.named_parameters())[k]) for k, v in depth_params.items())


def no_dropout(*nets: torch.nn.Module) -> None:
    """Dropout off (the Self Query head's transformer has it, in its attention too), so forwards repeat exactly."""
    for net in nets:
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(module, torch.nn.MultiheadAttention):
                module.dropout = 0.0


def test_scale_anchor_in_a_fine_tune_holds_to_the_starting_model_also_after_a_resume(bags, tmp_path):
    """loss.scale_anchor in spidepth-train (on by default): off from scratch (no model to hold the scale to); with
    model.init the reference network holds the init weights, untouched by training and by a resume from a later
    checkpoint; the first step's anchor loss is zero (the same weights, dropout off) and later ones are not."""
    import dataclasses

    from spidepth_ros.training.trainer import Trainer

    base = make_cfg(bags, tmp_path / "init", max_steps=1)
    start, data = _trainer_and_data(base, tmp_path / "cache")
    start.save(tmp_path / "init.pt")
    anchored_loss = dataclasses.replace(base.loss, scale_anchor=1.0)
    assert TrainConfig().loss.scale_anchor == 3.0 and base.model.init == "scratch"
    assert start.anchor_net is None and "scale_anchor" not in start.compute_loss(next(iter(
        torch.utils.data.DataLoader(data.train, batch_size=2))))

    cfg = dataclasses.replace(base, loss=anchored_loss, out_dir=str(tmp_path / "ft"),
                              model=dataclasses.replace(base.model, init=str(tmp_path / "init.pt")),
                              optim=dataclasses.replace(base.optim, max_steps=3))
    trainer = Trainer(cfg, torch.device("cpu"))
    no_dropout(trainer.depth_net, trainer.anchor_net)
    init = parameters(start.depth_net)
    anchors: list[float] = []
    trainer.fit(data.train, tmp_path / "ft", on_log=lambda s, o: anchors.append(float(o["scale_anchor"])),
                progress=False)
    assert len(anchors) == 3 and anchors[0] == pytest.approx(0.0, abs=1e-10) and max(anchors[1:]) > 1e-8, anchors
    reference = dict(trainer.anchor_net.named_parameters())
    assert all(torch.equal(v, reference[k]) for k, v in init.items())
    trained = parameters(trainer.depth_net)
    assert any(not torch.equal(v, trained[k]) for k, v in init.items())
    with torch.no_grad():           # validation / the adaptation guard: no training term, no reference forward
        assert "scale_anchor" not in trainer.compute_loss(next(iter(torch.utils.data.DataLoader(data.train,
                                                                                                 batch_size=2))))

    resumed = Trainer(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=5)), torch.device("cpu"))
    resumed.load(tmp_path / "ft" / "last.pt")
    reference = dict(resumed.anchor_net.named_parameters())
    assert all(torch.equal(v, reference[k]) for k, v in init.items())
    assert all(torch.equal(v, dict(resumed.depth_net.named_parameters())[k]) for k, v in trained.items())


def test_torchrun_two_processes_on_cpu(bags, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "spidepth_ros.training.cli",
           "--config", str(REPO / "config" / "train.yaml"), "--bags", str(bags["train_mcap"]),
           "--out", str(out), "--no-progress", "--set", "optim.max_steps=2", "optim.batch_size=2", "threads=1"]
    result = subprocess.run(cmd, env=env, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stdout
    from spidepth_ros.checkpoint import safe_torch_load

    assert safe_torch_load(out / "last.pt")["global_step"] == 2


# ----------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_against_depth_topic_exact_cases(bags):
    gt = dict(iter_images([bags["val"]], "/camera/depth", depth=True))
    frames = list(iter_images([bags["val"]], "/camera/image_raw"))
    lookup = {f[1].tobytes(): s for s, f in zip([s for s, _ in frames], frames)}

    def perfect(rgb):
        return gt[lookup[rgb.tobytes()]]

    rows = evaluate_bags(perfect, [bags["val"]], "/camera/image_raw", "/camera/depth", EvalSettings(0.1, 40.0),
                         progress=False)
    assert len(rows) == 24 and max(r["abs_rel"] for r in rows) < 1e-6 and min(r["a1"] for r in rows) == 1.0
    doubled = evaluate_bags(lambda rgb: 2 * perfect(rgb), [bags["val"]], "/camera/image_raw", "/camera/depth",
                            EvalSettings(0.1, 80.0, median_scaling=False), progress=False)
    assert doubled[0]["abs_rel"] == pytest.approx(1.0) and doubled[0]["a1"] == 0.0
    scaled = evaluate_bags(lambda rgb: 2 * perfect(rgb), [bags["val"]], "/camera/image_raw", "/camera/depth",
                           EvalSettings(0.1, 40.0), progress=False)
    assert scaled[0]["abs_rel"] < 1e-6 and scaled[0]["scale"] == pytest.approx(0.5)
    # a budget of frames is spread over the whole bag: its first and last ground-truth frames and even steps
    spread = evaluate_bags(perfect, [bags["val"]], "/camera/image_raw", "/camera/depth", EvalSettings(0.1, 40.0),
                           progress=False, spread=7)
    stamps = sorted(gt)
    assert [r["stamp_ns"] for r in spread] == [stamps[i] for i in (0, 4, 8, 12, 15, 19, 23)]


def test_eval_cli_with_16uc1_ground_truth(tmp_path, small_onnx):
    from spidepth_ros.encodings import metres_to_16uc1
    from spidepth_ros.training.evaluate import main as eval_main

    bag = tmp_path / "mm"
    with BagWriter(bag, "sqlite3") as w:
        for f in render_sequence(SynthConfig(frames=4, seed=4)):
            w.write("/camera/image_raw", w.image_msg(f.stamp_ns, "cam", f.rgb, "rgb8"), f.stamp_ns)
            w.write("/camera/depth", w.image_msg(f.stamp_ns, "cam", metres_to_16uc1(f.depth), "16UC1"), f.stamp_ns)
    assert eval_main(["--model", str(small_onnx), "--bags", str(bag), "--out", str(tmp_path / "res")]) == 0
    lines = (tmp_path / "res" / "per_frame.csv").read_text().splitlines()
    assert lines[0].startswith("stamp_ns,abs_rel") and len(lines) == 5


# ------------------------------------------------------------------------------------------------------- stereo
def test_stereo_pairs_as_the_s_frame(tmp_path):
    """A stereo bag: the baseline comes from CameraInfo Tx, the 's' frame's known transform with the true
    depth explains the right image, and a training step uses it as a third source."""
    from spidepth_ros.bagio import read_camera_info
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.data import build_datasets
    from spidepth_ros.training.trainer import Trainer

    cfg_s = SynthConfig(frames=10, seed=6, stereo_baseline=0.5)
    bag = write_bag(cfg_s, tmp_path / "stereo", progress=False)
    calib = read_camera_info([bag], "/camera_right/camera_info")
    assert calib.baseline == pytest.approx(0.5)
    cfg = config_from_dict({"data": {"bags": [str(bag)], "stereo_image_topic": "/camera_right/image_raw",
                                     "stereo_camera_info_topic": "/camera_right/camera_info", "flip": False,
                                     "color_jitter": False, "val_fraction": 0.2},
                            "optim": {"batch_size": 2}})
    data = build_datasets(cfg.data, 320, 96, tmp_path / "cache", 0, progress=False)
    item = data.train[0]
    assert item["stereo_T"][0, 3] == pytest.approx(-0.5) and item["stereo"].shape == (3, 96, 320)

    # ground-truth depth + the stereo transform reproduce the left image from the right one
    frame = list(render_sequence(cfg_s))[int(item["index"])]
    import cv2

    gt = torch.from_numpy(cv2.resize(frame.depth, (320, 96), interpolation=cv2.INTER_NEAREST))[None, None]
    k, inv_k = item["K"][None], item["inv_K"][None]
    target, right = item["target"][None], item["stereo"][None]
    good = losses.photometric_error(warping.warp(right, gt, k, inv_k, item["stereo_T"][None]), target).mean()
    bad_t = item["stereo_T"].clone()
    bad_t[0, 3] = 0.5                                            # wrong side
    bad = losses.photometric_error(warping.warp(right, gt, k, inv_k, bad_t[None]), target).mean()
    assert float(good) < 0.6 * float(bad)

    trainer = Trainer(cfg, torch.device("cpu"))
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))
    out = trainer.train_step(batch)
    assert len(out["warped"]) == 3 and torch.isfinite(out["loss"])


def test_flipped_stereo_item_with_a_centred_principal_point(rng):
    """A flip mirrors the stereo frame and swaps the baseline's sign, also when cx is exactly the centre
    (mirroring leaves such a principal point unchanged, so the flip must not be inferred from it)."""
    from spidepth_ros.training.data import FrameStore, TripletDataset

    frames = (rng.random((3, 4, 6, 3)) * 255).astype(np.uint8)
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = 0.6, 0.9, 0.5, 0.5
    right = FrameStore(frames[::-1].copy(), np.arange(3, dtype=np.int64), k, np.ones(3, np.float32), "right")
    store = FrameStore(frames, np.arange(3, dtype=np.int64), k, np.ones(3, np.float32), "left", stereo=right,
                       stereo_index=np.arange(3), baseline=0.25)
    data = TripletDataset([store], [(0, 0, 1, 2)] * 8, 6, 4, augment=True, flip=True, jitter=False, seed=3)
    flips = [np.random.default_rng([3, 0, i]).random() < 0.5 for i in range(8)]   # the dataset's own rule
    assert any(flips) and not all(flips)
    for i, flipped in enumerate(flips):
        item = data[i]
        expected = frames[1][:, ::-1] if flipped else frames[1]
        np.testing.assert_allclose(item["target"].numpy().transpose(1, 2, 0), expected / 255.0, atol=1e-7)
        expected_right = right.frames[1][:, ::-1] if flipped else right.frames[1]
        np.testing.assert_allclose(item["stereo"].numpy().transpose(1, 2, 0), expected_right / 255.0, atol=1e-7)
        assert float(item["stereo_T"][0, 3]) == pytest.approx(0.25 if flipped else -0.25)


def test_default_recipe_step_trains_depth_and_only_the_distillation_trains_posenet(bags, tmp_path):
    """config/train.yaml's pose section (image-rotation start, LM refinement): both networks learn, and PoseNet's
    gradient comes from the distillation alone (with distill_weight 0 its parameters stay exactly as they were,
    since the warp does not use PoseNet's poses: a dead distillation would show as that). Whether the refined
    poses are right is test_trainer_oracle.py's business, against the truth."""
    from spidepth_ros.training.config import config_from_dict, load_config

    default_pose = load_config(REPO / "config" / "train.yaml").to_dict()["pose"]
    assert default_pose["init"] == "image_rotation" and default_pose["refine_method"] == "lm"
    changed = {}
    for weight in (1.0, 0.0):
        base = make_cfg(bags, tmp_path / f"refine{weight}").to_dict()
        base["pose"] = {**default_pose, "distill_weight": weight, "posenet_start": False}
        base["data"].update(target_parallax_px=0.0, max_frame_offset=4)
        trainer, data = _trainer_and_data(config_from_dict(base), tmp_path / f"cache{weight}")
        pose0, depth0 = parameters(trainer.pose_net), parameters(trainer.depth_net)
        batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
        out = trainer.train_step(batch)
        assert torch.isfinite(out["loss"]) and 0 < float(out["refine_cost_reduction"]) < 1
        now = dict(trainer.pose_net.named_parameters())
        changed[weight] = any(not torch.equal(v, now[k]) for k, v in pose0.items())
        depth_now = dict(trainer.depth_net.named_parameters())
        assert any(not torch.equal(v, depth_now[k]) for k, v in depth0.items())
    assert changed == {1.0: True, 0.0: False}


def test_a_non_finite_loss_makes_no_update_and_a_divergence_stops_with_the_reason(bags, tmp_path, monkeypatch):
    """A batch whose loss is NaN (one input image poisoned) is skipped: no parameter or Adam state changes, the
    step is counted as non-finite, the next good batch trains; MAX_NONFINITE_STEPS in a row raise with what to
    do. (Backward through the warp's sampling with NaN coordinates can kill the process: it must not run.)"""
    from spidepth_ros.training import trainer as trainer_module
    from spidepth_ros.training.diagnostics import EpochDiagnostics

    cfg = make_cfg(bags, tmp_path / "nan")
    trainer, data = _trainer_and_data(cfg, tmp_path / "cache")
    good = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
    bad = {k: v.clone() for k, v in good.items()}
    key = next(k for k, v in bad.items() if v.is_floating_point() and v.dim() == 4)    # an image tensor
    bad[key][0, 0, 0, 0] = float("nan")
    before = {**parameters(trainer.depth_net), **{f"pose.{k}": v for k, v in parameters(trainer.pose_net).items()}}
    diagnostics = EpochDiagnostics()
    out = trainer.train_step(bad)
    diagnostics.add(out)
    assert out.get("skipped") and not torch.isfinite(out["loss"])
    after = {**parameters(trainer.depth_net), **{f"pose.{k}": v for k, v in parameters(trainer.pose_net).items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.optimizer.state_dict()["state"] == {}                     # Adam never stepped
    assert diagnostics.summary()["train_nonfinite_steps"] == 1
    out = trainer.train_step(good)
    assert not out.get("skipped") and trainer.nonfinite_in_a_row == 0
    assert any(not torch.equal(before[k], v) for k, v in parameters(trainer.depth_net).items())
    monkeypatch.setattr(trainer_module, "MAX_NONFINITE_STEPS", 3)
    trainer.train_step(bad)
    trainer.train_step(bad)
    with pytest.raises(FloatingPointError, match="not finite for 3 steps in a row.*lower optim.lr"):
        trainer.train_step(bad)


def test_residual_posenet_starts_at_the_measured_rotation_and_keeps_what_it_learned(bags, tmp_path):
    """pose.posenet_residual: PoseNet's output is a correction after the measured image rotation. A PoseNet that
    was not trained so starts with its output layer at zero, so its poses ARE the start's (the image rotation, no
    translation: same photometric error, same transforms); the distillation moves it off there; a checkpoint of a
    residual run keeps its PoseNet when fine-tuned again, an absolute one is zeroed."""
    import dataclasses

    from spidepth_ros.training.config import config_from_dict, load_config
    from spidepth_ros.training.trainer import Trainer

    default_pose = load_config(REPO / "config" / "train.yaml").to_dict()["pose"]
    base = make_cfg(bags, tmp_path / "residual").to_dict()
    base["pose"] = {**default_pose, "posenet_residual": True, "posenet_start": False}
    base["data"].update(target_parallax_px=0.0, max_frame_offset=4)
    cfg = config_from_dict(base)
    trainer, data = _trainer_and_data(cfg, tmp_path / "cache")
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))

    def posenet_and_start(tr):
        b = {k: v for k, v in batch.items()}
        with torch.no_grad():
            depth = tr.predict_depth(b["target_aug"])
            aa_p, t_p = tr.pose_net(torch.cat([b["prev_aug"], b["target_aug"]], 1))
            aa_n, t_n = tr.pose_net(torch.cat([b["target_aug"], b["next_aug"]], 1))
            poses = tr._poses(b, depth, (aa_p, t_p, aa_n, t_n))
        return poses.posenet, poses.start

    posenet, start = posenet_and_start(trainer)
    for p, s, i in zip(posenet, start, range(2)):
        assert torch.equal(s[:, :3, :3], batch["image_rotation"][:, i]) and float(s[:, :3, 3].abs().max()) == 0
        assert torch.allclose(p, s, atol=1e-6), (p - s).abs().max()
    with torch.no_grad():
        out = trainer.compute_loss(batch, validation=True)
    assert float(out["photometric_posenet"]) == pytest.approx(float(out["photometric_start"]), rel=1e-5)

    before = parameters(trainer.pose_net)
    trainer.train_step(batch)
    trainer.train_step(batch)
    now = dict(trainer.pose_net.named_parameters())
    assert float(now["decoder.2.weight"].detach().abs().max()) > 0         # the output layer left zero ...
    assert not torch.equal(before["encoder.conv1.weight"], now["encoder.conv1.weight"])   # ... and the gradient
    posenet, start = posenet_and_start(trainer)                                            # reaches the backbone
    assert max(float((p - s).abs().max()) for p, s in zip(posenet, start)) > 1e-6
    trainer.save(tmp_path / "residual.pt")

    init = dataclasses.replace(cfg.model, init=str(tmp_path / "residual.pt"))
    again = Trainer(dataclasses.replace(cfg, model=init), torch.device("cpu"))
    learned = parameters(trainer.pose_net)
    assert all(torch.equal(v, dict(again.pose_net.named_parameters())[k]) for k, v in learned.items())

    absolute = Trainer(dataclasses.replace(cfg, pose=dataclasses.replace(cfg.pose, posenet_residual=False)),
                       torch.device("cpu"))
    absolute.save(tmp_path / "absolute.pt")
    assert float(absolute.pose_net.decoder[-1].weight.detach().abs().max()) > 0
    init = dataclasses.replace(cfg.model, init=str(tmp_path / "absolute.pt"))
    zeroed = Trainer(dataclasses.replace(cfg, model=init), torch.device("cpu"))
    assert float(zeroed.pose_net.decoder[-1].weight.detach().abs().max()) == 0
    kept = parameters(absolute.pose_net)                 # everything but the output layer as it was saved
    assert all(torch.equal(v, dict(zeroed.pose_net.named_parameters())[k]) for k, v in kept.items()
               if not k.startswith("decoder.2."))
