"""``depth_node``: SPIdepth depth from one camera (thin rclpy glue over :mod:`spidepth_ros.pipeline`).

Subscribes (SensorDataQoS, overridable): ``image`` (sensor_msgs/Image) or ``image/compressed``, and
``camera_info``. Publishes (reliable, depth 5, overridable), stamped with the input header:
``depth/image`` (32FC1 metres, NaN invalid, REP 118), ``depth/camera_info`` (for the published size),
``depth/points`` (organized PointCloud2, depth_image_proc layout), ``depth/colored`` (bgr8) and
``/diagnostics``.

Start-up is explicit and ordered like a lifecycle node: :meth:`configure` loads the model (a bad model fails
here, before any subscription exists), :meth:`activate` subscribes and starts the inference thread,
:meth:`deactivate`/:meth:`cleanup` undo them. Inference runs off the executor thread; a one-slot mailbox keeps
only the newest frame, so latency stays bounded when frames arrive faster than inference.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import LoggingSeverity
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from ..encodings import ImageDecodeError
from ..geometry import PinholeIntrinsics
from ..pipeline import DepthPipeline, Rectifier
from ..runtime import create_estimator
from .conversions import (camera_info_msg, cloud_msg, image_msg, intrinsics_from_camera_info, rgb_from_compressed_msg,
                          rgb_from_image_msg)
from .params import NodeParams, declare_parameters

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


class FrameStats:
    """Counters and recent latencies for diagnostics."""

    def __init__(self) -> None:
        self.received = self.processed = self.dropped = self.bad = self.skipped_idle = 0
        self.latencies_ms: deque = deque(maxlen=100)
        self.inference_ms: deque = deque(maxlen=100)
        self.stamps: deque = deque(maxlen=100)


class DepthNode(Node):
    def __init__(self, node_name: str = "depth_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params: NodeParams = declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.stats = FrameStats()
        self.pipeline: Optional[DepthPipeline] = None
        self._camera_info: Optional[CameraInfo] = None
        self._warned_once: set[str] = set()
        self._mailbox = None
        self._cond = threading.Condition()
        self._running = False
        self._worker: Optional[threading.Thread] = None
        self._subs: list = []
        self._pubs: dict = {}
        self._diag_timer = None
        self._rectifier = Rectifier()

    # lifecycle ---------------------------------------------------------------------------------------------
    def configure(self) -> None:
        """Load the model and create publishers. Raises with the reason if the model cannot be used."""
        p = self.params
        estimator = create_estimator(p.model_path, p.backend, p.device, p.precision, p.crop,
                                     p.engine_cache_dir or None, p.threads, log=self.get_logger().info)
        estimator.start()
        self.pipeline = DepthPipeline(estimator, p.output_resolution)
        overrides = QoSOverridingOptions.with_default_policies()
        self._pubs = {
            "depth": self.create_publisher(Image, "depth/image", OUTPUT_QOS, qos_overriding_options=overrides),
            "info": self.create_publisher(CameraInfo, "depth/camera_info", OUTPUT_QOS,
                                          qos_overriding_options=overrides),
            "points": self.create_publisher(PointCloud2, "depth/points", OUTPUT_QOS, qos_overriding_options=overrides),
            "colored": self.create_publisher(Image, "depth/colored", OUTPUT_QOS, qos_overriding_options=overrides),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        meta = estimator.metadata
        self.get_logger().info(
            f"model {meta.preset['name']} {meta.input_width}x{meta.input_height} on {estimator.describe()}; "
            f"depth_scale {p.depth_scale}")

    def activate(self) -> None:
        """Subscribe and start the inference thread."""
        if self.pipeline is None:
            raise RuntimeError("configure() must succeed before activate()")
        overrides = QoSOverridingOptions.with_default_policies()
        if self.params.input_transport == "compressed":
            self._subs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_compressed,
                                                       qos_profile_sensor_data, qos_overriding_options=overrides))
        else:
            self._subs.append(self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data,
                                                       qos_overriding_options=overrides))
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                   qos_profile_sensor_data))
        self._running = True
        self._worker = threading.Thread(target=self._work_loop, name="spidepth_inference", daemon=True)
        self._worker.start()
        if self.params.diagnostics_period > 0:
            self._diag_timer = self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)

    def deactivate(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def cleanup(self) -> None:
        self.deactivate()
        if self.pipeline is not None:
            self.pipeline.estimator.stop()
            self.pipeline = None

    def destroy_node(self) -> None:
        self.cleanup()
        super().destroy_node()

    # parameters --------------------------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        values = {c.name: c.value for c in changes if hasattr(self.params, c.name)}
        try:
            new = dataclasses.replace(self.params, **values)
            new.validate()
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.params = new
        return SetParametersResult(successful=True)

    # callbacks (executor thread: cheap, never raise) -------------------------------------------------------
    def _post(self, msg, kind: str) -> None:
        with self._cond:
            self.stats.received += 1
            if self._mailbox is not None:
                self.stats.dropped += 1          # newest frame wins
            self._mailbox = (msg, kind, time.monotonic())
            self._cond.notify()

    def _on_image(self, msg: Image) -> None:
        self._post(msg, "raw")

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._post(msg, "compressed")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    # worker ------------------------------------------------------------------------------------------------
    def _warn(self, key: str, text: str, once: bool = False) -> None:
        if once:
            if key in self._warned_once:
                return
            self._warned_once.add(key)
            self.get_logger().warning(text)
        else:
            self.get_logger().warning(text, throttle_duration_sec=self.params.warn_throttle)

    def _has_listeners(self) -> bool:
        return any(self._pubs[k].get_subscription_count() > 0 for k in ("depth", "info", "points", "colored"))

    def _work_loop(self) -> None:
        while True:
            with self._cond:
                while self._running and self._mailbox is None:
                    self._cond.wait(timeout=0.5)
                if not self._running:
                    return
                msg, kind, received = self._mailbox
                self._mailbox = None
            try:
                self._process(msg, kind, received)
            except Exception as exc:  # the node must survive anything a message can do
                self.stats.bad += 1
                self._warn("process", f"dropping frame: {type(exc).__name__}: {exc}")

    def _camera_for(self, rgb: np.ndarray, frame_id: str) -> tuple[Optional[PinholeIntrinsics], np.ndarray]:
        info = self._camera_info
        if info is None:
            self._warn("no_info", "no camera_info received yet: publishing depth only (no depth/camera_info, no "
                       "point cloud). Remap 'camera_info' to your camera's topic.", once=True)
            return None, rgb
        intr = intrinsics_from_camera_info(info)
        if not intr.is_valid():
            self._warn("bad_info", f"camera_info has invalid intrinsics (fx={intr.fx}, fy={intr.fy}, "
                       f"cx={intr.cx}, cy={intr.cy}): skipping the cloud until a calibrated one arrives")
            return None, rgb
        h, w = rgb.shape[:2]
        if (intr.width, intr.height) != (w, h):
            if intr.width <= 0 or intr.height <= 0:
                return None, rgb
            self._warn("info_size", f"camera_info is for {intr.width}x{intr.height} but images are {w}x{h}: "
                       "scaling the intrinsics", once=True)
            intr = intr.resized(w, h)
        d = np.asarray(info.d, dtype=np.float64)
        if d.size and np.any(np.abs(d) > 1e-12):
            if self.params.rectify and (intr.width, intr.height) == (info.width, info.height):
                k = np.asarray(info.k, np.float64).reshape(3, 3)
                r = np.asarray(info.r, np.float64).reshape(3, 3)
                p = np.asarray(info.p, np.float64).reshape(3, 4)
                rgb = self._rectifier(rgb, k, d, r, p if p[0, 0] > 0 else np.hstack([k, np.zeros((3, 1))]))
            else:
                self._warn("distorted", "camera_info has non-zero distortion D but rectification is off: depth "
                           "assumes a pinhole image; subscribe to image_rect or set rectify:=true", once=True)
        return intr, rgb

    def _process(self, msg, kind: str, received: float) -> None:
        p = self.params
        if p.lazy and not self._has_listeners():
            self.stats.skipped_idle += 1
            return
        try:
            rgb = rgb_from_compressed_msg(msg) if kind == "compressed" else rgb_from_image_msg(msg)
        except (ImageDecodeError, ValueError) as exc:
            self.stats.bad += 1
            self._warn("decode", f"dropping bad image: {exc}")
            return
        header = msg.header
        if not header.frame_id:
            if p.frame_id_override:
                header.frame_id = p.frame_id_override
            else:
                self._warn("frame", "input image has an empty frame_id; outputs keep it empty (set "
                           "frame_id_override to the camera's optical frame)", once=True)
        camera, rgb = self._camera_for(rgb, header.frame_id)
        want_cloud = p.publish_cloud and self._pubs["points"].get_subscription_count() > 0 or \
            (p.publish_cloud and not p.lazy)
        want_colored = p.publish_colored and (self._pubs["colored"].get_subscription_count() > 0 or not p.lazy)
        out = self.pipeline.process(rgb, camera, p.depth_scale, p.min_range, p.max_range, want_cloud,
                                    p.cloud_stride, p.cloud_color, want_colored)
        self._pubs["depth"].publish(image_msg(header, out.depth, "32FC1"))
        if out.intrinsics is not None:
            self._pubs["info"].publish(camera_info_msg(header, out.intrinsics))
        if out.cloud is not None:
            self._pubs["points"].publish(cloud_msg(header, out.cloud))
        if out.colored is not None:
            self._pubs["colored"].publish(image_msg(header, out.colored, "bgr8"))
        self.stats.processed += 1
        self.stats.latencies_ms.append((time.monotonic() - received) * 1e3)
        self.stats.inference_ms.append(out.timings_ms["inference"])
        self.stats.stamps.append(time.monotonic())
        logger = self.get_logger()
        if logger.is_enabled_for(LoggingSeverity.DEBUG):      # format the per-frame line only when it is shown
            logger.debug(f"frame {header.stamp.sec}.{header.stamp.nanosec:09d} {rgb.shape[1]}x{rgb.shape[0]}: " +
                         ", ".join(f"{k} {v:.1f} ms" for k, v in out.timings_ms.items()))

    def _publish_diagnostics(self) -> None:
        s = self.stats
        rate = 0.0
        if len(s.stamps) >= 2 and s.stamps[-1] > s.stamps[0]:
            rate = (len(s.stamps) - 1) / (s.stamps[-1] - s.stamps[0])
        lat = np.percentile(list(s.latencies_ms), [50, 95]) if s.latencies_ms else [float("nan")] * 2
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK if s.processed else DiagnosticStatus.WARN,
            name=f"{self.get_name()}: spidepth depth", hardware_id=self.pipeline.estimator.describe()
            if self.pipeline else "",
            message="running" if s.processed else "waiting for images",
            values=[KeyValue(key=k, value=str(v)) for k, v in (
                ("rate_hz", f"{rate:.2f}"), ("latency_p50_ms", f"{lat[0]:.1f}"), ("latency_p95_ms", f"{lat[1]:.1f}"),
                ("inference_mean_ms", f"{np.mean(s.inference_ms) if s.inference_ms else float('nan'):.1f}"),
                ("received", s.received), ("processed", s.processed), ("dropped_newest_wins", s.dropped),
                ("bad_messages", s.bad), ("skipped_no_subscribers", s.skipped_idle))])
        self._pubs["diagnostics"].publish(DiagnosticArray(header=self._diag_header(), status=[status]))

    def _diag_header(self):
        from std_msgs.msg import Header

        return Header(stamp=self.get_clock().now().to_msg())


def main(args: Optional[list[str]] = None) -> int:
    rclpy.init(args=args)
    node = DepthNode()
    try:
        node.configure()
    except Exception as exc:
        node.get_logger().fatal(f"cannot start: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    node.activate()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
