"""Pose refinement fed the truth: Levenberg-Marquardt (the default) against 20 Adam steps, on rendered sequences
whose depth and poses are known, with the time each took, side by side.

    python bench/refine_oracle.py [--iterations 5] [--levels 3] [--stiffness 0.03]

1. From the TRUE rotation and no translation (true depth): forward driving at offset 2 and a slow, turning
   camera at offset 3; median / max relative translation error.
2. From the rotation MEASURED from the images (the trainer's start) on a 30-frame turning sequence: rotation and
   translation-direction error, with the true depth and with a flat one (where a free rotation drifts).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from spidepth_ros.synth import SynthConfig, render_sequence, write_bag  # noqa: E402
from spidepth_ros.training.data import TripletDataset, load_frames  # noqa: E402
from spidepth_ros.training.diagnostics import pose_errors  # noqa: E402
from spidepth_ros.training.pose_refine import refine_transforms, refine_transforms_lm  # noqa: E402


def image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def intrinsics(cfg: SynthConfig) -> torch.Tensor:
    k = torch.eye(4)[None]
    k[0, :3, :3] = torch.from_numpy(cfg.intrinsics.matrix()).float()
    return k


def from_true_rotation(cfg: SynthConfig, centres, offset: int, args) -> None:
    frames = list(render_sequence(cfg))
    k = intrinsics(cfg)
    errors = {"lm": [], "adam": []}
    seconds = {"lm": 0.0, "adam": 0.0}
    for c in centres:
        target, sources = frames[c], (c - offset, c + offset)
        true = [np.linalg.inv(frames[i].world_T_cam) @ target.world_T_cam for i in sources]
        starts = []
        for t in true:
            start = np.eye(4)
            start[:3, :3] = t[:3, :3]
            starts.append(torch.from_numpy(start)[None].float())
        depth = torch.from_numpy(np.clip(target.depth, 0.1, 80.0))[None, None].float()
        images = [image(frames[i].rgb) for i in sources]
        t0 = time.perf_counter()
        adam = refine_transforms(depth, image(target.rgb), images, starts, k, torch.linalg.inv(k), 20, 0.005,
                                 0.002).transforms
        seconds["adam"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        lm = refine_transforms_lm(depth, image(target.rgb), images, [[s] for s in starts], k, args.iterations,
                                  args.levels, args.stiffness).transforms
        seconds["lm"] += time.perf_counter() - t0
        for name, got in (("adam", adam), ("lm", lm)):
            errors[name] += [np.linalg.norm(g[0, :3, 3].numpy() - w[:3, 3]) / np.linalg.norm(w[:3, 3])
                             for g, w in zip(got, true)]
    for name in ("lm", "adam"):
        print(f"    {name:5s} relative translation error median {np.median(errors[name]):.3f} max "
              f"{np.max(errors[name]):.3f}   {seconds[name]:.2f} s ({seconds[name] / seconds['adam']:.2f}x Adam)")


def from_measured_rotation(args) -> None:
    cfg = SynthConfig(frames=30, seed=4, width=320, height=96, speed=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        bag = write_bag(cfg, Path(tmp) / "bag", progress=False)
        store = load_frames(bag, "/camera/image_raw", "/camera/camera_info", 320, 96, Path(tmp) / "cache",
                            progress=False, max_offset=6)
    frames = list(render_sequence(cfg))
    triplets = [(0, t - 3, t, t + 3) for t in range(4, 26, 3)]
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset([store], triplets, 320, 96, augment=False),
                                                  batch_size=len(triplets))))
    depth = torch.stack([torch.from_numpy(np.clip(frames[t].depth, 0.1, 80.0))[None]
                         for _, _, t, _ in triplets]).float()
    true = [torch.tensor(np.stack([np.linalg.inv(frames[tr[1 + 2 * i]].world_T_cam) @ frames[tr[2]].world_T_cam
                                   for tr in triplets]), dtype=torch.float32) for i in range(2)]
    starts = []
    for i in range(2):
        start = torch.eye(4).repeat(len(triplets), 1, 1)
        start[:, :3, :3] = batch["image_rotation"][:, i]
        starts.append(start)
    sources = [batch["prev"], batch["next"]]

    def report(name: str, transforms) -> None:
        rotation, direction = zip(*(pose_errors(e, t) for e, t in zip(transforms, true)))
        rotation, direction = torch.cat(rotation), torch.cat(direction)
        direction_text = (f"direction error median {direction.nanmedian():5.1f} deg max {direction.max():5.1f}"
                          if torch.isfinite(direction).any() else "no translation")
        print(f"    {name:32s} rotation error median {rotation.median():.3f} deg, {direction_text}")

    report("start (measured rotation)", starts)
    flat = depth.median() * torch.ones_like(depth)
    for label, d in (("true depth", depth), ("flat depth", flat)):
        for stiffness in (0.0, args.stiffness):
            found = refine_transforms_lm(d, batch["target"], sources, [[s] for s in starts], batch["K"],
                                         args.iterations, args.levels, stiffness)
            report(f"lm, stiffness {stiffness:g}, {label}", found.transforms)
    adam = refine_transforms(depth, batch["target"], sources, starts, batch["K"], batch["inv_K"], 20, 0.004, 0.002)
    report("adam 20 steps, true depth", adam.transforms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--stiffness", type=float, default=0.03)
    args = ap.parse_args()
    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"LM {args.iterations} iterations x {args.levels} levels, rotation stiffness {args.stiffness:g}")
    print("1. from the true rotation, true depth")
    print("  forward driving, offset 2 (0.8 m)")
    from_true_rotation(SynthConfig(width=320, height=96, frames=26, seed=7), (5, 10, 15, 20), 2, args)
    print("  slow turning camera, offset 3 (0.3 m)")
    from_true_rotation(SynthConfig(width=320, height=96, frames=26, seed=4, speed=1.0), (5, 10, 15, 20), 3, args)
    print("2. from the rotation measured from the images, 16 pairs of a turning sequence at offset 3")
    from_measured_rotation(args)


if __name__ == "__main__":
    main()
