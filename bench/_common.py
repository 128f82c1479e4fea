"""Shared helpers for the bench scripts (timing with warm-up, machine description)."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def time_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def p50_p95(samples: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def random_small_onnx(folder, dynamic_batch: bool = False):
    """The small preset with random weights (seed 0), exported to ``folder/small.onnx`` (+ sidecar)."""
    from pathlib import Path

    import torch

    from spidepth_ros.checkpoint import save_checkpoint
    from spidepth_ros.export import export_onnx
    from spidepth_ros.models import build_depth_net
    from spidepth_ros.presets import get_preset

    folder = Path(folder)
    torch.manual_seed(0)
    preset = get_preset("small_r18_96x320")
    save_checkpoint(folder / "small.pt", preset, build_depth_net(preset).eval())
    onnx_path, _ = export_onnx(folder / "small.pt", folder / "small.onnx", dynamic_batch=dynamic_batch,
                               max_batch=4 if dynamic_batch else 1)
    return onnx_path


def add_replay_arguments(parser, default_model: str) -> None:
    """The arguments of the adaptation benches: a training bag to loop, a held-out bag with depth truth."""
    from pathlib import Path

    parser.add_argument("--model", default=default_model)
    parser.add_argument("--train-bag", type=Path, required=True)
    parser.add_argument("--test-bag", type=Path, required=True)
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--info-topic", default="/camera/camera_info")
    parser.add_argument("--depth-topic", default="/camera/depth")
    parser.add_argument("--max-depth", type=float, default=10.0)


def load_replay(args):
    """``(train, test, truth, calibration)``: the training bag's ``(stamp_ns, rgb)`` frames, the held-out bag's,
    the depth truth matched to each held-out frame (metres, within 20 ms), and the training bag's CameraInfo."""
    from spidepth_ros.bagio import iter_images, read_camera_info
    from spidepth_ros.training.evaluate import load_ground_truth, match_stamp

    train = list(iter_images([args.train_bag], args.image_topic))
    test = list(iter_images([args.test_bag], args.image_topic))
    by_stamp = load_ground_truth([args.test_bag], args.depth_topic)
    stamps = np.array(sorted(by_stamp))
    truth = [by_stamp[match_stamp(s, stamps, 20_000_000)] for s, _ in test]
    return train, test, truth, read_camera_info([args.train_bag], args.info_topic)
