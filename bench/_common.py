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
