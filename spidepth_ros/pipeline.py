"""Per-frame work of the depth node, without rclpy: inference, units, range limits, cloud clean-up, colour.

The node feeds RGB frames and the camera's pinhole model; this returns everything it publishes as arrays.
Keeping it here lets the benchmark time the node's own work and lets tests check it without DDS.

Two steps, so that several cameras share one inference and the scale can be measured in between:
:meth:`DepthPipeline.infer` (one batch for several frames where the backend takes one) and
:meth:`DepthPipeline.finish` (per frame: scale, range, flying pixels, height band, cloud, colour).
:meth:`DepthPipeline.process` does both for one frame.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .cloud import CloudBuffer, CloudBuilder
from .colorize import colorize_depth
from .depth_filters import flying_pixel_mask
from .geometry import PinholeIntrinsics, backproject
from .ground_scale import GroundPlane
from .runtime.base import DepthEstimator, DepthResult


@dataclass(frozen=True)
class CloudOptions:
    """How ``depth/points`` is built from the published depth."""

    stride: int = 1                       # every Nth pixel in x and y
    color: bool = True                    # packed rgb field (point_step 32)
    edge_filter: float = 0.0              # relative depth jump marking a flying pixel; 0 = off
    edge_filter_depth: bool = False       # also NaN flying pixels in depth/image
    min_height: float = float("-inf")     # metres above the floor (used only when the floor is known)
    max_height: float = float("inf")


@dataclass
class FrameOutputs:
    depth: np.ndarray                          # [h, w] float32 metres, NaN invalid (REP 118)
    intrinsics: Optional[PinholeIntrinsics]    # pinhole model of ``depth``; None without camera_info
    cloud: Optional[CloudBuffer] = None
    colored: Optional[np.ndarray] = None       # [h, w, 3] uint8 BGR
    timings_ms: dict = field(default_factory=dict)
    points_dropped: int = 0                    # valid depth pixels left out of the cloud by the filters


class DepthPipeline:
    def __init__(self, estimator: DepthEstimator, resolution: str = "network") -> None:
        self.estimator = estimator
        self.resolution = resolution
        self.cloud_builder = CloudBuilder()

    def infer(self, rgbs: Sequence[np.ndarray]) -> list[DepthResult]:
        """Depth in model units for each ``[H, W, 3]`` uint8 frame (one batch where the backend takes one)."""
        return self.estimator.infer_batch(list(rgbs), self.resolution)

    def depth_intrinsics(self, result: DepthResult, camera: Optional[PinholeIntrinsics]) -> Optional[PinholeIntrinsics]:
        """Pinhole model of ``result.depth`` from the camera's (None without one)."""
        if camera is None:
            return None
        if self.resolution == "input":
            return camera
        h, w = result.depth.shape
        return self.estimator.preprocessor.output_intrinsics(camera, w, h)

    def finish(self, result: DepthResult, rgb: np.ndarray, intr: Optional[PinholeIntrinsics],
               depth_scale: float = 1.0, min_range: float = 0.0, max_range: float = float("inf"),
               want_cloud: bool = True, cloud: CloudOptions = CloudOptions(), want_colored: bool = True,
               floor: Optional[GroundPlane] = None) -> FrameOutputs:
        """Metres, range limits, cloud and colour for one inferred frame.

        ``intr`` is :meth:`depth_intrinsics`; ``floor`` (metres, optical frame) enables the height band.
        ``result.depth`` is scaled in place.
        """
        import cv2

        t1 = time.perf_counter()
        depth = result.depth
        if depth_scale != 1.0:
            depth *= np.float32(depth_scale)
        with np.errstate(invalid="ignore"):
            depth[(depth < min_range) | (depth > max_range)] = np.nan
        h, w = depth.shape
        out = FrameOutputs(depth, intr)
        t2 = time.perf_counter()
        cloud_depth = depth
        if cloud.edge_filter > 0 and (want_cloud or cloud.edge_filter_depth):
            flying = flying_pixel_mask(depth, cloud.edge_filter)
            if cloud.edge_filter_depth:
                depth[flying] = np.nan
            else:
                cloud_depth = depth.copy()
                cloud_depth[flying] = np.nan
        if floor is not None and want_cloud and intr is not None and \
                (np.isfinite(cloud.min_height) or np.isfinite(cloud.max_height)):
            height = floor.distance - backproject(cloud_depth, intr) @ floor.normal.astype(np.float32)
            with np.errstate(invalid="ignore"):
                outside = (height < cloud.min_height) | (height > cloud.max_height)
            if cloud_depth is depth:
                cloud_depth = depth.copy()
            cloud_depth[outside] = np.nan
        if want_cloud:
            out.points_dropped = int(np.count_nonzero(np.isfinite(depth))) - \
                int(np.count_nonzero(np.isfinite(cloud_depth)))
        t3 = time.perf_counter()
        colour_source = None
        if (want_cloud and cloud.color and intr is not None) or want_colored:
            if self.resolution == "input":
                colour_source = rgb
            else:
                # from the network-size image the pre-processing already made (2x area average), not from the
                # full camera image again: a quarter of the node's own work at 640x480 otherwise
                colour_source = cv2.resize(result.prepared.resized, (w, h), interpolation=cv2.INTER_AREA)
        if want_cloud and intr is not None:
            out.cloud = self.cloud_builder.build(cloud_depth, intr, cloud.stride,
                                                 colour_source if cloud.color else None)
        t4 = time.perf_counter()
        if want_colored:
            out.colored = colorize_depth(depth, min_range if min_range > 0 else None)
        t5 = time.perf_counter()
        out.timings_ms = {"preprocess": result.preprocess_ms, "inference": result.inference_ms,
                          "postprocess": (t2 - t1) * 1e3, "filters": (t3 - t2) * 1e3, "cloud": (t4 - t3) * 1e3,
                          "colorize": (t5 - t4) * 1e3}
        return out

    def process(self, rgb: np.ndarray, camera: Optional[PinholeIntrinsics], depth_scale: float = 1.0,
                min_range: float = 0.0, max_range: float = float("inf"), want_cloud: bool = True,
                cloud_stride: int = 1, cloud_color: bool = True, want_colored: bool = True,
                cloud: Optional[CloudOptions] = None, floor: Optional[GroundPlane] = None) -> FrameOutputs:
        """One frame: ``rgb`` [H, W, 3] uint8; ``camera`` is the pinhole model of ``rgb`` (its size must match)."""
        t0 = time.perf_counter()
        result = self.infer([rgb])[0]
        infer_ms = (time.perf_counter() - t0) * 1e3
        options = cloud if cloud is not None else CloudOptions(stride=cloud_stride, color=cloud_color)
        out = self.finish(result, rgb, self.depth_intrinsics(result, camera), depth_scale, min_range, max_range,
                          want_cloud, options, want_colored, floor)
        # what infer() spent besides the network and the resize (copies, input-resolution upsampling)
        out.timings_ms["postprocess"] += infer_ms - result.preprocess_ms - result.inference_ms
        return out
