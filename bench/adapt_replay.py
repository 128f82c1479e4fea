"""Does the node's adaptation help? A recording played into depth_node over DDS, with and without ``adapt``.

For each setting the node runs as a process (torch backend, CPU, reliable input QoS); the training bag is played
in a loop for ``--minutes`` (a robot working in the same rooms), then the held-out bag once. Each frame is sent
when the previous one's depth came back, so the rate is the node's throughput. Prints per setting: the
median-scaled AbsRel of the published depth on the held-out bag (and unscaled with the node's own scale), the
throughput while adapting against the non-adapting run, and the node's adaptation diagnostics.

    python bench/adapt_replay.py --model models/demo_small.pt --train-bag data/real/rs_train \
        --test-bag data/real/rs_val --minutes 10 --max-depth 10
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO / "bench"))
from _common import add_replay_arguments, load_replay  # noqa: E402


def play(args, adapt: bool, frames_train, frames_test, info, gt) -> dict:
    import dataclasses

    import rclpy

    from rosutil import CameraFeed
    from spidepth_ros.metrics import EvalSettings, evaluate_frame, summarize

    ns = "replay_adapt" if adapt else "replay_plain"
    qos = [a for t in ("image", "camera_info")
           for a in ("-p", f"qos_overrides./{ns}/{t}.subscription.reliability:=reliable")]
    out_dir = Path(tempfile.mkdtemp(prefix="adapt_replay_"))
    cmd = [sys.executable, "-m", "spidepth_ros.ros.depth_node", "--ros-args", "-r", f"__ns:=/{ns}",
           "-p", f"model_path:={args.model}", "-p", "backend:=torch", "-p", "device:=cpu",
           "-p", f"adapt:={'true' if adapt else 'false'}", "-p", f"adapt_dir:={out_dir}",
           "-p", f"adapt_max_share:={args.share}", "-p", "diagnostics_period:=1.0", "-p", "max_range:=1000.0", *qos]
    node_log = out_dir / "node.log"          # the guard's verdicts are logged there, one line each
    proc = subprocess.Popen(cmd, stdout=open(node_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    feed = CameraFeed(context, ns, "replayer")
    count = [0]

    def send(rgb: np.ndarray) -> int:
        sec = 10_000 + count[0]
        count[0] += 1
        if not feed.send(sec, rgb, info, timeout=120):
            raise RuntimeError(f"frame {sec} not published")
        return sec

    try:
        if not feed.matched(120):
            raise RuntimeError("the node did not subscribe")
        send(frames_train[0])                       # model loaded, first inference done
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < args.minutes * 60:
            for rgb in frames_train:
                send(rgb)
                sent += 1
                if time.monotonic() - start >= args.minutes * 60:
                    break
        rate = sent / (time.monotonic() - start)
        time.sleep(2.0)                             # the last accepted model swapped in
        keys = [send(rgb) for rgb in frames_test]
        settings = EvalSettings(max_depth=args.max_depth)
        scaled, unscaled = [], []
        for key, truth in zip(keys, gt):
            msg = feed.depth[key]
            pred = np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)
            pred = np.where(np.isfinite(pred), pred, 0.0).astype(np.float32)
            row = evaluate_frame(truth, pred, settings)
            row_raw = evaluate_frame(truth, pred, dataclasses.replace(settings, median_scaling=False))
            if row is not None:
                scaled.append(row)
            if row_raw is not None:
                unscaled.append(row_raw)
        values = feed.values()
        verdicts = [line.split("adaptation: ", 1)[1].strip() for line in node_log.read_text().splitlines()
                    if "adaptation: candidate" in line]
        return {"verdicts": verdicts, "abs_rel": summarize(scaled)["abs_rel"],
                "abs_rel_node_scale": summarize(unscaled)["abs_rel"],
                "scale_median": summarize(scaled)["scale_median"], "const_abs_rel": summarize(scaled)["const_abs_rel"],
                "rate_hz": rate, "frames_looped": sent, "diagnostics": {k: v for k, v in values.items()
                                                                     if k.startswith("adapt") or k == "model"}}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        feed.close()
        rclpy.shutdown(context=context)
        shutil.rmtree(out_dir, ignore_errors=True)   # the adapted models (~100 MB each), read above


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_replay_arguments(p, str(REPO / "models" / "demo_small.pt"))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--share", type=float, default=0.5)
    p.add_argument("--settings", nargs="+", default=["false", "true"], help="adapt values to run, in order")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the settings this many times, alternating (the machine's own drift averages out)")
    args = p.parse_args()
    from rosutil import camera_info_msg

    train, test, gt, calib = load_replay(args)
    train = [rgb for _, rgb in train]
    info = camera_info_msg(calib.intrinsics.matrix(), calib.intrinsics.width, calib.intrinsics.height)
    print(f"{len(train)} training frames looped for {args.minutes} min, then {len(test)} held-out frames")
    runs: list[tuple[str, dict]] = []
    for repeat in range(args.repeats):
        for setting in args.settings:
            result = play(args, setting == "true", train, [rgb for _, rgb in test], info, gt)
            verdicts = result.pop("verdicts")
            runs.append((setting, result))
            print(f"run {repeat + 1}, adapt {setting}: {result}", flush=True)
            for line in verdicts:
                print(f"  guard: {line}")
    if {"true", "false"} <= {name for name, _ in runs}:
        print("| run | adapt | held-out AbsRel (median-scaled) | with the node's scale | frames/s while looping |")
        print("|---|---|---|---|---|")
        for i, (name, r) in enumerate(runs):
            print(f"| {i // len(args.settings) + 1} | {name} | {r['abs_rel']:.4f} | {r['abs_rel_node_scale']:.4f} "
                  f"| {r['rate_hz']:.2f} |")
        a = [r for name, r in runs if name == "true"]
        b = [r for name, r in runs if name == "false"]
        ratios = [x["rate_hz"] / y["rate_hz"] for x, y in zip(a, b)]       # each repeat's pair, side by side
        print(f"AbsRel change {np.mean([x['abs_rel'] for x in a]) / np.mean([y['abs_rel'] for y in b]) - 1:+.1%} "
              f"(means); rate while adapting {', '.join(f'{r:.2f}x' for r in ratios)} the non-adapting rate "
              f"(median {np.median(ratios):.2f}x); constant depth {b[0]['const_abs_rel']:.4f}")


if __name__ == "__main__":
    main()
