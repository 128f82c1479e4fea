"""Per-frame work of the depth node, without rclpy: inference, units, range limits, cloud, colour.

The node feeds RGB frames and the camera's pinhole model; this returns everything it publishes as arrays.
Keeping it here lets the benchmark time the node's own work and lets tests check it without DDS.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .cloud import CloudBuffer, CloudBuilder
from .colorize import colorize_depth
from .geometry import PinholeIntrinsics
from .runtime.base import DepthEstimator


@dataclass
class FrameOutputs:
    depth: np.ndarray                          # [h, w] float32 metres, NaN invalid (REP 118)
    intrinsics: Optional[PinholeIntrinsics]    # pinhole model of ``depth``; None without camera_info
    cloud: Optional[CloudBuffer] = None
    colored: Optional[np.ndarray] = None       # [h, w, 3] uint8 BGR
    timings_ms: dict = field(default_factory=dict)


class DepthPipeline:
    def __init__(self, estimator: DepthEstimator, resolution: str = "network") -> None:
        self.estimator = estimator
        self.resolution = resolution
        self.cloud_builder = CloudBuilder()

    def process(self, rgb: np.ndarray, camera: Optional[PinholeIntrinsics], depth_scale: float = 1.0,
                min_range: float = 0.0, max_range: float = float("inf"), want_cloud: bool = True,
                cloud_stride: int = 1, cloud_color: bool = True, want_colored: bool = True) -> FrameOutputs:
        """``rgb`` [H, W, 3] uint8; ``camera`` is the pinhole model of ``rgb`` (its size must match)."""
        import cv2

        t0 = time.perf_counter()
        result = self.estimator.infer(rgb, self.resolution)
        t1 = time.perf_counter()
        depth = result.depth
        if depth_scale != 1.0:
            depth *= np.float32(depth_scale)
        depth[(depth < min_range) | (depth > max_range)] = np.nan
        h, w = depth.shape
        intr = None
        if camera is not None:
            if self.resolution == "input":
                intr = camera
            else:
                intr = self.estimator.preprocessor.output_intrinsics(camera, w, h)
        out = FrameOutputs(depth, intr)
        t2 = time.perf_counter()
        colour_source = None
        if (want_cloud and cloud_color and intr is not None) or want_colored:
            if self.resolution == "input":
                colour_source = rgb
            else:
                # from the network-size image the pre-processing already made (2x area average), not from the
                # full camera image again: a quarter of the node's own work at 640x480 otherwise
                colour_source = cv2.resize(result.prepared.resized, (w, h), interpolation=cv2.INTER_AREA)
        if want_cloud and intr is not None:
            out.cloud = self.cloud_builder.build(depth, intr, cloud_stride, colour_source if cloud_color else None)
        t3 = time.perf_counter()
        if want_colored:
            out.colored = colorize_depth(depth, min_range if min_range > 0 else None)
        t4 = time.perf_counter()
        out.timings_ms = {"preprocess": result.preprocess_ms, "inference": result.inference_ms,
                          "postprocess": (t1 - t0) * 1e3 - result.preprocess_ms - result.inference_ms +
                          (t2 - t1) * 1e3, "cloud": (t3 - t2) * 1e3, "colorize": (t4 - t3) * 1e3}
        return out
