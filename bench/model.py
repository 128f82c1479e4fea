"""Parameters, MACs and CPU forward latency per preset (MACs counted on the meta device: no memory).

    python bench/model.py [--latency-presets small_r18_96x320 resnet50_192x640]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, p50_p95, time_ms  # noqa: E402

from spidepth_ros.models import build_depth_net, build_pose_net  # noqa: E402
from spidepth_ros.presets import PRESETS  # noqa: E402


def macs(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model(torch.empty(shape))
    return counter.get_total_flops() / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency-presets", nargs="*", default=["small_r18_96x320", "resnet50_192x640"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}, torch {torch.__version__}, {args.threads} threads\n")
    print(f"{'preset':20s} {'input':>9s} {'DepthNet M':>11s} {'PoseNet M':>10s} {'GMAC depth':>11s} "
          f"{'GMAC pose':>10s} {'CPU p50 ms':>11s} {'p95 ms':>8s}")
    for name, p in PRESETS.items():
        with torch.device("meta"):
            depth, pose = build_depth_net(p).eval(), build_pose_net(p).eval()
        n_depth = sum(t.numel() for t in depth.parameters()) / 1e6
        n_pose = sum(t.numel() for t in pose.parameters()) / 1e6
        g_depth = macs(depth, (1, 3, p.height, p.width)) / 1e9
        g_pose = macs(pose, (1, 6, p.height, p.width)) / 1e9
        lat = ""
        if name in args.latency_presets:
            real = build_depth_net(p).eval()
            x = torch.rand(1, 3, p.height, p.width)
            with torch.inference_mode():
                p50, p95 = p50_p95(time_ms(lambda: real(x), repeats=10, warmup=2))
            lat = f"{p50:11.1f} {p95:8.1f}"
        print(f"{name:20s} {p.width:>4d}x{p.height:<4d} {n_depth:11.2f} {n_pose:10.2f} {g_depth:11.2f} {g_pose:10.2f} "
              f"{lat}")


if __name__ == "__main__":
    main()
