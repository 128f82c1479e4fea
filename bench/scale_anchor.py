"""How far do the adaptation worker's training steps move each frame's depth scale, with and without the anchor?

The worker (:class:`~spidepth_ros.training.adaptation.Worker`, in-process) is fed a synthetic forward-driving
sequence at the demo preset's size and trained for ``--steps`` steps; before and after, the mean log depth of
its scale keyframes is measured in eval mode (as the node publishes) and in train mode (as the loss sees it).
Prints, per anchor weight, the median |change| over the keyframes (log units: 0.1 is a 10.5 % change).

    python bench/scale_anchor.py --anchors 0 1 10 --learning-rates 1e-4 3e-4 --steps 20
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shifts(settings, frames, steps: int) -> tuple[float, float, float]:
    """(median |eval-mode change|, mean eval-mode change, median |train-mode change|) of the keyframes' mean log
    depth after ``steps`` training steps."""
    import torch

    from spidepth_ros.training.adaptation import Worker, evaluating
    from spidepth_ros.training.losses import mean_log_depth

    worker = Worker(settings)
    for frame in frames:
        worker.offer(frame.rgb, frame.stamp_ns)
    net, images = worker.trainer.depth_net, worker.scale_images()

    def measure(train: bool):
        with (contextlib.nullcontext(net) if train else evaluating(net)), torch.no_grad():
            return mean_log_depth(worker.trainer.predict_depth(images))

    eval_before, train_before = measure(False), measure(True)
    while worker.steps < steps:
        worker.train_step()
    eval_change, train_change = measure(False) - eval_before, measure(True) - train_before
    return float(eval_change.abs().median()), float(eval_change.mean()), float(train_change.abs().median())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(REPO / "models" / "demo_small.pt"))
    p.add_argument("--anchors", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    p.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=24, help="synthetic frames offered to the keyframe buffer")
    args = p.parse_args()

    from spidepth_ros.synth import SynthConfig, render_sequence
    from spidepth_ros.training.adaptation import AdaptSettings

    drive = SynthConfig(width=320, height=96, frames=args.frames, seed=11, speed=4.0)   # the demo preset's size
    frames = list(render_sequence(drive))
    k = tuple(map(tuple, drive.intrinsics.normalized().tolist()))
    print(f"{len(frames)} synthetic frames, {args.steps} steps, batch 2, 2 threads")
    print("| learning rate | anchor weight | eval mode: median abs change | mean change | train mode: median abs change |")
    print("|---|---|---|---|---|")
    for lr in args.learning_rates:
        for anchor in args.anchors:
            with tempfile.TemporaryDirectory(prefix="scale_anchor_") as out:
                settings = AdaptSettings(model_path=args.model, out_dir=out, width=drive.width, height=drive.height,
                                         k_normalized=k, threads=2, batch_size=2, min_train_triplets=2,
                                         learning_rate=lr, scale_anchor=anchor)
                eval_abs, eval_mean, train_abs = shifts(settings, frames, args.steps)
            print(f"| {lr:g} | {anchor:g} | {eval_abs:.3f} | {eval_mean:+.3f} | {train_abs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
