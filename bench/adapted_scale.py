"""How far did adapted models move the published scale? Per-frame median depth of each model against the first.

For every ``--every``-th frame of the bag's image topic each model's published depth (network output x its
``depth_scale``, torch backend, CPU) is reduced to its median; printed per model: the median over frames of the
ratio to the first model, for the published depth and for the network alone, and the spread (p5/p95) of the
network's per-frame ratio, which is what a guard measuring the change on a few frames samples from.

    python bench/adapted_scale.py --bag data/real/rs_train --models models/demo_small.pt adapted_0001.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bag", required=True, help="rosbag2 folder with the images")
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--models", nargs="+", required=True, help="model files; the first is the reference")
    parser.add_argument("--every", type=int, default=2, help="use every n-th frame")
    args = parser.parse_args()

    import torch

    from spidepth_ros.bagio import iter_images
    from spidepth_ros.runtime import create_estimator

    torch.set_num_threads(1)
    frames = [rgb for i, (_, rgb) in enumerate(iter_images([Path(args.bag)], args.topic)) if i % args.every == 0]
    raw, scales = [], []
    for model in args.models:
        with create_estimator(model, backend="torch", device="cpu", threads=1, log=lambda _: None) as estimator:
            raw.append(np.array([np.median(estimator.infer(rgb).depth) for rgb in frames]))
            scales.append(estimator.metadata.depth_scale)
    print(f"{args.bag}: {len(frames)} frames; reference {Path(args.models[0]).name} (depth_scale {scales[0]:.4f})")
    print("| model | depth_scale | published / reference (median over frames) | network alone | network p5 - p95 |")
    print("|---|---|---|---|---|")
    for model, r, scale in zip(args.models[1:], raw[1:], scales[1:]):
        ratio = r / raw[0]
        p5, p95 = np.percentile(ratio, [5, 95])
        print(f"| {Path(model).name} | {scale:.4f} | {np.median(ratio) * scale / scales[0]:.3f} | "
              f"{np.median(ratio):.3f} | {p5:.3f} - {p95:.3f} |")


if __name__ == "__main__":
    main()
