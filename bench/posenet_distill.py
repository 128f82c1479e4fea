"""Can PoseNet learn the refined poses? PoseNet trained alone on fixed targets, side by side per setting.

The depth network is frozen at the checkpoint's weights and every training triplet's pose is refined once (the
trainer's own start and LM refinement, flips and colour jitter off so each triplet's target is fixed). Then, for
each setting, PoseNet restarts from the checkpoint and is trained on those targets with the trainer's own
distillation; on the validation triplets it is scored by the photometric error of the warp with its poses alone,
beside the error with the refined poses and with the refinement's start (the image rotation, no translation).
This isolates PoseNet from the depth network moving under it (what a full training run cannot).

    python bench/posenet_distill.py --config config/train.yaml --init models/demo_small.pt \
        --bags data/real/rs_train --val-bags data/real/rs_val --epochs 20 \
        --settings mean_inverse_depth:1 depth_relative:1 depth_relative:10

A setting is ``translation_scaling:pose_lr_factor[:flag...]`` with flags ``residual`` (PoseNet's rotation applied
after the measured image rotation, so it learns the correction and the translation), ``residual0`` (the same with
PoseNet's output layer zeroed first, so that it starts exactly at the image rotation), ``bnfrozen`` (PoseNet's
BatchNorm layers normalise with their running statistics while it trains, as they do when it is scored),
``rot<w>`` (the distillation's rotation term weighted w, e.g. ``rot10``), ``derot`` (with residual: PoseNet's
sources turned into the target's orientation by the measured rotation before it sees them), ``both`` (PoseNet also
trained on the time-reversed pairs, (target, prev) and (next, target), towards the same refined transforms; never derotated),
``sym`` (PoseNet scored by the chordal mean of its forward and time-reversed estimates of each transform),
``cos`` (the learning rate decayed to zero over the epochs, cosine) and ``gain<k>`` (scored with PoseNet's rotation
correction shrunk by k towards the measured rotation, e.g. ``gain0.5``; training unchanged). Prints one row per setting and epoch checkpoints; with
``--val-pose-topic /camera/pose`` (validation bags with recorded poses) also the rotation errors against them and
the photometric error of the recorded poses themselves (what a perfect PoseNet would score). ``--train-parallax
0.8 1.8`` also trains on each target's sources chosen at those parallaxes (more pairs cut from the same frames).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from spidepth_ros.training.cli import auto_threads
from spidepth_ros.training.config import load_config
from spidepth_ros.training.data import build_datasets
from spidepth_ros.training.diagnostics import pose_errors
from spidepth_ros.training.evaluate import spread_indices
from spidepth_ros.training.trainer import (Trainer, after_rotation, pose_distillation, posenet_pair_inputs,
                                          posenet_transforms, zero_output_layer)
from spidepth_ros.training.warping import axis_angle_to_matrix


def cached_targets(trainer: Trainer, dataset, batch_size: int) -> list[dict]:
    """Each batch of ``dataset`` with the frozen depth and the refined (prev, next) transforms added."""
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            depth = trainer.predict_depth(batch["target_aug"])
            pose = trainer.pose_net
            pair_prev, pair_next = posenet_pair_inputs(batch)
            aa_p, t_p = pose(pair_prev)
            aa_n, t_n = pose(pair_next)
            poses = trainer._poses(batch, depth, (aa_p, t_p, aa_n, t_n))
            out.append({**batch, "depth": depth, "refined": [t.detach() for t in poses.warp],
                        "start": [t.detach() for t in poses.start]})
    return out


def photometric(trainer: Trainer, batches: list[dict], which) -> float:
    """Mean photometric error (automasked, as training) of the warp with ``which(batch)``'s transforms."""
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            err = trainer.loss_fn(b["depth"], b["target"], [b["prev"], b["next"]], which(b), b["K"],
                                  b["inv_K"])["photometric"]
            total += float(err) * len(b["index"])
            count += len(b["index"])
    return total / count


def pose_error_deg(batches: list[dict], which) -> tuple[float, float]:
    """Mean rotation and translation-direction errors (degrees) of ``which(batch)``'s transforms against the
    recorded ones (nan without recorded poses; pairs without translation are left out of the direction's mean)."""
    rotations, directions = [], []
    with torch.no_grad():
        for b in batches:
            if "recorded_transform" not in b or not bool(b["has_recorded"].any()):
                continue
            has = b["has_recorded"]
            for i, estimate in enumerate(which(b)):
                rotation, direction = pose_errors(estimate[has], b["recorded_transform"][has, i])
                rotations.append(rotation)
                directions.append(direction)
    if not rotations:
        return float("nan"), float("nan")
    return float(torch.cat(rotations).mean()), float(torch.cat(directions).nanmean())


def recorded_poses(scale: float):
    """The recorded (prev, next) transforms of a batch with their translation (metres) divided by ``scale`` (metres
    per model unit), where all three frames had a pose; the start's elsewhere."""
    def which(b: dict) -> list[torch.Tensor]:
        has = b["has_recorded"].view(-1, 1, 1)
        out = []
        for i, start in enumerate(b["start"]):
            rec = b["recorded_transform"][:, i].clone()
            rec[:, :3, 3] /= scale
            out.append(torch.where(has, rec, start))
        return out
    return which


def perturbed(base, rotation_deg: float = 0.0, translation_factor: float = 1.0, direction_deg: float = 0.0,
              seed: int = 0):
    """``base(batch)``'s transforms with each pair's rotation turned by ``rotation_deg`` about a random axis, its
    translation scaled by ``translation_factor`` and turned by ``direction_deg`` about a random axis orthogonal to
    it (the same random axes for every call with the same seed): how precise must a pose be?"""
    def which(b: dict) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed + int(b["index"][0]))
        out = []
        for tr in base(b):
            n = tr.shape[0]
            axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=1)
            turn = axis_angle_to_matrix((axis * math.radians(rotation_deg)).view(n, 1, 1, 3))[:, :3, :3]
            t = tr[:, :3, 3]
            ortho = torch.nn.functional.normalize(torch.linalg.cross(t, torch.randn(n, 3, generator=gen)), dim=1)
            swing = axis_angle_to_matrix((ortho * math.radians(direction_deg)).view(n, 1, 1, 3))[:, :3, :3]
            moved = tr.clone()
            moved[:, :3, :3] = turn @ tr[:, :3, :3]
            moved[:, :3, 3] = translation_factor * (swing @ t.unsqueeze(2)).squeeze(2)
            out.append(moved)
        return out
    return which


def posenet_poses(pose_net, scaling: str, residual: bool = False, derotated: bool = False,
                  time_reversed: bool = False, rotation_gain: float = 1.0):
    """PoseNet's (prev, next) transforms of a batch; ``residual``: its rotation applied after the start's (the
    measured image rotation), i.e. PoseNet learns the correction and the translation; ``derotated``: its inputs'
    sources turned into the target's orientation by that rotation first (``trainer.posenet_pair_inputs``).
    ``time_reversed``: PoseNet fed (target, prev) and (next, target) instead, a second estimate of the same
    transforms from the same frames: its output for a pair (a, b) is the motion with a as target and b as source,
    so the first is the target -> prev transform as it is and the second must be inverted. ``rotation_gain``: PoseNet's
    rotation (with ``residual``, its correction to the measured rotation) scaled by this angle factor, a shrinkage
    towards the measured rotation that only scoring uses. Neither ``derotated`` nor ``rotation_gain`` is defined for the
    time-reversed estimate (a derotation turns the sources, which are the targets there)."""
    if time_reversed and (derotated or rotation_gain != 1):
        raise ValueError("derotated and rotation_gain apply to the forward estimate only")
    def which(b: dict) -> list[torch.Tensor]:
        pair_prev, pair_next = posenet_pair_inputs(b, derotated)
        if time_reversed:
            aa_p, t_p = pose_net(torch.cat([pair_prev[:, 3:], pair_prev[:, :3]], 1))     # (target, prev)
            aa_n, t_n = pose_net(torch.cat([pair_next[:, 3:], pair_next[:, :3]], 1))     # (next, target)
            # posenet_transforms inverts its first pair and keeps its second: here the next pair is inverted
            to_next, to_prev = posenet_transforms((aa_n, t_n, aa_p, t_p), b["depth"], scaling)
            transforms = [to_prev, to_next]
        else:
            aa_p, t_p = pose_net(pair_prev)
            aa_n, t_n = pose_net(pair_next)
            transforms = posenet_transforms((rotation_gain * aa_p, t_p, rotation_gain * aa_n, t_n), b["depth"],
                                            scaling)
        if residual:
            transforms = [after_rotation(s[:, :3, :3], t) for s, t in zip(b["start"], transforms)]
        return transforms
    return which


def chordal_mean(first, second):
    """The mean of two estimates of each transform ``[B, 4, 4]``: translations averaged, rotations by the chordal
    mean (the nearest rotation to the mean matrix, through its SVD)."""
    def which(b: dict) -> list[torch.Tensor]:
        out = []
        for x, y in zip(first(b), second(b)):
            u, _, vt = torch.linalg.svd((x[:, :3, :3] + y[:, :3, :3]) / 2)
            fix = torch.ones_like(x[:, :3, 0])
            fix[:, 2] = torch.linalg.det(u @ vt)          # a reflection would need det -1; keep a rotation
            m = (x + y) / 2
            m[:, :3, :3] = u @ torch.diag_embed(fix) @ vt
            out.append(m)
        return out
    return which


def mixed(rotation_from, translation_from):
    """Transforms with ``rotation_from(batch)``'s rotations and ``translation_from(batch)``'s translations: which
    half of PoseNet's pose costs the photometric error?"""
    def which(b: dict) -> list[torch.Tensor]:
        out = []
        for r, t in zip(rotation_from(b), translation_from(b)):
            m = t.clone()
            m[:, :3, :3] = r[:, :3, :3]
            out.append(m)
        return out
    return which


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config/train.yaml")
    p.add_argument("--init", required=True, help="checkpoint whose depth network is frozen and PoseNet restarts")
    p.add_argument("--bags", nargs="+", required=True)
    p.add_argument("--val-bags", nargs="+", required=True)
    p.add_argument("--cache", default="runs/posenet_distill_cache")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--val-triplets", type=int, default=64)
    p.add_argument("--settings", nargs="+", default=["mean_inverse_depth:1", "depth_relative:1",
                                                     "depth_relative:10"])
    p.add_argument("--one-batch", action="store_true",
                   help="train on the first batch only and score on it: can PoseNet fit the targets at all?")
    p.add_argument("--val-pose-topic", default="", help="recorded poses in the validation bags: rotation errors")
    p.add_argument("--train-parallax", nargs="*", type=float, default=[],
                   help="also train on the triplets chosen at these data.target_parallax_px values (more pairs from the "
                        "same frames: each target's sources at other offsets); validation keeps the config's")
    p.add_argument("--set", nargs="*", default=[], help="further config overrides")
    args = p.parse_args()
    settings = []                                 # parsed and checked before minutes of refinement, not after
    for setting in args.settings:
        scaling, factor, *flags = setting.split(":")
        if "sym" in flags and any(f.startswith("gain") for f in flags):
            p.error(f"{setting}: gain<k> shrinks the forward estimate only, so it cannot be combined with sym")
        settings.append((setting, scaling, factor, flags))
    torch.set_num_threads(auto_threads(0))
    overrides = [f"data.bags={json.dumps(args.bags)}", f"data.val_bags={json.dumps(args.val_bags)}",
                 f"model.init={args.init}", "data.flip=false", "data.color_jitter=false", *args.set]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, torch.device("cpu"))
    trainer.depth_net.eval().requires_grad_(False)
    data = build_datasets(cfg.data, trainer.preset.width, trainer.preset.height, Path(args.cache), cfg.seed,
                          progress=False)
    if args.val_pose_topic:          # recorded poses on the validation bags only (the training bags may have none)
        val_cfg = dataclasses.replace(cfg.data, bags=cfg.data.val_bags, pose_topic=args.val_pose_topic)
        data_val = build_datasets(val_cfg, trainer.preset.width, trainer.preset.height, Path(args.cache), cfg.seed,
                                  progress=False).val
    else:
        data_val = data.val
    val = torch.utils.data.Subset(data_val, spread_indices(len(data.val), args.val_triplets).tolist())
    t0 = time.perf_counter()
    parallaxes = [cfg.data.target_parallax_px] + [px for px in args.train_parallax
                                                  if px != cfg.data.target_parallax_px]
    train_sets = [data.train] + [
        build_datasets(dataclasses.replace(cfg.data, target_parallax_px=px), trainer.preset.width,
                       trainer.preset.height, Path(args.cache), cfg.seed, progress=False).train
        for px in parallaxes[1:]]
    distinct = len({t for d in train_sets for t in d.triplets})
    train_batches = [b for d in train_sets for b in cached_targets(trainer, d, cfg.optim.batch_size)]
    val_batches = cached_targets(trainer, val, cfg.optim.batch_size)
    if args.one_batch:                        # fitting, not generalising: the validation rows score that batch
        train_batches = val_batches = train_batches[:1]
    print(f"refined {sum(len(d) for d in train_sets)} training ({distinct} distinct, target parallax "
          f"{parallaxes} px) and {len(val)} validation triplets in "
          f"{time.perf_counter() - t0:.0f} s")
    refined = photometric(trainer, val_batches, lambda b: b["refined"])
    start = photometric(trainer, val_batches, lambda b: b["start"])
    print(f"validation photometric: refined {refined:.4f}, start (image rotation) {start:.4f}")
    rot_refined, dir_refined = pose_error_deg(val_batches, lambda b: b["refined"])
    print(f"validation rotation / translation-direction error (deg): refined {rot_refined:.3f} / {dir_refined:.1f}, "
          f"start {pose_error_deg(val_batches, lambda b: b['start'])[0]:.3f} / - (no translation)")
    if args.val_pose_topic:
        # the ceiling of any PoseNet: the true poses, their translation at the depth network's scale (the best of a
        # grid of metres-per-unit, which favours the truth), scored as PoseNet's poses are
        grid = [2 ** (k / 8) for k in range(-16, 17)]
        scored = [(photometric(trainer, val_batches, recorded_poses(g)), g) for g in grid]
        best, scale = min(scored)
        print(f"validation photometric: recorded poses {best:.4f} ({best / refined:.2f} x refined) at "
              f"{scale:.3f} m per model unit (best of {grid[0]:.2f}..{grid[-1]:.2f})")
        print("how precise a pose must be: the recorded poses perturbed, photometric / refined")
        print("| perturbation | photometric / refined |")
        print("|---|---|")
        for name, kw in [("rotation 0.05 deg", dict(rotation_deg=0.05)), ("rotation 0.1 deg", dict(rotation_deg=0.1)),
                         ("rotation 0.25 deg", dict(rotation_deg=0.25)), ("rotation 0.5 deg", dict(rotation_deg=0.5)),
                         ("translation x 0.8", dict(translation_factor=0.8)),
                         ("translation x 0.5", dict(translation_factor=0.5)),
                         ("translation direction 5 deg", dict(direction_deg=5.0)),
                         ("translation direction 20 deg", dict(direction_deg=20.0))]:
            got = photometric(trainer, val_batches, perturbed(recorded_poses(scale), **kw))
            print(f"| {name} | {got / refined:.2f} |", flush=True)
    train_probe = train_batches[::max(1, len(train_batches) // 8)]
    train_refined = photometric(trainer, train_probe, lambda b: b["refined"])
    initial = copy.deepcopy(trainer.pose_net.state_dict())
    print("| translation_scaling | PoseNet lr factor | epoch | train distillation | train PoseNet / refined | "
          "val photometric PoseNet | val PoseNet / refined | val PoseNet rotation error (deg) | "
          "val PoseNet translation-direction error (deg) | val PoseNet rotation + refined translation / refined | "
          "val refined rotation + PoseNet translation / refined |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting, scaling, factor, flags in settings:
        residual = bool({"residual", "residual0"} & set(flags))
        both = "both" in flags           # trained on the time-reversed pairs as well (same targets)
        symmetric = "sym" in flags       # scored by the mean of the forward and the time-reversed estimates
        derotated = residual and "derot" in flags
        rotation_weight = float(next((f[3:] for f in flags if f.startswith("rot")), 1.0))
        gain = float(next((f[4:] for f in flags if f.startswith("gain")), 1.0))
        pose_net = trainer.pose_net
        pose_net.load_state_dict(initial)
        if "residual0" in flags:       # the output layer zeroed: epoch 0 is exactly the start (image rotation)
            zero_output_layer(pose_net)

        def training_mode() -> None:
            pose_net.train()
            if "bnfrozen" in flags:
                for m in pose_net.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
        training_mode()
        opt = torch.optim.Adam(pose_net.parameters(), lr=cfg.optim.lr * float(factor))
        # ``cos``: the learning rate decays to zero over the run (cosine), so the last epochs settle
        decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs * len(train_batches)))
                 if "cos" in flags else None)
        for epoch in range(0, args.epochs + 1):
            losses = []
            forward = posenet_poses(pose_net, scaling, residual, derotated)
            backward = posenet_poses(pose_net, scaling, residual, time_reversed=True)
            scored = posenet_poses(pose_net, scaling, residual, derotated, rotation_gain=gain)
            ours = chordal_mean(scored, backward) if symmetric else scored
            for b in train_batches if epoch > 0 else []:      # epoch 0: the checkpoint's PoseNet as it is
                loss = pose_distillation(forward(b), b["refined"], b["depth"], rotation_weight)
                if both:
                    loss = loss + pose_distillation(backward(b), b["refined"], b["depth"], rotation_weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if decay is not None:
                    decay.step()
                losses.append(float(loss.detach()))
            if epoch in (0, 1, args.epochs) or epoch % max(1, args.epochs // 4) == 0:
                pose_net.eval()
                got = photometric(trainer, val_batches, ours)
                on_train = photometric(trainer, train_probe, ours)
                rot, direction = pose_error_deg(val_batches, ours)
                its_rotation = photometric(trainer, val_batches, mixed(ours, lambda b: b["refined"]))
                its_translation = photometric(trainer, val_batches, mixed(lambda b: b["refined"], ours))
                training_mode()
                print(f"| {setting} | {factor} | {epoch} | {sum(losses) / max(1, len(losses)):.4f} | "
                      f"{on_train / train_refined:.2f} | {got:.4f} | {got / refined:.2f} | {rot:.3f} | {direction:.1f} | "
                      f"{its_rotation / refined:.2f} | {its_translation / refined:.2f} |", flush=True)


if __name__ == "__main__":
    main()
