"""A small training loop: models + loss module + optimiser, with atomic checkpoints and exact resume.

Checkpoint (our single-file format, ``spidepth_ros.checkpoint``) holds the preset, the resolved config,
both networks, optimiser, scheduler, GradScaler, ``epoch``/``step_in_epoch``/``global_step`` and the torch
RNG state. Data order and augmentation are functions of ``(seed, epoch, index)``, so resuming replays the
same batches: the next step after resume has the same loss as without the interruption.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from spidepth_ros.checkpoint import LoadedWeights, load_weights, safe_torch_load, save_checkpoint
from spidepth_ros.models import build_depth_net, build_pose_net
from spidepth_ros.presets import ModelPreset, get_preset

from .config import TrainConfig, save_config
from .diagnostics import EpochDiagnostics, pose_errors, rotation_angle_deg
from .losses import SelfSupervisedLoss, mean_log_depth, scale_anchor_loss
from .pose_refine import refine_transforms, refine_transforms_lm
from .warping import (derotate, pose_from_axis_angle, scale_translation_by_harmonic_mean_depth,
                      scale_translation_by_mean_inverse_depth)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, dist_info: Optional[DistInfo] = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist_info is not None and dist_info.world_size > 1:
        name = f"cuda:{dist_info.local_rank}"
    return torch.device(name)


def epoch_order(n: int, seed: int, epoch: int, dist_info: DistInfo) -> list[int]:
    """Deterministic shuffled indices for this rank (padded so every rank gets the same count)."""
    perm = np.random.default_rng([seed, epoch, 12345]).permutation(n).tolist()
    per_rank = math.ceil(n / dist_info.world_size)
    perm += perm[:per_rank * dist_info.world_size - n]
    return perm[dist_info.rank::dist_info.world_size]


def build_models(cfg: TrainConfig) -> tuple[ModelPreset, nn.Module, nn.Module, Optional[LoadedWeights]]:
    init = cfg.model.init
    if init and init != "scratch":
        weights = load_weights(init)
        depth_net, pose_net = weights.build(with_pose=True)
        if pose_net is None:
            pose_net = build_pose_net(weights.preset, cfg.model.pose_backbone_weights or None)
        return weights.preset, depth_net, pose_net, weights
    preset = get_preset(cfg.model.preset)
    return (preset, build_depth_net(preset, cfg.model.backbone_weights or None),
            build_pose_net(preset, cfg.model.pose_backbone_weights or None), None)


TRANSLATION_SCALINGS = ("mean_inverse_depth", "depth_relative", "none")
POSE_INITS = ("posenet", "image_rotation", "recorded")
REFINE_METHODS = ("lm", "adam")


@dataclass
class PairPoses:
    """The (prev, next) target-to-source transforms ``[B, 4, 4]`` of one batch, by where they came from."""

    posenet: list[torch.Tensor]        # PoseNet's (translation in the warp's units)
    start: list[torch.Tensor]          # what the refinement starts from (pose.init)
    warp: list[torch.Tensor]           # what the loss warps with: the refined poses, or the start without refinement
    distill: Optional[torch.Tensor]    # PoseNet's L1 to the refined poses (None without refinement)
    diagnostics: dict                  # refinement statistics for the epoch summary


def posenet_pair_inputs(b: dict, derotated: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """PoseNet's two inputs ``[B, 6, H, W]`` of a batch, in temporal order: (prev, target) and (target, next), from
    the colour-augmented frames. ``derotated``: each source first resampled into the target's orientation by its
    measured rotation (``b["image_rotation"]``, target -> source; :func:`derotate`), so that a residual PoseNet sees
    only what it has to add: the translation's parallax and the rotation's error."""
    prev, target, nxt = b["prev_aug"], b["target_aug"], b["next_aug"]
    if derotated:
        prev = derotate(prev, b["image_rotation"][:, 0], b["K"], b["inv_K"])
        nxt = derotate(nxt, b["image_rotation"][:, 1], b["K"], b["inv_K"])
    return torch.cat([prev, target], 1), torch.cat([target, nxt], 1)


def posenet_transforms(posenet_out: tuple, depth: torch.Tensor, scaling: str) -> list[torch.Tensor]:
    """PoseNet's outputs for the (prev, target) and (target, next) pairs -> the (prev, next) target-to-source
    transforms ``[B, 4, 4]`` the warp takes. ``posenet_out``: ``(axis-angle prev, translation prev, axis-angle next,
    translation next)``, each ``[B, 1, 1, 3]``; pairs are in temporal order, so the previous one is inverted.
    ``scaling`` (``loss.translation_scaling``; "none" with a stereo frame, whose metric baseline fixes the scale):
    upstream multiplies the translation by the target's mean inverse depth, depth_relative divides by it."""
    aa_p, raw_p, aa_n, raw_n = posenet_out
    scale_fn = {"mean_inverse_depth": scale_translation_by_mean_inverse_depth,
                "depth_relative": scale_translation_by_harmonic_mean_depth}.get(scaling)
    tp = scale_fn(raw_p, depth) if scale_fn else raw_p.reshape(-1, 3)
    tn = scale_fn(raw_n, depth) if scale_fn else raw_n.reshape(-1, 3)
    return [pose_from_axis_angle(aa_p, tp, invert=True), pose_from_axis_angle(aa_n, tn, invert=False)]


def pose_distillation(posenet: list[torch.Tensor], refined: list[torch.Tensor], depth: torch.Tensor,
                      rotation_weight: float = 1.0) -> torch.Tensor:
    """L1 of PoseNet's transforms to the refined ones ``[B, 4, 4]``, summed over the pairs, in units where rotation
    and translation weigh alike: rotation-matrix entries (~ radians) and translation as a fraction of the target's
    harmonic-mean depth ``1 / mean(1/depth)`` (``depth`` ``[B, 1, H, W]``, detached: the distillation teaches
    PoseNet, it must not move the depth). In the warp's raw units the translation of a far scene would swamp the
    rotation (and of a near one vanish); relative to the depth both are O(0.01) per pair. ``rotation_weight``
    multiplies the rotation's term (bench/posenet_distill.py compares weights)."""
    scene = 1.0 / (1.0 / depth.detach()).mean(dim=(1, 2, 3)).view(-1, 1, 1)
    total = torch.zeros((), device=depth.device)
    for t, r in zip(posenet, refined):
        r = r.detach()
        rotation = (t[:, :3, :3] - r[:, :3, :3]).abs().mean()
        total = total + rotation_weight * rotation + ((t[:, :3, 3:] - r[:, :3, 3:]) / scene).abs().mean()
    return total


def after_rotation(rotation: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """A residual PoseNet's transform ``[B, 4, 4]`` on top of a measured rotation ``[B, 3, 3]`` (both target ->
    source): rotation ``rotation @ R_correction``, translation the correction's own (the measurement has none)."""
    out = correction.clone()
    out[:, :3, :3] = rotation @ correction[:, :3, :3]
    return out


def zero_output_layer(pose_net: nn.Module) -> None:
    """PoseNet's last convolution set to zero: it outputs no rotation and no translation until it learns."""
    last = pose_net.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def residual_posenet(posenet_residual: bool, init: str) -> bool:
    """Whether PoseNet learns the correction to the measured rotation (pose.posenet_residual acts only with
    pose.init image_rotation; see PoseConfig)."""
    return bool(posenet_residual) and init == "image_rotation"


def _trained_residual(config: dict) -> bool:
    """Whether a checkpoint's saved training config trained its PoseNet as a residual."""
    pose = (config or {}).get("pose", {})
    return residual_posenet(pose.get("posenet_residual", False), pose.get("init"))


def split_pose_param_group(optimizer: dict, scheduler: dict, decoder_params: int, pose_lr_factor: float
                           ) -> tuple[dict, dict]:
    """Optimiser and StepLR states saved before PoseNet had its own parameter group (2 groups: encoder, decoder +
    PoseNet) rewritten to today's 3 (encoder, decoder, PoseNet at ``lr x pose_lr_factor``); newer states unchanged.
    The Adam moments stay with their parameters (state is keyed by parameter index, which does not change)."""
    groups = optimizer["param_groups"]
    if len(groups) != 2:
        return optimizer, scheduler
    shared = groups[1]
    pose = {**shared, "params": shared["params"][decoder_params:]}
    for key in ("lr", "initial_lr"):
        if key in pose:
            pose[key] = shared[key] * pose_lr_factor
    optimizer = {**optimizer, "param_groups": [groups[0], {**shared, "params": shared["params"][:decoder_params]},
                                               pose]}
    scheduler = dict(scheduler)
    for key in ("base_lrs", "_last_lr"):
        if key in scheduler and len(scheduler[key]) == 2:
            scheduler[key] = [*scheduler[key], scheduler[key][1] * pose_lr_factor]
    return optimizer, scheduler


#: consecutive steps with a non-finite loss after which training stops (the weights are beyond recovery)
MAX_NONFINITE_STEPS = 20


class Trainer:
    """Owns the models, optimiser and the step; hooks (logging, validation) are passed in as callables."""

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: DistInfo = DistInfo()) -> None:
        self.cfg = cfg
        self.device = device
        self.dist = dist_info
        self.preset, depth_net, pose_net, init_weights = build_models(cfg)
        self.depth_net = depth_net.to(device).train()
        self.pose_net = pose_net.to(device).train()
        self.fine_tune = init_weights is not None          # model.init loaded (else from scratch)
        self.posenet_residual = residual_posenet(cfg.pose.posenet_residual, cfg.pose.init)
        if cfg.pose.init not in POSE_INITS:
            raise ValueError(f"pose.init must be one of {POSE_INITS}, not {cfg.pose.init!r}")
        if cfg.pose.init == "image_rotation" and cfg.data.max_frame_offset <= 0:
            raise ValueError("pose.init=image_rotation needs the rotations measured into the frame cache: set "
                             "data.max_frame_offset > 0 (e.g. 16)")
        if cfg.pose.init == "image_rotation" and cfg.pose.refine_steps <= 0:
            # a zero translation makes the warp independent of depth: only smoothness would train it, to a flat map
            raise ValueError("pose.init=image_rotation starts each pair with no translation, which pose.refine_steps "
                             "must then find: with refine_steps 0 the warp ignores depth and training flattens "
                             "it; set pose.refine_steps (e.g. 5) or pose.init=posenet")
        if cfg.pose.init == "recorded" and not cfg.data.pose_topic:
            raise ValueError("pose.init=recorded trains with the recording's own poses: set data.pose_topic")
        if cfg.pose.refine_method not in REFINE_METHODS:
            raise ValueError(f"pose.refine_method must be one of {REFINE_METHODS}, not {cfg.pose.refine_method!r}")
        if cfg.pose.refine_method == "lm" and cfg.pose.refine_levels < 1:
            raise ValueError("pose.refine_levels must be at least 1 (the full-resolution image)")
        # an absolute PoseNet's output read as a correction would turn every pair twice: start at zero correction
        # (the measured rotation, no translation) and learn from there (a resume loads its own PoseNet after this)
        self.posenet_restarted = self.posenet_residual and not (
            self.fine_tune and _trained_residual(init_weights.extra.get("config", {})))
        if self.posenet_restarted:
            zero_output_layer(self.pose_net)
        if cfg.loss.translation_scaling not in TRANSLATION_SCALINGS:
            raise ValueError(f"loss.translation_scaling must be one of {TRANSLATION_SCALINGS}, not "
                             f"{cfg.loss.translation_scaling!r}")
        self.loss_fn = SelfSupervisedLoss(cfg.loss)
        # loss.scale_anchor's reference in a fine-tune: the model.init weights in a network of their own, never
        # trained (train mode like the trained one, so both normalise alike; a resumed run keeps them, not the
        # checkpoint's). From scratch there is no scale to hold: no anchor
        self.anchor_net: Optional[nn.Module] = None
        if cfg.loss.scale_anchor > 0 and self.fine_tune:
            self.anchor_net = copy.deepcopy(self.depth_net).requires_grad_(False)
        o = cfg.optim
        groups = [
            {"params": list(self.depth_net.encoder.parameters()), "lr": o.lr * o.encoder_lr_factor},
            {"params": list(self.depth_net.depth_decoder.parameters()), "lr": o.lr},
            {"params": list(self.pose_net.parameters()), "lr": o.lr * o.pose_lr_factor},
        ]
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(o.optimizer)
        if opt_cls is None:
            raise ValueError(f"optim.optimizer must be adam or adamw, not {o.optimizer!r}")
        self.optimizer = opt_cls(groups, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, o.step_size, o.gamma)
        self.use_amp = o.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0
        self.step_in_epoch = 0
        self.elapsed_s = 0.0            # wall-clock seconds of fit() so far, carried across resumes (max_minutes)
        self.epoch_diagnostics = EpochDiagnostics()      # reset by whoever reads it at the end of an epoch
        self.global_step = 0
        self.nonfinite_in_a_row = 0     # steps skipped for a non-finite loss since the last good one
        self._ddp_depth = self._ddp_pose = None
        if dist_info.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self._ddp_depth = DDP(self.depth_net, device_ids=ids)
            self._ddp_pose = DDP(self.pose_net, device_ids=ids)

    # -- forward ---------------------------------------------------------------------------------------
    def predict_depth(self, images: torch.Tensor, net: Optional[nn.Module] = None) -> torch.Tensor:
        """``[B, 3, H, W]`` -> depth ``[B, 1, H, W]`` (network output upsampled x2, align_corners=False) of the
        trainer's depth network, or of ``net`` (another depth network of the same preset)."""
        net = net or self._ddp_depth or self.depth_net
        depth = net(images)
        return F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def compute_loss(self, batch: dict, validation: bool = False) -> dict:
        """The loss of one batch and what it did (see :meth:`_poses` for where the warp's poses come from).

        ``validation``: also the photometric error with PoseNet's poses alone (``photometric_posenet``, no
        refinement: a plain number, not optimised on the frames it scores) and with the start poses
        (``photometric_start``), and the pose errors of the start and refined poses where recorded ones exist.
        """
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        pose = self._ddp_pose or self.pose_net
        with torch.autocast(self.device.type, enabled=self.use_amp):
            depth = self.predict_depth(b["target_aug"])
            # pairs always in temporal order; the previous frame's pose is inverted (reference section 3)
            pair_prev, pair_next = posenet_pair_inputs(b)
            aa_p, t_p = pose(pair_prev)
            aa_n, t_n = pose(pair_next)
        posenet_out = (aa_p.float(), t_p.float(), aa_n.float(), t_n.float())
        poses = self._poses(b, depth.float(), posenet_out)
        sources = [b["prev"], b["next"]]
        transforms = list(poses.warp)
        if "stereo" in b:                  # the 's' frame: a known, fixed transform, no PoseNet
            sources.append(b["stereo"])
            transforms.append(b["stereo_T"])
        out = self.loss_fn(depth.float(), b["target"], sources, transforms, b["K"], b["inv_K"])
        if poses.distill is not None:
            out["loss"] = out["loss"] + self.cfg.pose.distill_weight * poses.distill
            out["pose_distill"] = poses.distill.detach()
        # the scale anchor is a training term: validation and the adaptation guard (no gradient) skip its forward
        if self.anchor_net is not None and torch.is_grad_enabled():
            with torch.no_grad():        # the starting model's scale of each frame, on the same augmented input
                reference = mean_log_depth(self.predict_depth(b["target_aug"], self.anchor_net).float())
            anchor = scale_anchor_loss(depth.float(), reference)
            out["loss"] = out["loss"] + self.cfg.loss.scale_anchor * anchor
            out["scale_anchor"] = anchor.detach()
        out.update(poses.diagnostics)
        out["depth"] = depth.detach()
        if "recorded_transform" in b and bool(b["has_recorded"].any()):
            # how far PoseNet (and, in validation, the start and refined poses) are from the recorded motion
            has = b["has_recorded"]
            named = {"posenet": poses.posenet}
            if validation:
                named.update(start=poses.start, refined=poses.warp)
            for name, estimate in named.items():
                rot_err, dir_err = zip(*(pose_errors(est[has].detach(), b["recorded_transform"][has, i])
                                         for i, est in enumerate(estimate)))
                out[f"{name}_rotation_error_deg"] = torch.cat(rot_err).mean()
                out[f"{name}_direction_error_deg"] = torch.cat(dir_err).nanmean()
        if validation:
            with torch.no_grad():
                for name, estimate in (("posenet", poses.posenet), ("start", poses.start)):
                    plain = [*estimate, *transforms[2:]]          # the stereo frame, if any, as in training
                    out[f"photometric_{name}"] = self.loss_fn(depth.float(), b["target"], sources, plain, b["K"],
                                                              b["inv_K"])["photometric"]
        if "offsets" in b:
            out["frame_offset"] = b["offsets"].float().mean()
            out["parallax_px"] = b["parallax_px"].float().nanmean()
        if "rotation_measured" in b and self.cfg.pose.init == "image_rotation":
            # pairs whose rotation could not be measured (too few tracks) start from the identity
            out["unmeasured_rotation_fraction"] = (~b["rotation_measured"]).float().mean()
        with torch.no_grad():    # the motion the warp used, for the per-epoch diagnostics (model units, degrees)
            out["translation_norm"] = sum(tr[:, :3, 3].norm(dim=1).mean() for tr in poses.warp) / 2
            out["rotation_deg"] = sum(rotation_angle_deg(tr[:, :3, :3]).mean() for tr in poses.warp) / 2
        return out

    def _poses(self, b: dict, depth: torch.Tensor, posenet_out: tuple) -> "PairPoses":
        """Each pair's (prev, next) target-to-source transforms: PoseNet's, the start (``pose.init``), and the ones
        the warp uses (the start refined, when ``pose.refine_steps`` > 0), plus the distillation term."""
        scaling = "none" if "stereo" in b else self.cfg.loss.translation_scaling

        def posenet_pair(depth_for_scale: torch.Tensor) -> list[torch.Tensor]:
            transforms = posenet_transforms(posenet_out, depth_for_scale, scaling)
            if self.posenet_residual and "image_rotation" in b:
                transforms = [after_rotation(b["image_rotation"][:, i], t) for i, t in enumerate(transforms)]
            return transforms

        posenet = posenet_pair(depth)
        start = posenet
        pc = self.cfg.pose
        if pc.init == "recorded" and "recorded_transform" in b:
            # metric poses from SLAM / mocap / odometry where all three frames have one, PoseNet's elsewhere
            has = b["has_recorded"].view(-1, 1, 1)
            start = [torch.where(has, b["recorded_transform"][:, i], tr) for i, tr in enumerate(posenet)]
        if pc.init == "image_rotation" and "image_rotation" in b:
            # the rotation measured from the images and no translation: hand-held video rotates much more than
            # it translates; the refinement below finds the translation (and corrects the rotation)
            start = [torch.cat([torch.cat([b["image_rotation"][:, i], torch.zeros_like(tr[:, :3, 3:])], 2),
                                tr[:, 3:]], 1) for i, tr in enumerate(posenet)]
        diagnostics: dict = {}
        if pc.refine_steps <= 0:
            return PairPoses(posenet, start, start, None, diagnostics)
        sources = [b["prev"], b["next"]]
        if pc.refine_method == "lm":
            candidates = [[s.detach()] for s in start]
            if pc.posenet_start and pc.init != "posenet":
                # PoseNet competes with the start pair by pair: where it already explains the images better, the
                # refinement begins there (fewer iterations to the same pose); where it is still poor, the start
                for c, p in zip(candidates, posenet):
                    c.append(p.detach())
            found = refine_transforms_lm(depth.detach(), b["target"], sources, candidates, b["K"], pc.refine_steps,
                                         pc.refine_levels, pc.rotation_stiffness)
            refined = found.transforms
            if pc.posenet_start and pc.init != "posenet":
                diagnostics["refine_posenet_start_fraction"] = (found.start_index == 1).float().mean()
            diagnostics["refine_cost_reduction"] = (1 - found.final_cost / found.start_cost.clamp_min(1e-12)).mean()
        else:
            found = refine_transforms(depth, b["target"], sources, start, b["K"], b["inv_K"], pc.refine_steps,
                                      pc.refine_lr_translation, pc.refine_lr_rotation, self.cfg.loss.ssim_alpha,
                                      self.cfg.loss.ssim_window)
            refined = found.transforms
            diagnostics["refine_saturated_fraction"] = found.saturated.float().mean()
            diagnostics["refine_rotation_saturated_fraction"] = found.rotation_saturated.float().mean()
        distill = pose_distillation(posenet_pair(depth.detach()), refined, depth.detach())
        return PairPoses(posenet, start, refined, distill, diagnostics)

    def depth_frozen(self) -> bool:
        return self.global_step < self.cfg.optim.pose_warmup_steps

    def _apply_warmup(self) -> None:
        """During the PoseNet warm-up the depth network is frozen: no gradient, BatchNorm statistics kept."""
        frozen = self.depth_frozen()
        self.depth_net.requires_grad_(not frozen)
        self.depth_net.train(not frozen)

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on ``batch``; a batch whose loss is not finite makes none (``out["skipped"]``):
        torch's backward through the warp's sampling can crash the process on NaN coordinates, and a NaN
        update would poison every weight. :data:`MAX_NONFINITE_STEPS` in a row stop training with the reason."""
        self._apply_warmup()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.compute_loss(batch)
        finite = torch.isfinite(out["loss"].detach()).to(torch.int32)
        if self.dist.world_size > 1:        # every rank skips together, or DDP's gradient all-reduce would hang
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        self.global_step += 1
        self.step_in_epoch += 1
        if not bool(finite):
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
                raise FloatingPointError(
                    f"the loss was not finite for {self.nonfinite_in_a_row} steps in a row (step "
                    f"{self.global_step}): training diverged; lower optim.lr (now {self.cfg.optim.lr:g}) or resume "
                    "from an earlier checkpoint")
            out["skipped"] = True
            return out
        self.nonfinite_in_a_row = 0
        self.scaler.scale(out["loss"]).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = list(self.depth_net.parameters()) + list(self.pose_net.parameters())
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return out

    # -- checkpoints -----------------------------------------------------------------------------------
    def save(self, path: Path, **extra) -> None:
        """A resumable training checkpoint (models, optimiser, scheduler, counters, RNG; ``extra`` entries
        beside them), written atomically, with the config saved as config.yaml in the same folder."""
        if not self.dist.is_main:
            return
        save_checkpoint(path, self.preset, self.depth_net, self.pose_net, config=self.cfg.to_dict(),
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict(), epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                        global_step=self.global_step, torch_rng=torch.get_rng_state(),
                        elapsed_s=self.elapsed_s, **extra)
        save_config(self.cfg, path.parent / "config.yaml")

    def load(self, path: Path) -> None:
        """Resume everything a checkpoint holds (models, optimiser, scheduler, counters, RNG)."""
        data = safe_torch_load(path)
        weights = load_weights(path)
        if weights.preset.name != self.preset.name:
            raise ValueError(f"{path} was trained with preset {weights.preset.name}, this run uses "
                             f"{self.preset.name}")
        self.depth_net.load_state_dict(weights.depth_state_dict(), strict=True)
        self.pose_net.load_state_dict(weights.pose, strict=True)
        for key in ("optimizer", "scheduler", "scaler"):
            if key not in data:
                raise ValueError(f"{path} has no {key} state: it is a model file, not a training checkpoint "
                                 "(use model.init to fine-tune from it instead)")
        optimizer, scheduler = split_pose_param_group(data["optimizer"], data["scheduler"],
                                                      len(list(self.depth_net.depth_decoder.parameters())),
                                                      self.cfg.optim.pose_lr_factor)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        self.scaler.load_state_dict(data["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = data["epoch"], data["step_in_epoch"], data["global_step"]
        self.elapsed_s = float(data.get("elapsed_s", 0.0))
        torch.set_rng_state(data["torch_rng"])

    # -- loop ------------------------------------------------------------------------------------------
    def fit(self, train_set, out_dir: Path, on_log: Callable[[int, dict], None] = lambda s, o: None,
            on_epoch_end: Callable[[int], None] = lambda e: None, progress: bool = True) -> None:
        from torch.utils.data import DataLoader, Subset
        from tqdm import tqdm

        o = self.cfg.optim
        budget_s = o.max_minutes * 60.0
        clock = [time.monotonic()]

        def tick() -> None:             # add the wall time since the last tick to elapsed_s (saved, resumed)
            now = time.monotonic()
            self.elapsed_s += now - clock[0]
            clock[0] = now

        while self.epoch < o.epochs:
            epoch_start_s = self.elapsed_s
            train_set.set_epoch(self.epoch)
            order = epoch_order(len(train_set), self.cfg.seed, self.epoch, self.dist)
            steps = len(order) // o.batch_size
            start = self.step_in_epoch
            subset = Subset(train_set, order[start * o.batch_size: steps * o.batch_size])
            loader = DataLoader(subset, batch_size=o.batch_size, shuffle=False, drop_last=True,
                                num_workers=self.cfg.data.workers, persistent_workers=False)
            bar = tqdm(loader, total=steps - start, disable=not (progress and self.dist.is_main),
                       desc=f"epoch {self.epoch + 1}/{o.epochs}", unit="step")
            for batch in bar:
                out = self.train_step(batch)
                self.epoch_diagnostics.add(out)
                bar.set_postfix(loss=f"{out['loss'].item():.4f}")
                if self.global_step % self.cfg.log_every == 0:
                    on_log(self.global_step, out)
                tick()
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self.save(out_dir / "last.pt")
                if o.max_steps and self.global_step >= o.max_steps:
                    self.save(out_dir / "last.pt")
                    return
            self.epoch += 1
            self.step_in_epoch = 0
            self.scheduler.step()
            tick()
            self.save(out_dir / "last.pt")
            on_epoch_end(self.epoch)
            tick()
            epoch_s = self.elapsed_s - epoch_start_s
            if budget_s and self.epoch < o.epochs and self.elapsed_s + epoch_s > budget_s:
                # another epoch as long as this one would overrun: stop on a validated epoch boundary
                if self.dist.is_main:
                    print(f"optim.max_minutes={o.max_minutes:g}: stopping after epoch {self.epoch} "
                          f"({self.elapsed_s / 60:.1f} min used, an epoch takes {epoch_s / 60:.1f} min)")
                self.save(out_dir / "last.pt")
                return
