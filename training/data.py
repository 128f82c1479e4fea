"""Frames from rosbag2 recordings -> (t-k, t, t+k) training triplets.

Pipeline: read the image topic once (header-stamp order), rectify if the CameraInfo has non-zero D or an R
(``data.rectify``), resize to the network size and cache the frames as a ``.npy`` memmap (fork-safe for
DataLoader workers, no bag handle kept open). Intrinsics are kept **normalised** (fx/W, (cx+0.5)/W, ...), so
they stay right under the resize. Triplets are chosen by measured parallax (``data.target_parallax_px``) or by
time gap and motion: frames where the camera did not move are dropped (a static camera teaches infinite depth).

Each item is a dict with string keys (documented here once):
    ``target``, ``prev``, ``next``: ``[3, H, W]`` float in [0, 1], un-augmented (used by the losses);
    ``target_aug``, ``prev_aug``, ``next_aug``: the same after colour jitter (fed to the networks);
    ``K``, ``inv_K``: ``[4, 4]`` intrinsics in pixels of ``H x W``; ``index``: target frame index;
    ``offsets``: ``[2]`` frames from prev to target and target to next; ``parallax_px``: ``[2]`` their measured
    translation parallax (pixels, NaN when not measured); ``image_rotation``: ``[2, 3, 3]`` target -> prev and
    target -> next camera rotations measured from the images (identity when not measured);
    with a stereo topic also ``stereo`` (the second camera's frame at the target stamp, un-augmented) and
    ``stereo_T`` (``[4, 4]`` target-to-stereo transform: x translation ``-baseline``, sign flipped with the image).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spidepth_ros.bagio import (BagError, CameraCalibration, count_messages, iter_images, read_camera_info,
                                 read_poses)
from spidepth_ros.camera_model import Rectifier
from spidepth_ros.geometry import PinholeIntrinsics, axis_angle_to_matrix

#: Side of the grey thumbnail used to measure motion between frames.
MOTION_THUMB = (64, 20)
#: Bumped whenever what the cache holds changes (v2: parallax table, full key).
CACHE_VERSION = 3     # 3: normalised principal point (cx + 0.5) / W (pixel-centre resize)


@dataclass
class FrameStore:
    """Decoded frames of one bag at network resolution."""

    frames: np.ndarray          # [N, H, W, 3] uint8 (memmap)
    stamps_ns: np.ndarray       # [N] int64
    k_normalized: np.ndarray    # [4, 4]
    motion: np.ndarray          # [N] mean |grey difference| to the previous frame (0..1); motion[0] = 0
    source: str
    parallax: Optional[np.ndarray] = None   # [N, max_offset] px of translation parallax from i to i+o (NaN: none)
    rotation_deg: Optional[np.ndarray] = None  # [N, max_offset] rotation angle from i to i+o (image geometry)
    rotation_vec: Optional[np.ndarray] = None  # [N, max_offset, 3] that rotation (axis-angle, rays i -> rays i+o)
    recorded_poses: Optional[np.ndarray] = None  # [N, 4, 4] world_T_camera from data.pose_topic (NaN: none near)
    stereo: Optional["FrameStore"] = None     # second camera of a stereo pair (the reference's 's' frame)
    stereo_index: Optional[np.ndarray] = None  # [N] index into stereo.frames with the same stamp, -1 if none
    baseline: float = 0.0                      # metres, + when the second camera is to the right

    def __len__(self) -> int:
        return len(self.stamps_ns)


def _cache_key(bag: Path, topic: str, width: int, height: int, info_topic: str = "",
               cfg_intrinsics: Sequence[float] = (), max_offset: int = 0, rectify: bool = True) -> str:
    """Everything that changes the cached frames or tables: the bag (path, size, mtime), the image and
    CameraInfo topics, configured intrinsics, rectification, the resize, the parallax table's extent and the
    cache layout."""
    meta = bag / "metadata.yaml" if bag.is_dir() else bag
    stat = meta.stat()
    parts = [str(bag.resolve()), topic, info_topic, json.dumps([float(v) for v in cfg_intrinsics]),
             f"{width}x{height}", str(stat.st_size), str(stat.st_mtime_ns), f"offsets{max_offset}",
             f"rectify{int(rectify)}", f"v{CACHE_VERSION}"]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _intrinsics_for(bag: Path, cfg_intrinsics: Sequence[float], info_topic: str, first_shape: tuple[int, int]
                    ) -> tuple[PinholeIntrinsics, Optional[CameraCalibration]]:
    calib = read_camera_info([bag], info_topic) if info_topic else None
    if calib is not None and calib.intrinsics.is_valid():
        return calib.intrinsics, calib
    if len(cfg_intrinsics) == 4:
        fx, fy, cx, cy = map(float, cfg_intrinsics)
        return PinholeIntrinsics(fx, fy, cx, cy, first_shape[1], first_shape[0]), None
    raise BagError(f"no intrinsics for {bag}: topic {info_topic!r} has no valid CameraInfo and "
                   "data.intrinsics (fx, fy, cx, cy) is not set in the config")


def _store_from_meta(frames: np.ndarray, meta: dict, bag: Path) -> FrameStore:
    def table(name):
        return np.array(meta[name], np.float32).reshape(len(frames), -1) if meta.get(name) is not None else None

    vectors = table("rotation_vec")
    return FrameStore(frames, np.array(meta["stamps_ns"], np.int64), np.array(meta["k_normalized"]),
                      np.array(meta["motion"], np.float32), str(bag), parallax=table("parallax"),
                      rotation_deg=table("rotation_deg"),
                      rotation_vec=vectors.reshape(len(frames), -1, 3) if vectors is not None else None)


def needs_rectification(calib: CameraCalibration) -> bool:
    """Distortion coefficients, or a rectifying rotation R (raw stereo), make the raw image differ from the
    pinhole image that P describes."""
    return calib.distorted or not np.allclose(calib.r, np.eye(3))


def load_frames(bag: Path, image_topic: str, info_topic: str, width: int, height: int, cache_dir: Path,
                cfg_intrinsics: Sequence[float] = (), progress: bool = True, max_offset: int = 0,
                rectify: bool = True) -> FrameStore:
    """Decode (or reuse the cache of) one bag's image topic at ``width x height``; with ``max_offset`` > 0 also
    measure the translation parallax between each frame and the next ``max_offset`` (training/parallax.py).

    ``rectify``: undistort (plumb_bob / rational_polynomial, or equidistant through cv2.fisheye) and rotate by R
    into the pinhole image of P, when the CameraInfo has distortion or an R; off for topics that are already
    rectified (``image_rect``: their CameraInfo still carries the raw camera's D)."""
    import cv2
    from tqdm import tqdm

    bag = Path(bag)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(bag, image_topic, width, height, info_topic, cfg_intrinsics, max_offset, rectify)
    frames_path, meta_path = cache_dir / f"{key}.frames.npy", cache_dir / f"{key}.json"
    if frames_path.exists() and meta_path.exists():
        return _store_from_meta(np.load(frames_path, mmap_mode="r"), json.loads(meta_path.read_text()), bag)
    total = count_messages([bag], image_topic)
    if total == 0 and count_messages([bag], f"{image_topic}/compressed"):
        image_topic = f"{image_topic}/compressed"       # recorded through image_transport's compressed plugin
        total = count_messages([bag], image_topic)
    if total == 0:
        raise BagError(f"topic {image_topic!r} (or its /compressed form) in {bag} has no messages")
    # per-process temporary name: two processes filling the same cache never write into one file
    tmp_path = cache_dir / f"{key}.frames.{os.getpid()}.tmp.npy"
    frames = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
    stamps, motion = [], []
    intr = calib = None
    rectifier = Rectifier() if rectify else None
    prev_thumb = None
    for i, (stamp, rgb) in enumerate(tqdm(iter_images([bag], image_topic), total=total, disable=not progress,
                                          desc=f"decode {bag.name}", unit="frame")):
        if intr is None:
            intr, calib = _intrinsics_for(bag, cfg_intrinsics, info_topic, rgb.shape[:2])
            if rectifier is not None and calib is not None and needs_rectification(calib):
                problem = calib.problem(rectify=True)
                if problem:
                    raise BagError(f"{bag}: {problem} (or set data.rectify: false for an already rectified topic)")
            else:
                rectifier = None
        if rgb.shape[:2] != (intr.height, intr.width):
            raise BagError(f"{bag}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]} but the CameraInfo says "
                           f"{intr.width}x{intr.height}")
        if rectifier is not None:
            rgb = rectifier(rgb, calib)
        small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        frames[i] = small
        thumb = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), MOTION_THUMB,
                           interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        motion.append(0.0 if prev_thumb is None else float(np.mean(np.abs(thumb - prev_thumb))))
        prev_thumb = thumb
        stamps.append(stamp)
    frames.flush()
    del frames
    order = np.argsort(np.array(stamps), kind="stable")
    if not np.all(order == np.arange(len(order))):
        raise BagError(f"{bag}: header stamps of {image_topic} are not increasing in recording order; "
                       "re-record or reorder the bag")
    # frames first, then the metadata (its presence marks a complete entry), each renamed into place
    tmp_path.replace(frames_path)
    stored = np.load(frames_path, mmap_mode="r")
    meta = {"stamps_ns": stamps, "k_normalized": intr.normalized().tolist(), "motion": motion}
    if max_offset > 0:
        from .parallax import parallax_table

        k_pix = PinholeIntrinsics.from_normalized(intr.normalized(), width, height).matrix()
        motion_table = parallax_table(stored, k_pix, max_offset, progress, desc=f"parallax {bag.name}")
        meta["parallax"] = motion_table.parallax_px.tolist()
        meta["rotation_deg"] = motion_table.rotation_deg.tolist()
        meta["rotation_vec"] = motion_table.rotation_vec.reshape(len(stored), -1).tolist()
    meta_tmp = cache_dir / f"{key}.{os.getpid()}.tmp.json"
    meta_tmp.write_text(json.dumps(meta))
    meta_tmp.replace(meta_path)
    return _store_from_meta(stored, meta, bag)


def select_triplets(store: FrameStore, offset: int, max_gap_s: float, min_motion: float,
                    index_range: Optional[tuple[int, int]] = None, target_parallax_px: float = 0.0
                    ) -> list[tuple[int, int, int]]:
    """``(prev, target, next)`` frame indices with enough motion and small enough time gaps.

    With ``target_parallax_px`` > 0 (needs the store's parallax table): for each target, the nearest frame
    before and after it whose measured translation parallax reaches that many pixels; targets without one in
    the table's range are skipped. Otherwise static frames (motion to the previous frame below ``min_motion``)
    are skipped first, then neighbours are taken ``offset`` moving frames apart.
    """
    lo, hi = index_range or (0, len(store))
    if target_parallax_px > 0:
        return _parallax_triplets(store, target_parallax_px, max_gap_s, lo, hi)
    moving = [i for i in range(lo, hi) if i == lo or store.motion[i] >= min_motion]
    out = []
    gap = max_gap_s * 1e9
    for j in range(offset, len(moving) - offset):
        p, t, n = moving[j - offset], moving[j], moving[j + offset]
        if store.stamps_ns[t] - store.stamps_ns[p] > gap or store.stamps_ns[n] - store.stamps_ns[t] > gap:
            continue
        out.append((p, t, n))
    return out


def _parallax_triplets(store: FrameStore, want_px: float, max_gap_s: float, lo: int, hi: int
                       ) -> list[tuple[int, int, int]]:
    from .parallax import choose_source

    if store.parallax is None:
        raise ValueError("data.target_parallax_px needs the parallax table: set data.max_frame_offset > 0")
    allowed = np.zeros(len(store), bool)
    allowed[lo:hi] = True
    gap = max_gap_s * 1e9
    out = []
    for t in range(lo, hi):
        p = choose_source(store.parallax, t, -1, want_px, allowed)
        n = choose_source(store.parallax, t, +1, want_px, allowed)
        if p is None or n is None:
            continue
        if store.stamps_ns[t] - store.stamps_ns[p] > gap or store.stamps_ns[n] - store.stamps_ns[t] > gap:
            continue
        out.append((p, t, n))
    return out


def triplet_parallax(store: FrameStore, triplet: tuple[int, int, int]) -> tuple[float, float]:
    """Measured parallax (px) of the (prev, target) and (target, next) pairs; NaN without a table."""
    p, t, n = triplet
    if store.parallax is None:
        return float("nan"), float("nan")
    width = store.parallax.shape[1]
    a = store.parallax[p, t - p - 1] if 0 < t - p <= width else np.nan
    b = store.parallax[t, n - t - 1] if 0 < n - t <= width else np.nan
    return float(a), float(b)


#: mirrors x: a horizontally flipped pair's transform is S T S (its rotation: the 3x3 block, S R S)
_MIRROR_X4 = np.diag([-1.0, 1.0, 1.0, 1.0])
_MIRROR_X = _MIRROR_X4[:3, :3]


def image_rotations(store: FrameStore, triplet: tuple[int, int, int], flipped: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``[2, 3, 3]`` rotations measured from the images, target -> prev and target -> next camera (the rotation
    part of the transforms the warp takes), identity where unmeasured (too few tracks, or beyond
    ``data.max_frame_offset``), mirrored with the images when flipped; and ``[2]`` bool: which were measured (the
    trainer counts the identity fallbacks per epoch and warns when they are many)."""
    p, t, n = triplet
    out = np.stack([np.eye(3), np.eye(3)])
    measured = np.zeros(2, bool)
    if store.rotation_vec is not None:
        width = store.rotation_vec.shape[1]
        if 0 < t - p <= width and np.all(np.isfinite(store.rotation_vec[p, t - p - 1])):
            out[0] = axis_angle_to_matrix(store.rotation_vec[p, t - p - 1]).T      # stored prev -> target
            measured[0] = True
        if 0 < n - t <= width and np.all(np.isfinite(store.rotation_vec[t, n - t - 1])):
            out[1] = axis_angle_to_matrix(store.rotation_vec[t, n - t - 1])        # stored target -> next
            measured[1] = True
    if flipped:
        out = _MIRROR_X @ out @ _MIRROR_X
    return out, measured


def attach_poses(store: FrameStore, bag: Path, topic: str, frames: Sequence[str], max_gap_s: float) -> None:
    """Recorded camera poses (``data.pose_topic``) at each frame's stamp, interpolated between the two nearest
    samples when they are at most ``max_gap_s`` apart (NaN otherwise). They must be the pose of the camera's
    optical frame (x right, y down, z forward) in a fixed frame; no extrinsics are applied."""
    from spidepth_ros.geometry import interpolate_pose

    try:
        stamps, poses = read_poses([bag], topic, frames)
    except BagError as e:
        raise BagError(f"{bag}: {e} (data.pose_topic; leave it empty when the recording has no poses)") from None
    out = np.full((len(store), 4, 4), np.nan)
    gap = int(max_gap_s * 1e9)
    for i, stamp in enumerate(store.stamps_ns):
        pose = interpolate_pose(stamps, poses, int(stamp), gap)
        if pose is not None:
            out[i] = pose
    if not np.isfinite(out[:, 0, 0]).any():
        raise BagError(f"{bag}: none of the {len(poses)} poses on {topic!r} lies within {max_gap_s} s of an image "
                       f"stamp ({stamps[0]}..{stamps[-1]} ns against images {store.stamps_ns[0]}.."
                       f"{store.stamps_ns[-1]} ns): are both stamped by the same clock?")
    store.recorded_poses = out


def recorded_transforms(store: FrameStore, triplet: tuple[int, int, int], flipped: bool
                        ) -> tuple[np.ndarray, bool]:
    """``[2, 4, 4]`` target -> prev and target -> next transforms from the recorded poses (points in the target
    camera to points in the source camera, metres: ``inv(world_T_src) @ world_T_tgt``), and whether all three
    frames had a pose (identity transforms when not)."""
    p, t, n = triplet
    poses = store.recorded_poses
    if poses is None or not all(np.isfinite(poses[i, 0, 0]) for i in (p, t, n)):
        return np.stack([np.eye(4), np.eye(4)]), False
    out = np.stack([np.linalg.inv(poses[s]) @ poses[t] for s in (p, n)])
    if flipped:
        out = _MIRROR_X4 @ out @ _MIRROR_X4
    return out, True


def color_jitter(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Brightness/contrast/saturation in [0.8, 1.2] and hue in [-0.1, 0.1], drawn independently per frame
    (as upstream). Images are ``[H, W, 3]`` float32 in [0, 1]."""
    import cv2

    out = []
    for img in images:
        b, c, s = rng.uniform(0.8, 1.2, size=3)
        hue = rng.uniform(-0.1, 0.1)
        x = img * b
        mean = x.mean()
        x = np.clip((x - mean) * c + mean, 0, 1)
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = np.clip((x - grey[..., None]) * s + grey[..., None], 0, 1).astype(np.float32)
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + hue * 360.0) % 360.0
        out.append(np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1))
    return out


class TripletDataset(Dataset):
    """Training triplets over one or more :class:`FrameStore`. Augmentation is a pure function of
    ``(seed, epoch, index)``, so a resumed run sees exactly the same batches."""

    def __init__(self, stores: list[FrameStore], triplets: list[tuple[int, int, int, int]], width: int, height: int,
                 augment: bool, flip: bool = True, jitter: bool = True, seed: int = 0) -> None:
        self.stores = stores
        self.triplets = triplets          # (store index, prev, target, next)
        self.width, self.height = width, height
        self.augment, self.flip, self.jitter = augment, flip, jitter
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, p, t, n = self.triplets[index]
        store = self.stores[s]
        imgs = [store.frames[i].astype(np.float32) / 255.0 for i in (p, t, n)]
        k = store.k_normalized.copy()
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flipped = bool(self.augment and self.flip and rng.random() < 0.5)
        intrinsics = PinholeIntrinsics.from_normalized(k, self.width, self.height)
        if flipped:
            imgs = [np.ascontiguousarray(x[:, ::-1]) for x in imgs]
            intrinsics = intrinsics.flipped()           # pixel u -> W-1-u: cx -> W-1-cx
        aug = color_jitter(imgs, rng) if self.augment and self.jitter and rng.random() < 0.5 else imgs
        k_pix = intrinsics.pixel_matrix()
        rotations, measured = image_rotations(store, (p, t, n), flipped)
        item = {"prev": _chw(imgs[0]), "target": _chw(imgs[1]), "next": _chw(imgs[2]),
                "prev_aug": _chw(aug[0]), "target_aug": _chw(aug[1]), "next_aug": _chw(aug[2]),
                "K": torch.from_numpy(k_pix.astype(np.float32)),
                "inv_K": torch.from_numpy(np.linalg.pinv(k_pix).astype(np.float32)),
                "index": torch.tensor(t),
                "offsets": torch.tensor([t - p, n - t], dtype=torch.float32),
                "parallax_px": torch.tensor(triplet_parallax(store, (p, t, n)), dtype=torch.float32),
                "image_rotation": torch.from_numpy(rotations.astype(np.float32)),
                "rotation_measured": torch.from_numpy(measured)}
        if store.recorded_poses is not None:
            transforms, ok = recorded_transforms(store, (p, t, n), flipped)
            item["recorded_transform"] = torch.from_numpy(transforms.astype(np.float32))
            item["has_recorded"] = torch.tensor(ok)
        if store.stereo is not None:
            item.update(self._stereo_entries(store, t, flipped))
        return item

    @staticmethod
    def _stereo_entries(store: FrameStore, t: int, flipped: bool) -> dict[str, torch.Tensor]:
        """The second camera's frame at target ``t`` (mirrored with the triplet) and its transform."""
        stereo = store.stereo.frames[int(store.stereo_index[t])].astype(np.float32) / 255.0
        if flipped:
            stereo = stereo[:, ::-1]
        transform = np.eye(4, dtype=np.float32)
        transform[0, 3] = store.baseline if flipped else -store.baseline   # a mirrored pair swaps left and right
        return {"stereo": _chw(stereo), "stereo_T": torch.from_numpy(transform)}


def _chw(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` -> contiguous ``[3, H, W]`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def attach_stereo(store: FrameStore, bag: Path, data_cfg, width: int, height: int, cache_dir: Path,
                  progress: bool) -> None:
    """Load the second camera and pair its frames with the first by header stamp (exact match)."""
    calib = read_camera_info([bag], data_cfg.stereo_camera_info_topic) if data_cfg.stereo_camera_info_topic else None
    if calib is None or abs(calib.baseline) < 1e-6:
        raise BagError(f"{bag}: stereo needs the second camera's CameraInfo with P[0,3] = -fx * baseline "
                       f"(topic {data_cfg.stereo_camera_info_topic!r} missing or has no baseline)")
    other = load_frames(bag, data_cfg.stereo_image_topic, data_cfg.stereo_camera_info_topic, width, height,
                        cache_dir, (), progress, rectify=data_cfg.rectify)
    position = {int(s): i for i, s in enumerate(other.stamps_ns)}
    store.stereo = other
    store.stereo_index = np.array([position.get(int(s), -1) for s in store.stamps_ns], np.int64)
    store.baseline = calib.baseline
    if not np.any(store.stereo_index >= 0):
        raise BagError(f"{bag}: no frame of {data_cfg.stereo_image_topic!r} has the same stamp as "
                       f"{data_cfg.image_topic!r}; stereo pairs must be synchronised")


@dataclass
class SplitData:
    train: TripletDataset
    val: TripletDataset
    val_stores: list[FrameStore]


def build_datasets(data_cfg, width: int, height: int, cache_dir: Path, seed: int, progress: bool = True
                   ) -> SplitData:
    """Read the configured bags and split into training and validation triplets."""
    if not data_cfg.bags:
        raise BagError("no training bags: set data.bags in the config or pass --bags")

    def load(bag):
        store = load_frames(Path(bag), data_cfg.image_topic, data_cfg.camera_info_topic, width, height, cache_dir,
                            data_cfg.intrinsics, progress, max_offset=data_cfg.max_frame_offset,
                            rectify=data_cfg.rectify)
        if data_cfg.stereo_image_topic:
            attach_stereo(store, Path(bag), data_cfg, width, height, cache_dir, progress)
        if data_cfg.pose_topic:
            attach_poses(store, Path(bag), data_cfg.pose_topic, data_cfg.pose_frames, data_cfg.max_gap_s)
        return store

    stores = [load(b) for b in data_cfg.bags]
    val_stores = [load(b) for b in data_cfg.val_bags]
    def triplets(store, index_range=None):
        return select_triplets(store, data_cfg.frame_offset, data_cfg.max_gap_s, data_cfg.min_motion, index_range,
                               data_cfg.target_parallax_px)

    train_t, val_t = [], []
    for si, store in enumerate(stores):
        cut = len(store) if val_stores else int(round(len(store) * (1 - data_cfg.val_fraction)))
        train_t += [(si,) + tr for tr in triplets(store, (0, cut))]
        if not val_stores:
            val_t += [(si,) + tr for tr in triplets(store, (cut, len(store)))]
    all_stores = stores + val_stores
    for vi, store in enumerate(val_stores):
        val_t += [(len(stores) + vi,) + tr for tr in triplets(store)]

    def has_partner(tr) -> bool:      # with stereo, keep only targets whose second camera frame exists
        store = all_stores[tr[0]]
        return store.stereo is None or bool(store.stereo_index[tr[2]] >= 0)

    train_t = [tr for tr in train_t if has_partner(tr)]
    val_t = [tr for tr in val_t if has_partner(tr)]
    if len(train_t) < 2:
        total = sum(len(s) for s in stores)
        moving = sum(int(np.sum(s.motion >= data_cfg.min_motion)) for s in stores)
        if data_cfg.target_parallax_px > 0:
            raise BagError(f"too little parallax to train: {total} frames, {len(train_t)} targets have frames "
                           f"within {data_cfg.max_frame_offset} frames whose translation parallax reaches "
                           f"{data_cfg.target_parallax_px} px. The camera mostly rotates or stands still: record "
                           "while it moves sideways, or lower data.target_parallax_px / raise "
                           "data.max_frame_offset")
        raise BagError(f"too few moving frames to train: {total} frames, {moving} with motion >= "
                       f"{data_cfg.min_motion}, {len(train_t)} usable triplets. Record while the camera moves, or "
                       "lower data.min_motion / data.frame_offset, or raise data.max_gap_s")
    train = TripletDataset(all_stores, train_t, width, height, augment=True, flip=data_cfg.flip,
                           jitter=data_cfg.color_jitter, seed=seed)
    val = TripletDataset(all_stores, val_t, width, height, augment=False, seed=seed)
    return SplitData(train, val, val_stores or stores)
