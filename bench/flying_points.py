"""Flying points in the published cloud, before and after the edge filter, on synthetic scenes (exact geometry).

    python bench/flying_points.py [--frames 30] [--thresholds 0.05 0.1 0.15 0.2 0.3] [--checkpoint models/demo_small.pt]

A point is *off-surface* when it lies farther than 5 % of its depth from every true surface point within 2
pixels (:func:`spidepth_ros.metrics.off_surface_mask`). Two depth maps per frame of a synthetic drive (seed 200,
320x96, never used for training):

* **exact geometry + veil**: the true depth area-averaged to the network's output size (160x48) and upsampled
  back with bilinear interpolation, as the node's ``output_resolution: input`` does: every occlusion edge gets
  the interpolated veil, everything else is exact. This is what the filter is for, and the acceptance numbers.
* **exact geometry at the network's output size (160x48)**: the depth the node publishes by default
  (``output_resolution: network``): the true 320x96 depth area-averaged to 160x48, against the scene rendered
  exactly at 160x48. Each pixel spans twice the angle, so surfaces seen at a grazing angle (the far floor) jump
  as much between pixels as a veil does: the same threshold drops more good points here.
* **model**: the checkpoint's prediction at the input size, median-scaled to the truth per frame. Most of its
  off-surface points are the model's own depth error (not flying pixels), which no edge filter removes.

For each ``edge_filter`` threshold: the off-surface share of the published points, the share of off-surface
points the filter removed, and the share of on-surface points it kept.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def tally(pairs, threshold: float) -> tuple[float, float, float, float]:
    """(off share before, off share after, off removed, on kept) over (depth, truth, intrinsics) pairs."""
    from spidepth_ros.depth_filters import flying_pixel_mask
    from spidepth_ros.metrics import off_surface_mask

    off_b = off_a = on_b = on_a = 0
    for depth, gt, intr in pairs:
        off = off_surface_mask(depth, gt, intr)
        valid = np.isfinite(depth)
        kept = valid & ~flying_pixel_mask(depth, threshold) if threshold > 0 else valid
        off_b += off.sum()
        off_a += (off & kept).sum()
        on_b += (valid & ~off).sum()
        on_a += (kept & ~off).sum()
    return off_b / (off_b + on_b), off_a / max(1, off_a + on_a), 1 - off_a / off_b, on_a / on_b


def main() -> None:
    import cv2

    from spidepth_ros.synth import SynthConfig, render_sequence

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3])
    ap.add_argument("--max-range", type=float, default=80.0, help="metres: farther points are not published")
    ap.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parent.parent / "models" /
                    "demo_small.pt")
    args = ap.parse_args()
    cfg = SynthConfig(width=320, height=96, frames=args.frames, seed=200)
    frames = list(render_sequence(cfg))
    small_cfg = SynthConfig(width=160, height=48, frames=args.frames, seed=200)
    network_pairs = []
    for f, small in zip(frames, render_sequence(small_cfg)):
        area = cv2.resize(f.depth.astype(np.float32), (160, 48), interpolation=cv2.INTER_AREA)
        area[area > args.max_range] = np.nan
        network_pairs.append((area, small.depth.astype(np.float32), small_cfg.intrinsics))
    veil_pairs, model_pairs = [], []
    from spidepth_ros.runtime.torch_backend import TorchDepthEstimator

    with TorchDepthEstimator(args.checkpoint, "cpu") as est:
        for f in frames:
            gt = f.depth.astype(np.float32)
            veil = cv2.resize(cv2.resize(gt, (160, 48), interpolation=cv2.INTER_AREA), (320, 96),
                              interpolation=cv2.INTER_LINEAR)
            veil[veil > args.max_range] = np.nan
            veil_pairs.append((veil, gt, cfg.intrinsics))
            pred = est.infer(f.rgb, "input").depth
            ok = np.isfinite(gt) & (gt < 80)
            pred = pred * np.median(gt[ok]) / np.median(pred[ok])
            pred[pred > args.max_range] = np.nan
            model_pairs.append((pred, gt, cfg.intrinsics))
    print(f"# {machine()}; synthetic drive seed 200, {args.frames} frames 320x96; model {args.checkpoint.name}; "
          f"max_range {args.max_range:g} m")
    print("| depth | edge_filter | off-surface share before | after | off-surface removed | on-surface kept |")
    print("|---|---|---|---|---|---|")
    for name, pairs in (("exact geometry + veil", veil_pairs), ("exact geometry at 160x48", network_pairs),
                        ("model (median-scaled)", model_pairs)):
        for t in args.thresholds:
            before, after, removed, kept = tally(pairs, t)
            print(f"| {name} | {t:g} | {100 * before:.2f} % | {100 * after:.2f} % | {100 * removed:.1f} % | "
                  f"{100 * kept:.1f} % |")


if __name__ == "__main__":
    main()
