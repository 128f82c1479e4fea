"""Training steps per second on this machine for the small and the ResNet-50 presets (synthetic batch), and what
the direct pose refinement costs against a plain step (PoseNet's poses, no refinement), side by side.

    python bench/train.py [--batch 4] [--steps 5] [--recipes plain adam20 default finetune]

Recipes: ``plain`` (pose.init posenet, no refinement), ``adam20`` (image rotation start, 20 Adam steps: the
2026-12-01 hand-held recipe), ``default`` (config/train.yaml's pose section: image rotation or PoseNet start,
Levenberg-Marquardt 5 iterations x 3 levels), ``finetune`` (the same from ``--init``'s weights: the default scale
anchor then adds a forward of the starting weights per step).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from spidepth_ros.training.config import config_from_dict  # noqa: E402
from spidepth_ros.training.trainer import Trainer  # noqa: E402
from spidepth_ros.presets import get_preset  # noqa: E402


def batch(p, b):
    k = torch.tensor([[0.58 * p.width, 0, 0.5 * p.width, 0], [0, 1.92 * p.height, 0.5 * p.height, 0],
                      [0, 0, 1, 0], [0, 0, 0, 1]])
    imgs = {n: torch.rand(b, 3, p.height, p.width) for n in ("prev", "target", "next")}
    imgs.update({f"{n}_aug": v for n, v in list(imgs.items())})
    imgs.update(K=k.expand(b, 4, 4).clone(), inv_K=torch.linalg.inv(k).expand(b, 4, 4).clone(),
                index=torch.arange(b), image_rotation=torch.eye(3).expand(b, 2, 3, 3).clone(),
                rotation_measured=torch.ones(b, 2, dtype=torch.bool))
    return imgs


def recipes() -> dict:
    """name -> the ``pose`` section it trains with (the rest of the config is the same)."""
    from spidepth_ros.training.config import load_config

    default = load_config(Path(__file__).resolve().parents[1] / "config" / "train.yaml").to_dict()["pose"]
    return {"plain": {"init": "posenet", "refine_steps": 0},
            "adam20": {"init": "image_rotation", "refine_method": "adam", "refine_steps": 20},
            "default": default, "finetune": default}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="*", default=["small_r18_96x320", "resnet50_192x640"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--recipes", nargs="*", default=["plain", "adam20", "default"],
                    help="pose recipes to time per preset; the first is the reference of the ratio")
    ap.add_argument("--init", default=str(Path(__file__).resolve().parents[1] / "models" / "demo_small.pt"),
                    help="model.init of the finetune recipe (weights of the preset timed)")
    args = ap.parse_args()
    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in args.presets:
        b = batch(get_preset(name), args.batch)
        reference = None
        for recipe in args.recipes:
            model = {"preset": name, **({"init": args.init} if recipe == "finetune" else {})}
            cfg = config_from_dict({"model": model, "optim": {"batch_size": args.batch}, "pose": recipes()[recipe]})
            torch.manual_seed(0)
            trainer = Trainer(cfg, torch.device("cpu"))
            trainer.train_step(b)                                   # warm-up
            t = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(b)
            dt = (time.perf_counter() - t) / args.steps
            reference = reference or dt
            print(f"  {name:20s} {recipe:8s}: {1 / dt:6.3f} steps/s ({dt:6.2f} s/step, "
                  f"{args.batch / dt:6.2f} images/s, {dt / reference:5.2f}x the time of {args.recipes[0]})")


if __name__ == "__main__":
    main()
