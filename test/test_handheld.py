"""Hand-held video support in training: measured parallax and rotation in the frame cache, triplets chosen by
parallax, the image rotation as the pose's starting point (flip included), a complete cache key, the time
budget, and the RGB-D folder recorder used for the real sequence (docs/real_data.md)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from spidepth_ros.bagio import iter_images, read_camera_info
from spidepth_ros.synth import SynthConfig, render_sequence, write_bag
from spidepth_ros.training.data import FrameStore, TripletDataset, _cache_key, load_frames, select_triplets
from spidepth_ros.tools import rgbd_folder_to_bag as folder

SYNTH = SynthConfig(frames=16, seed=4, width=320, height=96, speed=2.0)


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("handheld")
    return write_bag(SYNTH, root / "bag", progress=False), list(render_sequence(SYNTH))


@pytest.fixture(scope="module")
def store(synth_bag, tmp_path_factory):
    bag, _ = synth_bag
    return load_frames(bag, "/camera/image_raw", "/camera/camera_info", 320, 96, tmp_path_factory.mktemp("cache"),
                       progress=False, max_offset=4)


def _angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def _loss_and_warped_transforms(trainer, batch) -> tuple[dict, list[torch.Tensor]]:
    """``trainer.compute_loss(batch)`` and the transforms the loss warped with (prev, next, ...)."""
    seen = []
    original = trainer.loss_fn.forward

    def spy(depth, target, sources, transforms, k, inv_k):
        seen.extend(t.detach().clone() for t in transforms)
        return original(depth, target, sources, transforms, k, inv_k)

    trainer.loss_fn.forward = spy
    return trainer.compute_loss(batch), seen


def test_cache_holds_rotations_that_match_the_true_relative_rotation(store, synth_bag):
    _, frames = synth_bag
    assert store.parallax.shape == (16, 4) and store.rotation_vec.shape == (16, 4, 3)
    assert np.isnan(store.parallax[15, 0]) and np.mean(np.isfinite(store.parallax[:12])) > 0.9
    data = TripletDataset([store], [(0, 2, 5, 8)], 320, 96, augment=False)
    got = data[0]["image_rotation"].numpy()
    for i, source in enumerate((2, 8)):
        # target -> source camera: inv(world_T_source) @ world_T_target, rotation part
        true = (np.linalg.inv(frames[source].world_T_cam) @ frames[5].world_T_cam)[:3, :3]
        assert _angle_deg(true) > 3.0                   # the path turns: there is a rotation to find
        # the rotation-only fit absorbs a little of the forward translation's flow: within 20 % of the angle
        assert _angle_deg(got[i] @ true.T) < 0.2 * _angle_deg(true)
    assert data[0]["rotation_measured"].tolist() == [True, True]
    # offsets beyond the measured table (max_offset 4) have no rotation: identity, and flagged for the count
    far = TripletDataset([store], [(0, 2, 7, 10)], 320, 96, augment=False)[0]
    assert far["rotation_measured"].tolist() == [False, True]
    np.testing.assert_allclose(far["image_rotation"][0].numpy(), np.eye(3))


def test_flipped_item_rotation_is_what_the_mirrored_images_measure(store):
    """The flipped item's rotation must be the rotation measured from the mirrored frames themselves (tracked
    again, with the mirrored intrinsics): an independent measurement, not the mirror formula restated."""
    from spidepth_ros.geometry import PinholeIntrinsics
    from spidepth_ros.training.parallax import pair_motion

    data = TripletDataset([store], [(0, 2, 5, 8)] * 8, 320, 96, augment=True, flip=True, jitter=False, seed=1)
    flips = [np.random.default_rng([1, 0, i]).random() < 0.5 for i in range(8)]   # the dataset's own rule
    assert any(flips) and not all(flips)
    mirrored_k = PinholeIntrinsics.from_normalized(store.k_normalized, 320, 96).flipped().matrix()
    mirror = [np.ascontiguousarray(store.frames[i][:, ::-1]) for i in (2, 5, 8)]
    measured = [pair_motion(mirror[0], mirror[1], mirrored_k).rotation.T,     # target -> prev
                pair_motion(mirror[1], mirror[2], mirrored_k).rotation]       # target -> next
    flipped_item = data[flips.index(True)]["image_rotation"].double().numpy()
    plain_item = data[flips.index(False)]["image_rotation"].double().numpy()
    for i in range(2):
        assert _angle_deg(flipped_item[i] @ measured[i].T) < 0.1
        assert _angle_deg(plain_item[i]) > 1.0                       # there is a turn to mirror
        assert _angle_deg(plain_item[i] @ measured[i].T) > 1.0       # and mirroring changes it


def test_triplets_chosen_by_parallax_reach_it_with_the_nearest_frames(store):
    want = float(np.nanmedian(store.parallax[:, 1]))          # about what offset 2 gives
    triplets = select_triplets(store, 1, 0.5, 0.0, target_parallax_px=want)
    assert triplets
    for p, t, n in triplets:
        assert store.parallax[p, t - p - 1] >= want and store.parallax[t, n - t - 1] >= want
        # nearest: one frame closer would not reach it
        assert t - p == 1 or store.parallax[p + 1, t - p - 2] < want
        assert n - t == 1 or store.parallax[t, n - t - 2] < want
    with pytest.raises(ValueError, match="max_frame_offset"):
        select_triplets(FrameStore(store.frames, store.stamps_ns, store.k_normalized, store.motion, "x"),
                        1, 0.5, 0.0, target_parallax_px=1.0)


def test_cache_key_covers_everything_that_changes_the_frames(synth_bag):
    bag, _ = synth_bag
    base = _cache_key(bag, "/camera/image_raw", 320, 96, "/camera/camera_info", (), 0)
    variants = [_cache_key(bag, "/camera/image_raw", 320, 96, "/other/camera_info", (), 0),
                _cache_key(bag, "/camera/image_raw", 320, 96, "/camera/camera_info", (100, 100, 50, 40), 0),
                _cache_key(bag, "/camera/image_raw", 320, 96, "/camera/camera_info", (), 8),
                _cache_key(bag, "/camera/image_raw", 256, 192, "/camera/camera_info", (), 0),
                _cache_key(bag, "/camera/image_raw/compressed", 320, 96, "/camera/camera_info", (), 0)]
    assert len({base, *variants}) == 1 + len(variants)
    assert base == _cache_key(bag, "/camera/image_raw", 320, 96, "/camera/camera_info", (), 0)


def test_image_rotation_init_needs_the_measured_rotations(tmp_path):
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.trainer import Trainer

    cfg = config_from_dict({"pose": {"init": "image_rotation"}, "data": {"max_frame_offset": 0},
                           "out_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="max_frame_offset"):
        Trainer(cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="pose.init"):
        Trainer(config_from_dict({"pose": {"init": "gps"}}), torch.device("cpu"))
    # no translation and no refinement to find one: the warp would ignore depth, so the run is refused
    with pytest.raises(ValueError, match="refine_steps 0 the warp ignores depth"):
        Trainer(config_from_dict({"pose": {"init": "image_rotation", "refine_steps": 0},
                                  "data": {"max_frame_offset": 4}, "out_dir": str(tmp_path)}), torch.device("cpu"))


def test_image_rotation_is_the_transform_the_refinement_starts_from(store, tmp_path):
    """pose.init=image_rotation with a refinement of step size 0: the warp uses exactly the measured rotation, and
    the per-epoch rotation diagnostic reports that rotation's angle."""
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.trainer import Trainer

    cfg = config_from_dict({"pose": {"init": "image_rotation", "refine_method": "adam", "refine_steps": 1,
                                     "refine_lr_rotation": 0.0,
                                     "refine_lr_translation": 0.0}, "data": {"max_frame_offset": 4},
                            "model": {"preset": "small_r18_96x320"}, "out_dir": str(tmp_path)})
    trainer = Trainer(cfg, torch.device("cpu"))
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], [(0, 2, 5, 8)], 320, 96,
                                                                 augment=False), batch_size=1)))
    out, seen = _loss_and_warped_transforms(trainer, batch)
    angles = [_angle_deg(batch["image_rotation"][0, i].double().numpy()) for i in range(2)]
    assert float(out["rotation_deg"]) == pytest.approx(np.mean(angles), abs=0.05)
    for i in range(2):
        np.testing.assert_allclose(seen[i][0, :3, :3].numpy(), batch["image_rotation"][0, i].numpy(), atol=1e-6)
        assert float(seen[i][0, :3, 3].abs().max()) == 0.0      # no translation until the refinement finds one


def test_time_budget_stops_on_an_epoch_boundary_and_is_saved(synth_bag, tmp_path, capsys):
    from spidepth_ros.checkpoint import safe_torch_load
    from spidepth_ros.training import cli

    bag, _ = synth_bag
    rc = cli.main(["--bags", str(bag), "--out", str(tmp_path / "run"), "--no-progress", "--set",
                   "optim.epochs=5", "optim.batch_size=4", "optim.max_minutes=0.0001", "data.frame_offset=1",
                   "data.target_parallax_px=0",
                   "checkpoint_every=0", "data.val_fraction=0.25"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "optim.max_minutes=0.0001: stopping after epoch 1" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]          # the initial model and the one epoch that ran
    assert safe_torch_load(tmp_path / "run" / "last.pt")["elapsed_s"] > 0


# --------------------------------------------------------------------------------------------- folder recorder
def _write_folder(root: Path, frames: int = 4, with_assoc: bool = False) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rgbs, depths = [], []
    rgb_lines, depth_lines, assoc = [], [], []
    for i in range(frames):
        rgb = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
        raw = rng.integers(0, 5000, (30, 40)).astype(np.uint16)
        raw[0, :5] = 0                                       # no return
        cv2.imwrite(str(root / f"rgb/{i}.png"), rgb[..., ::-1])
        cv2.imwrite(str(root / f"depth/{i}.png"), raw)
        t = 100.0 + i / 30
        rgb_lines.append(f"{t:.6f} rgb/{i}.png")
        depth_lines.append(f"{t + 0.004:.6f} depth/{i}.png")
        assoc.append(f"{t:.6f} rgb/{i}.png {t + 0.004:.6f} depth/{i}.png")
        rgbs.append(rgb)
        depths.append(raw)
    (root / "rgb.txt").write_text("# colour\n" + "\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    if with_assoc:
        (root / "associations.txt").write_text("\n".join(assoc) + "\n")
    return rgbs, depths


@pytest.mark.parametrize("with_assoc", [False, True])
def test_folder_recorder_writes_rep118_depth_and_the_camera_info(tmp_path, with_assoc):
    rgbs, depths = _write_folder(tmp_path / "seq", with_assoc=with_assoc)
    assert folder.main([str(tmp_path / "seq"), str(tmp_path / "bag"), "--intrinsics", "50", "51", "20", "15",
                        "--depth-unit", "0.001", "--frames", "1:"]) == 0
    images = list(iter_images([tmp_path / "bag"], "/camera/image_raw"))
    got_depth = list(iter_images([tmp_path / "bag"], "/camera/depth", depth=True))
    assert len(images) == 3 and len(got_depth) == 3
    np.testing.assert_array_equal(images[0][1], rgbs[1])
    want = depths[1].astype(np.float32) * np.float32(0.001)
    want[depths[1] == 0] = np.nan
    np.testing.assert_array_equal(got_depth[0][1], want)           # NaN where the sensor gave 0 (REP 118)
    # stamps keep the file's spacing (1/30 s), relative to the first frame kept
    assert images[1][0] - images[0][0] == pytest.approx(1e9 / 30, abs=1e3)
    calib = read_camera_info([tmp_path / "bag"], "/camera/camera_info")
    assert (calib.intrinsics.fx, calib.intrinsics.fy, calib.intrinsics.cx, calib.intrinsics.cy) == (50, 51, 20, 15)
    assert (calib.intrinsics.width, calib.intrinsics.height) == (40, 30)


def test_folder_recorder_refuses_bad_input_naming_the_file(tmp_path, capsys):
    _write_folder(tmp_path / "seq")
    args = ["--intrinsics", "50", "50", "20", "15", "--depth-unit", "0.001"]
    (tmp_path / "seq" / "depth" / "2.png").unlink()
    with pytest.raises(SystemExit) as exc:
        folder.main([str(tmp_path / "seq"), str(tmp_path / "bag"), *args])
    assert exc.value.code == 2 and "depth/2.png is listed but does not exist" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "seq" / "depth" / "2.png"), np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(SystemExit):
        folder.main([str(tmp_path / "seq"), str(tmp_path / "bag2"), *args])
    assert "single-channel 16-bit PNG" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        folder.main([str(tmp_path / "nothing"), str(tmp_path / "bag3"), *args])
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        folder.main([str(tmp_path / "seq"), str(tmp_path / "bag4"), "--intrinsics", "50", "50", "20", "15",
                     "--depth-unit", "0"])
    assert "--depth-unit must be > 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ rectification
def _coordinate_bag(path: Path, model: str, d: list, r: np.ndarray, width: int = 64, height: int = 48) -> np.ndarray:
    """A bag whose raw frame encodes each pixel's own coordinates (R = x * 255 / (W-1), G = y * 255 / (H-1)), with a
    CameraInfo of distortion ``model``/``d`` and rectifying rotation ``r``. Returns the new camera matrix (P)."""
    from spidepth_ros.bagio import BagWriter

    x, y = np.meshgrid(np.arange(width), np.arange(height))
    raw = np.stack([x * 255.0 / (width - 1), y * 255.0 / (height - 1), np.full_like(x, 128.0)], -1)
    raw = np.round(raw).astype(np.uint8)
    k = np.array([[40.0, 0, 31.5], [0, 40.0, 23.5], [0, 0, 1]])
    p = np.hstack([np.array([[36.0, 0, 32.0], [0, 36.0, 24.0], [0, 0, 1]]), np.zeros((3, 1))])
    with BagWriter(path) as writer:
        t = writer.typestore.types
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        for i in range(3):
            stamp = 1_000_000_000 + i * 100_000_000
            info = t["sensor_msgs/msg/CameraInfo"](
                header=writer.header(stamp, "cam"), height=height, width=width, distortion_model=model,
                d=np.asarray(d, np.float64), k=k.ravel(), r=r.ravel(), p=p.ravel(), binning_x=0, binning_y=0,
                roi=roi)
            writer.write("/camera/image_raw", writer.image_msg(stamp, "cam", raw, "rgb8"), stamp)
            writer.write("/camera/camera_info", info, stamp)
    return k, p[:, :3]


@pytest.mark.parametrize("model,d", [("plumb_bob", [-0.25, 0.08, 0.001, -0.002, 0.0]),
                                     ("equidistant", [0.05, -0.02, 0.01, -0.003])])
def test_training_frames_are_rectified_with_d_and_r_like_the_camera_model_says(tmp_path, model, d):
    """Independent oracle: OpenCV's forward projection (cv2.projectPoints / cv2.fisheye.projectPoints) of the ray of
    each rectified pixel, through R^T, lands where the rectified pixel's encoded raw coordinates say."""
    yaw = np.radians(2.0)
    r = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    k, p = _coordinate_bag(tmp_path / "bag", model, d, r)
    store = load_frames(tmp_path / "bag", "/camera/image_raw", "/camera/camera_info", 64, 48, tmp_path / "c",
                        progress=False)
    u, v = np.meshgrid(np.arange(16, 48, 4), np.arange(12, 36, 4))
    rays = (np.linalg.inv(p) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])).T @ r   # rows: R^T ray
    if model == "equidistant":
        want, _ = cv2.fisheye.projectPoints(rays[:, None].astype(np.float64), np.zeros(3), np.zeros(3), k,
                                            np.asarray(d, np.float64))
    else:
        want, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, np.asarray(d, np.float64))
    frame = store.frames[0].astype(np.float64)
    got_x = frame[v.ravel(), u.ravel(), 0] * 63 / 255
    got_y = frame[v.ravel(), u.ravel(), 1] * 47 / 255
    assert np.max(np.abs(got_x - want[:, 0, 0])) < 0.3 and np.max(np.abs(got_y - want[:, 0, 1])) < 0.3
    # data.rectify off: the frames are the raw ones, untouched
    raw = load_frames(tmp_path / "bag", "/camera/image_raw", "/camera/camera_info", 64, 48, tmp_path / "c",
                      progress=False, rectify=False)
    assert np.abs(raw.frames[0, v.ravel(), u.ravel(), 0].astype(np.float64) * 63 / 255 - u.ravel()).max() < 0.3


def test_unusable_distortion_is_refused_naming_the_bag(tmp_path):
    from spidepth_ros.bagio import BagError

    _coordinate_bag(tmp_path / "bag", "plumb_bob", [0.1, 0.0, 0.0], np.eye(3))       # 3 coefficients
    with pytest.raises(BagError, match="distortion coefficients.*data.rectify: false"):
        load_frames(tmp_path / "bag", "/camera/image_raw", "/camera/camera_info", 64, 48, tmp_path / "c",
                    progress=False)


# -- data.pose_topic: recorded poses for diagnosis, or in place of PoseNet -------------------------------------------

def posed_bag(config: SynthConfig, root):
    """``config``'s sequence recorded with the true camera pose on /camera/pose under ``root``: (bag, its frame
    store at 320x96 with the poses attached)."""
    from spidepth_ros.training.data import attach_poses

    bag = write_bag(config, root / "bag", progress=False, poses=True)
    store = load_frames(bag, "/camera/image_raw", "/camera/camera_info", 320, 96, root / "cache", progress=False,
                        max_offset=4)
    attach_poses(store, bag, "/camera/pose", (), 0.5)
    return bag, store


@pytest.fixture(scope="module")
def posed(tmp_path_factory):
    """A synthetic bag with the true camera pose on /camera/pose, its store with the poses attached, the truth."""
    bag, store = posed_bag(SYNTH, tmp_path_factory.mktemp("posed"))
    return bag, store, list(render_sequence(SYNTH))


def test_recorded_transforms_are_the_true_relative_poses_and_mirror_with_the_flip(posed):
    _, store, frames = posed
    plain = TripletDataset([store], [(0, 2, 5, 8)], 320, 96, augment=False)[0]
    assert bool(plain["has_recorded"])
    for i, source in enumerate((2, 8)):
        true = np.linalg.inv(frames[source].world_T_cam) @ frames[5].world_T_cam
        assert np.linalg.norm(true[:3, 3]) > 0.5          # the camera moved: a translation to get right
        np.testing.assert_allclose(plain["recorded_transform"][i].numpy(), true, atol=1e-4)
    flipped = TripletDataset([store], [(0, 2, 5, 8)] * 8, 320, 96, augment=True, flip=True, jitter=False, seed=1)
    flips = [np.random.default_rng([1, 0, i]).random() < 0.5 for i in range(8)]
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    i = flips.index(True)
    np.testing.assert_allclose(flipped[i]["recorded_transform"].numpy(),
                               mirror @ plain["recorded_transform"].numpy() @ mirror, atol=1e-6)
    # the rotation measured from the images agrees with the recorded one (the two conventions are the same)
    assert _angle_deg(plain["image_rotation"][1].double().numpy() @
                      plain["recorded_transform"][1, :3, :3].double().numpy().T) < \
        0.2 * _angle_deg(plain["recorded_transform"][1, :3, :3].double().numpy())


def test_pose_errors_against_hand_computed_angles():
    from spidepth_ros.training.diagnostics import pose_errors

    def transform(yaw_deg, t):
        out = np.eye(4)
        c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
        out[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        out[:3, 3] = t
        return out

    est = torch.tensor(np.stack([transform(10, [1, 0, 0]), transform(-3, [0, 0, 0.01]), transform(0, [0, 0, 0])]))
    rec = torch.tensor(np.stack([transform(0, [0, 0, 2]), transform(4, [0, 0, 5]), transform(0, [0, 0, 1])]))
    rotation, direction = pose_errors(est, rec)
    np.testing.assert_allclose(rotation.numpy(), [10, 7, 0], atol=1e-4)
    np.testing.assert_allclose(direction.numpy()[:2], [90, 0], atol=1e-4)   # scale ignored
    assert np.isnan(direction.numpy()[2])                                   # no estimated translation


def test_recorded_pose_init_warps_with_the_recorded_poses_and_logs_posenet_error(posed, tmp_path):
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.diagnostics import pose_errors
    from spidepth_ros.training.trainer import Trainer

    with pytest.raises(ValueError, match="data.pose_topic"):
        Trainer(config_from_dict({"pose": {"init": "recorded"}}), torch.device("cpu"))
    _, store, _ = posed
    cfg = config_from_dict({"pose": {"init": "recorded", "refine_steps": 0}, "data": {"pose_topic": "/camera/pose"},
                            "model": {"preset": "small_r18_96x320"}, "out_dir": str(tmp_path)})
    trainer = Trainer(cfg, torch.device("cpu"))
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], [(0, 2, 5, 8), (0, 6, 9, 12)], 320, 96,
                                                                 augment=False), batch_size=2)))
    out, seen = _loss_and_warped_transforms(trainer, batch)
    for i in range(2):
        np.testing.assert_allclose(seen[i].numpy(), batch["recorded_transform"][:, i].numpy(), atol=1e-6)
    # PoseNet's own (random) poses, recomputed here, against the recorded ones
    with torch.no_grad():
        from spidepth_ros.training.warping import pose_from_axis_angle, scale_translation_by_mean_inverse_depth
        depth = trainer.predict_depth(batch["target_aug"])
        rot_errs, dir_errs = [], []
        pairs = ((batch["prev_aug"], batch["target_aug"]), (batch["target_aug"], batch["next_aug"]))
        for i, (a, b) in enumerate(pairs):
            aa, t = trainer.pose_net(torch.cat([a, b], 1))
            tr = pose_from_axis_angle(aa, scale_translation_by_mean_inverse_depth(t, depth), invert=i == 0)
            r, d = pose_errors(tr, batch["recorded_transform"][:, i])
            rot_errs.append(r)
            dir_errs.append(d)
    assert float(out["posenet_rotation_error_deg"]) == pytest.approx(float(torch.cat(rot_errs).mean()), rel=1e-4)
    assert float(out["posenet_direction_error_deg"]) == pytest.approx(float(torch.cat(dir_errs).nanmean()), rel=1e-4)


def test_missing_pose_topic_names_the_bag_and_the_setting(synth_bag, store):
    from spidepth_ros.bagio import BagError
    from spidepth_ros.training.data import attach_poses

    bag, _ = synth_bag
    with pytest.raises(BagError, match=r"bag.*/camera/pose.*data\.pose_topic"):
        attach_poses(store, bag, "/camera/pose", (), 0.5)


def test_interpolate_pose_halfway_is_half_the_yaw_and_half_the_way():
    from spidepth_ros.geometry import interpolate_pose

    a, b = np.eye(4), np.eye(4)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    b[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    b[:3, 3] = [2.0, 0.0, 4.0]
    mid = interpolate_pose(np.array([0, 100]), np.stack([a, b]), 50, 1000)
    assert _angle_deg(mid[:3, :3]) == pytest.approx(10.0, abs=1e-6)
    np.testing.assert_allclose(mid[:3, 3], [1.0, 0.0, 2.0])
    assert interpolate_pose(np.array([0, 100]), np.stack([a, b]), 50, 99) is None     # gap too long
    assert interpolate_pose(np.array([0, 100]), np.stack([a, b]), 150, 1000) is None   # no extrapolation


def test_posenet_learns_from_the_refined_poses_in_the_image_rotation_recipe(store, tmp_path):
    """pose.init=image_rotation + refinement (the hand-held recipe): the distillation term compares PoseNet's own
    transforms with the refined ones, so PoseNet's parameters get a gradient from it (they had none when the
    term compared the image-rotation start with its refinement)."""
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.trainer import Trainer

    cfg = config_from_dict({"pose": {"init": "image_rotation", "refine_steps": 2}, "data": {"max_frame_offset": 4},
                            "model": {"preset": "small_r18_96x320"}, "out_dir": str(tmp_path)})
    trainer = Trainer(cfg, torch.device("cpu"))
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], [(0, 2, 5, 8)], 320, 96,
                                                                 augment=False), batch_size=1)))
    out = trainer.compute_loss(batch)
    trainer.pose_net.zero_grad()
    out["loss"].backward()            # the warp uses the image rotation: PoseNet appears only in the distillation
    grads = [p.grad for p in trainer.pose_net.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_the_distillation_does_not_move_the_depth(store, tmp_path):
    """The depth network's gradient is the same with and without the distillation term: it teaches PoseNet only
    (the depth inside PoseNet's translation scaling is detached there)."""
    from spidepth_ros.training.config import config_from_dict
    from spidepth_ros.training.trainer import Trainer

    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], [(0, 2, 5, 8)], 320, 96,
                                                                 augment=False), batch_size=1)))
    grads = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = config_from_dict({"pose": {"init": "image_rotation", "refine_steps": 2, "distill_weight": weight},
                                "data": {"max_frame_offset": 4}, "model": {"preset": "small_r18_96x320"},
                                "out_dir": str(tmp_path / str(weight))})
        trainer = Trainer(cfg, torch.device("cpu"))
        out = trainer.compute_loss(batch)
        out["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.depth_net.parameters() if p.grad is not None]))
        assert float(out["pose_distill"]) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)
