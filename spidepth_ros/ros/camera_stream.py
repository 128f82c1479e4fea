"""One camera of ``depth_node``: its topics, calibration, newest-frame mailbox, counters, scale and outputs.

The node holds one :class:`CameraStream` per entry of its ``cameras`` parameter; all share the node's model
and inference thread. Everything that differs between two cameras of one robot lives here.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..camera_model import CameraCalibration, Rectifier
from ..geometry import PinholeIntrinsics
from ..metric_scale import CameraHeightScale, ScaleReport
from ..stream_stats import RateWindow, StampGapCounter
from .conversions import camera_info_msg, cloud_msg, image_msg

#: Window of the rates reported in /diagnostics.
RATE_WINDOW_S = 5.0
#: Seconds of frames without any camera_info before the node warns that it publishes depth only: the first
#: image often arrives just before the first camera_info of a camera that sends both.
CAMERA_INFO_GRACE_S = 2.0
OUTPUTS = (("depth", Image, "depth/image"), ("info", CameraInfo, "depth/camera_info"),
           ("points", PointCloud2, "depth/points"), ("colored", Image, "depth/colored"))


class FrameStats:
    """Counters, recent rates and latencies for /diagnostics (written by the executor and worker threads)."""

    def __init__(self) -> None:
        self.received = self.processed = self.dropped = self.bad = self.camera_info_refused = 0
        self.latencies_ms: deque = deque(maxlen=100)
        self.inference_ms: deque = deque(maxlen=100)
        self.input_rate = RateWindow(RATE_WINDOW_S)
        self.output_rate = RateWindow(RATE_WINDOW_S)
        self.gaps = StampGapCounter()
        # monotonic time of the newest image; apart from the rate window, which forgets images older than it
        self.last_image: Optional[float] = None
        self.points_filtered = 0          # valid pixels the cloud filters left out of the last cloud
        self.batched = 0                  # frames inferred in one batch with another camera's


@dataclass
class PendingFrame:
    """A frame taken from the mailbox: the message, how it is encoded and when it arrived."""

    msg: object
    kind: str                 # "raw" or "compressed"
    received: float           # monotonic seconds


class CameraStream:
    """One camera's state. ``prefix`` is its namespace relative to the node's ("" = the node's own topics)."""

    def __init__(self, prefix: str, warn: Callable[..., None]) -> None:
        self.prefix = prefix
        self.stats = FrameStats()
        self.calib: Optional[CameraCalibration] = None
        self.calib_problem = ""
        self.rectifier = Rectifier()
        self.no_info_since: Optional[float] = None
        self.mailbox: Optional[PendingFrame] = None
        self.input_sub = None
        self.info_sub = None
        self.pubs: dict = {}
        self.scale: Optional[CameraHeightScale] = None
        self.scale_report: Optional[ScaleReport] = None
        self._warn = warn

    @property
    def label(self) -> str:
        return self.prefix or "camera"

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def warn(self, key: str, text: str, once: bool = False) -> None:
        """A warning naming this camera when the node has several (``key`` is per camera)."""
        self._warn(key if not self.prefix else f"{key}@{self.prefix}",
                   text if not self.prefix else f"[{self.prefix}] {text}", once)

    # subscriptions and outputs -----------------------------------------------------------------------------
    def has_listeners(self) -> bool:
        return any(pub.get_subscription_count() > 0 for pub in self.pubs.values())

    def listeners(self, output: str) -> bool:
        return self.pubs[output].get_subscription_count() > 0

    def on_camera_info(self, msg, rectify: bool) -> None:
        try:
            calib = CameraCalibration.from_msg(msg)
            problem = calib.problem(rectify=rectify)
        except (ValueError, TypeError) as exc:
            calib, problem = None, f"camera_info cannot be read: {exc}"
        if problem:
            self.stats.camera_info_refused += 1
            self.calib, self.calib_problem = None, problem
            self.warn("bad_info", f"refusing camera_info: {problem}. Publishing depth only (no depth/camera_info, "
                      "no cloud) until a valid one arrives")
            return
        self.calib, self.calib_problem = calib, ""

    def post(self, msg, kind: str, cond) -> None:
        """Executor thread: put the newest frame in the mailbox (replacing an unprocessed one)."""
        now = time.monotonic()
        self.stats.last_image = now
        self.stats.input_rate.add(now)
        self.stats.gaps.add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        with cond:
            self.stats.received += 1
            if self.mailbox is not None:
                self.stats.dropped += 1          # newest frame wins
            self.mailbox = PendingFrame(msg, kind, now)
            cond.notify()

    # per frame (worker thread) -----------------------------------------------------------------------------
    def camera_for(self, rgb: np.ndarray, rectify: bool) -> tuple[Optional[PinholeIntrinsics],
                                                                  Optional[CameraCalibration], np.ndarray]:
        """(pinhole model of the image the network sees, its calibration, that image) for one frame."""
        calib = self.calib
        if calib is None:
            if not self.calib_problem:
                now = time.monotonic()
                if self.no_info_since is None:
                    self.no_info_since = now
                if now - self.no_info_since >= CAMERA_INFO_GRACE_S:
                    self.warn("no_info", f"no camera_info received in {CAMERA_INFO_GRACE_S:g} s of images: "
                              "publishing depth only (no depth/camera_info, no point cloud). Remap 'camera_info' "
                              "to your camera's topic.", once=True)
            return None, None, rgb
        intr = calib.intrinsics
        h, w = rgb.shape[:2]
        if calib.distorted:
            if rectify:
                if (intr.width, intr.height) != (w, h):
                    self.warn("rectify_size", f"cannot rectify: camera_info is for {intr.width}x{intr.height} but "
                              f"images are {w}x{h}; publishing depth only")
                    return None, None, rgb
                rgb = self.rectifier(rgb, calib)
            else:
                self.warn("distorted", "camera_info has non-zero distortion D but rectify is off: depth assumes a "
                          "rectified image; subscribe to image_rect, or set rectify:=true for image_raw", once=True)
        if (intr.width, intr.height) != (w, h):
            self.warn("info_size", f"camera_info is for {intr.width}x{intr.height} but images are {w}x{h}: "
                      "scaling the intrinsics", once=True)
            intr = intr.resized(w, h)
        return intr, calib, rgb

    def scale_for(self, depth: np.ndarray, intr: Optional[PinholeIntrinsics], model_scale: float,
                  camera_height: Optional[float]):
        """(metres per model unit, floor in metres or None) for one frame of depth in model units.

        ``camera_height`` None: the model's scale. Otherwise the floor-fit filter of this camera (rebuilt when
        the height changes), which needs the depth's pinhole model.
        """
        if camera_height is None:
            self.scale_report = None
            return model_scale, None
        if intr is None:
            self.warn("scale_no_info", "scale_source camera_height needs camera_info (the floor is fitted in 3-D): "
                      "using the model's scale", once=True)
            return model_scale, None
        if self.scale is None or self.scale.camera_height_m != camera_height:
            self.scale = CameraHeightScale(camera_height, model_scale)
        self.scale.model_scale = model_scale
        self.scale_report = self.scale.update(depth, intr, time.monotonic())
        return self.scale_report.scale, self.scale_report.floor

    def publish(self, header, out, calib: Optional[CameraCalibration]) -> None:
        """Publish one frame's outputs (FrameOutputs) stamped with the input header."""
        self.pubs["depth"].publish(image_msg(header, out.depth, "32FC1"))
        if out.intrinsics is not None:
            # P's Tx/Ty (-fx*baseline for a right stereo camera) scale with fx/fy: kept, so P stays exact
            sx, sy = out.intrinsics.fx / calib.intrinsics.fx, out.intrinsics.fy / calib.intrinsics.fy
            self.pubs["info"].publish(camera_info_msg(header, out.intrinsics, calib.tx * sx, calib.ty * sy))
        if out.cloud is not None:
            self.pubs["points"].publish(cloud_msg(header, out.cloud))
        if out.colored is not None:
            self.pubs["colored"].publish(image_msg(header, out.colored, "bgr8"))
        self.stats.points_filtered = out.points_dropped

    def diagnostic_values(self, now: float, since_input: float) -> list[tuple[str, object]]:
        s = self.stats
        lat = np.percentile(list(s.latencies_ms), [50, 95]) if s.latencies_ms else [float("nan")] * 2
        inf_ms = float(np.mean(s.inference_ms)) if s.inference_ms else float("nan")
        values = [
            ("rate_hz", f"{s.output_rate.rate(now):.2f}"), ("input_rate_hz", f"{s.input_rate.rate(now):.2f}"),
            ("seconds_since_last_image", f"{since_input:.1f}"),
            ("latency_p50_ms", f"{lat[0]:.1f}"), ("latency_p95_ms", f"{lat[1]:.1f}"),
            ("inference_mean_ms", f"{inf_ms:.1f}"), ("received", s.received), ("processed", s.processed),
            ("dropped_newest_wins", s.dropped), ("bad_messages", s.bad),
            ("input_gaps_missing_frames", s.gaps.missing), ("camera_info_refused", s.camera_info_refused),
            ("input_subscribed", self.input_sub is not None), ("cloud_points_filtered", s.points_filtered),
            ("batched_with_other_cameras", s.batched)]
        r = self.scale_report
        if r is not None:
            values += [("scale_state", r.source), ("scale_spread_p95_p5", f"{r.spread:.3f}"),
                       ("floor_fit_share", f"{r.floor_share:.2f}"),
                       ("scale_age_s", "never" if r.age_s is None else f"{r.age_s:.1f}"),
                       ("frame_floor_scale", "none" if r.frame_scale is None else f"{r.frame_scale:.4g}")]
        return values
