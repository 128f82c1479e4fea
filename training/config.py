"""Typed training configuration: dataclasses loaded from YAML, overridden from the command line.

``load_config("config/train.yaml", ["optim.lr=2e-4", "data.bags=[a,b]"])`` returns a frozen
:class:`TrainConfig`; the resolved config is written as ``config.yaml`` beside every checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass(frozen=True)
class DataConfig:
    bags: tuple[str, ...] = ()                 # rosbag2 folders (or .mcap/.db3 files) to train on
    val_bags: tuple[str, ...] = ()             # held-out bags; empty = last val_fraction of each bag
    image_topic: str = "/camera/image_raw"     # sensor_msgs/Image or CompressedImage
    camera_info_topic: str = "/camera/camera_info"
    stereo_image_topic: str = ""               # optional second (right) camera: the reference's 's' frame
    stereo_camera_info_topic: str = ""         # its CameraInfo; the baseline comes from P's Tx = -fx * B
    depth_topic: str = ""                      # optional ground truth in val bags (32FC1 m / 16UC1 mm)
    eval_max_depth: float = 0.0                # ground truth beyond this (m) is not scored; 0 = the preset's
                                               # max_depth (an indoor RGB-D sensor: ~10)
    intrinsics: tuple[float, ...] = ()         # fx, fy, cx, cy in pixels of the recorded image, if no CameraInfo
    pose_topic: str = ""                       # optional recorded camera poses (Odometry, PoseStamped,
                                               # TransformStamped, or /tf with pose_frames): PoseNet's error
                                               # against them each epoch; pose.init=recorded trains with them
    pose_frames: tuple[str, ...] = ()          # (fixed_frame, camera_optical_frame) for a /tf topic
    rectify: bool = True                       # undistort + rotate by R when the CameraInfo has D or R; false
                                               # for already rectified topics (image_rect keeps the raw D)
    frame_offset: int = 1                      # k in (t-k, t, t+k), in frames after motion filtering
    target_parallax_px: float = 1.2            # > 0: per target, the nearest frames whose measured translation
                                               # parallax reaches this (px at network size); replaces frame_offset
                                               # (0: frame_offset decides)
    max_frame_offset: int = 16                 # parallax and rotation are measured to this many frames ahead
                                               # (0 = not measured; target_parallax_px and image_rotation need it)
    max_gap_s: float = 0.5                     # largest stamp gap allowed inside a triplet
    min_motion: float = 0.01                   # mean |frame difference| (0..1 grey) below which a pair is static
    val_fraction: float = 0.1
    flip: bool = True
    color_jitter: bool = True
    workers: int = 0
    cache_dir: str = ""                        # where decoded frames are cached; default <out>/cache


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "small_r18_96x320"
    init: str = "scratch"                      # scratch | official folder / our .pt to fine-tune from
    backbone_weights: str = ""                 # local timm weights for the depth backbone (optional)
    pose_backbone_weights: str = ""            # local timm weights for the PoseNet backbone (optional)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (reference section 3); the loss module takes this dataclass as it is."""
    ssim_alpha: float = 0.85                   # photometric error = alpha * SSIM term + (1 - alpha) * L1
    ssim_window: int = 7                       # SSIM window (pixels)
    smoothness: float = 1e-3                   # weight of the edge-aware smoothness on mean-normalised depth
    automask: bool = True                      # identity automasking (monodepth2's static-pixel rule)
    # PoseNet translation before the warp (monocular frames; stereo never): "mean_inverse_depth" multiplies it by
    # the target's mean inverse depth as the official trainer does; "depth_relative" divides it by that (PoseNet
    # predicts motion as a fraction of the scene depth, and a depth scaled by s leaves the warp unchanged: with it
    # the residual PoseNet learned translation, with upstream's rule it did not, bench/posenet_distill.py);
    # "none" uses it as it is (monodepth2)
    translation_scaling: str = "depth_relative"
    # weight of the scale anchor (losses.scale_anchor_loss): in a fine-tune (model.init set; from scratch there is
    # nothing to hold to and it is off) each target's mean log depth is held to the model.init weights' on the same
    # input (a frozen copy kept by the trainer), so the scale stays while the shape of the map learns. Without it
    # the real hand-held fine-tune swung 0.33-0.42 between epochs and the driving one doubled its depth; 1 still let
    # the driving fine-tune end worse than its start, 10 slowed the real one, 3 did neither (docs/real_data.md); 0: off
    scale_anchor: float = 3.0


@dataclass(frozen=True)
class PoseConfig:
    """Where each pair's pose comes from and how it is refined per batch (training/pose_refine.py)."""
    init: str = "image_rotation"               # posenet | image_rotation | recorded: the pose each pair starts
                                               # from. image_rotation: the rotation measured from the images (needs
                                               # data.max_frame_offset > 0) and no translation
    refine_method: str = "lm"                  # lm: Levenberg-Marquardt on the photometric residual, coarse to
                                               # fine; adam: Adam steps on the SSIM+L1 loss (the 2026-12-01 recipe)
    refine_steps: int = 5                      # lm: iterations per pyramid level; adam: steps (0 = no refinement,
                                               # PoseNet's poses as they are)
    refine_levels: int = 3                     # lm: pyramid levels (each 2x2-averaged; widens the basin 2x)
    rotation_stiffness: float = 0.03           # lm: pull of each pair's rotation towards its start, in units of the
                                               # data's own rotation curvature (0 = free; see pose_refine.py)
    posenet_start: bool = True                 # lm: per pair, start from PoseNet's pose instead of init's where
                                               # its photometric cost is lower (the share is logged per epoch)
    posenet_residual: bool = True              # with init image_rotation: PoseNet predicts the correction to the
                                               # measured rotation and the translation, not the whole motion (its
                                               # output layer starts at zero unless model.init's PoseNet was trained
                                               # so); ignored with the other inits. Residual, it learned; absolute,
                                               # it did not (docs/real_data.md)
    refine_lr_translation: float = 0.002       # adam: per-step size as a fraction of the target's median depth
    refine_lr_rotation: float = 0.005          # adam: radians per step
    distill_weight: float = 1.0                # L1 of PoseNet's transform to the refined one (teaches PoseNet)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"                    # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    encoder_lr_factor: float = 1.0             # 0.1 = the official --diff_lr (depth encoder at lr/10)
    epochs: int = 20
    step_size: int = 15                        # StepLR step (epochs), gamma below
    gamma: float = 0.1
    batch_size: int = 8
    grad_clip: float = 1.0                     # max grad norm; 0 disables
    amp: bool = True                           # autocast + GradScaler on CUDA (ignored on CPU)
    max_steps: int = 0                         # stop after this many steps (0 = epochs decide)
    max_minutes: float = 0.0                   # wall-clock budget: no epoch is started that would end past it
                                               # (0 = none); counted across resumes
    pose_lr_factor: float = 1.0                # PoseNet's learning rate = lr x this (10x fitted one batch faster
                                               # but did not lower the held-out error: bench/posenet_distill.py)
    pose_warmup_steps: int = 0                 # first N steps train PoseNet only, the depth network frozen (eval):
                                               # a random PoseNet otherwise drags a good depth net to a flat map


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    out_dir: str = "runs/spidepth"
    seed: int = 0
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    log_every: int = 20                        # steps between TensorBoard scalars
    checkpoint_every: int = 200                # steps between mid-epoch checkpoints (0 = epoch ends only)
    threads: int = 0                           # torch CPU threads; 0 = this process's share of its CPUs
                                               # (affinity / (torchrun procs x (1 + data.workers)))

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls, data: dict, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, value, f"{where}.{name}")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{name}: expected true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                value = type(default)(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}.{name}: expected a number, got {value!r}") from None
        kwargs[name] = value
    return cls(**kwargs)


def upgrade_saved_config(data: dict) -> dict:
    """A checkpoint's saved config with the keys added since it was written set to what that run did: a run saved
    before ``pose.refine_method`` existed refined with Adam (the LM default must not change a resumed run), one
    saved before ``pose.posenet_residual`` had an absolute PoseNet (its weights mean the whole motion)."""
    pose = data.get("pose")
    if isinstance(pose, dict) and "refine_steps" in pose and "refine_method" not in pose:
        pose["refine_method"] = "adam"
    optim = data.get("optim")
    if isinstance(optim, dict) and "lr" in optim and "pose_lr_factor" not in optim:
        optim["pose_lr_factor"] = 1.0          # PoseNet shared the depth decoder's learning rate before
    if isinstance(pose, dict) and "init" in pose and "posenet_residual" not in pose:
        pose["posenet_residual"] = False       # PoseNet predicted the whole motion before
    loss = data.get("loss")
    if isinstance(loss, dict) and "ssim_alpha" in loss and "translation_scaling" not in loss:
        loss["translation_scaling"] = "mean_inverse_depth"     # upstream's rule, the only one before
    return data


def config_from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, data, "config")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    data: dict = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(config: TrainConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
