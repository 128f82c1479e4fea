"""Training steps per second on this machine for the small and the ResNet-50 presets (synthetic batch), and what
the direct pose refinement (``pose.refine_steps``, docs/real_data.md) costs against no refinement, side by side.

    python bench/train.py [--batch 4] [--steps 5] [--refine-steps 0 5 20]
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
                index=torch.arange(b))
    return imgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="*", default=["small_r18_96x320", "resnet50_192x640"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--refine-steps", type=int, nargs="*", default=[0],
                    help="pose.refine_steps values to time per preset; the first is the reference of the ratio")
    args = ap.parse_args()
    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in args.presets:
        b = batch(get_preset(name), args.batch)
        reference = None
        for refine in args.refine_steps:
            cfg = config_from_dict({"model": {"preset": name}, "optim": {"batch_size": args.batch},
                                    "pose": {"refine_steps": refine}})
            torch.manual_seed(0)
            trainer = Trainer(cfg, torch.device("cpu"))
            trainer.train_step(b)                                   # warm-up
            t = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(b)
            dt = (time.perf_counter() - t) / args.steps
            reference = reference or dt
            print(f"  {name:20s} refine_steps {refine:3d}: {1 / dt:6.3f} steps/s ({dt:6.2f} s/step, "
                  f"{args.batch / dt:6.2f} images/s, {dt / reference:5.2f}x the time of refine_steps "
                  f"{args.refine_steps[0]})")


if __name__ == "__main__":
    main()
