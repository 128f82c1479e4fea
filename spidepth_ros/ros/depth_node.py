"""``depth_node``: SPIdepth depth from one camera, as a managed (lifecycle) node over :mod:`spidepth_ros.pipeline`.

Subscribes (SensorDataQoS, overridable): ``image`` (sensor_msgs/Image) or ``image/compressed``, and
``camera_info``. Publishes (reliable, depth 5, overridable), stamped with the input header:
``depth/image`` (32FC1 metres, NaN invalid, REP 118), ``depth/camera_info`` (for the published size),
``depth/points`` (organized PointCloud2, depth_image_proc layout), ``depth/colored`` (bgr8) and
``/diagnostics`` (in every state).

Lifecycle (``rclpy.lifecycle``; the standard ``~/change_state``/``~/get_state`` services, so nav2's lifecycle
manager or ``ros2 lifecycle set`` drive it): *configure* loads and checks the model and creates the publishers,
*activate* subscribes and starts the inference thread, *deactivate*/*cleanup*/*shutdown* undo them. With
``autostart`` (default) :func:`main` walks it to *active* itself, so ``ros2 launch`` stays one command.

Inference runs off the executor thread; a one-slot mailbox keeps only the newest frame, so latency stays bounded
when frames arrive faster than inference. Setting ``model_path`` while configured loads the new model on a
background thread and swaps it in between two frames (no frame is lost); a model that fails to load is refused
with the reason and the old one keeps running.
"""
from __future__ import annotations

if __name__ == "__main__":     # `python -m spidepth_ros.ros.depth_node`: catch signals before the imports
    from spidepth_ros.ros.entry import exit_quietly_on_signals

    exit_quietly_on_signals()

import dataclasses
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, ShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from ..camera_model import CameraCalibration, Rectifier
from ..encodings import ImageDecodeError
from ..geometry import PinholeIntrinsics
from ..pipeline import DepthPipeline
from ..runtime import check_model_file, create_estimator
from ..stream_stats import RateWindow, StampGapCounter
from .conversions import camera_info_msg, cloud_msg, image_msg, rgb_from_compressed_msg, rgb_from_image_msg
from .params import NodeParams, ParameterError, declare_parameters

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
#: How often lazy mode looks at the outputs' subscriber counts to (un)subscribe the input. rclpy has no
#: matched-subscription callback that works across RMWs, so poll, as image_pipeline's connect callbacks do.
LAZY_POLL_PERIOD_S = 0.5
#: Window of the rates reported in /diagnostics.
RATE_WINDOW_S = 5.0
#: Seconds a worker gets to finish its frame when the node stops.
WORKER_JOIN_TIMEOUT_S = 10.0
#: How long a refused hot swap waits for rclpy to store the refused model_path before putting the old one back.
PARAMETER_STORE_TIMEOUT_S = 5.0
#: Seconds of frames without any camera_info before the node warns that it publishes depth only: the first
#: image often arrives just before the first camera_info of a camera that sends both.
CAMERA_INFO_GRACE_S = 2.0


class StartupError(RuntimeError):
    """configure or activate failed at start-up; the message is the reason."""


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


class DepthNode(LifecycleNode):
    def __init__(self, node_name: str = "depth_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.stats = FrameStats()
        self.pipeline: Optional[DepthPipeline] = None
        self.active_model_path = ""
        self.model_status = "not loaded"     # what /diagnostics says about the running model
        self.models_refused = 0              # model_path changes refused since start (hot swaps that failed)
        self.last_model_refusal = ""         # the newest of them: path and reason
        self._loading_path = ""              # the model a hot swap is loading ("" when none)
        self._no_info_since: Optional[float] = None   # first frame processed without any camera_info
        self.last_error = ""                 # why the last transition failed
        self.state_label = "unconfigured"
        self._calib: Optional[CameraCalibration] = None
        self._calib_problem = ""
        self._rectifier = Rectifier()
        self._warned_once: set[str] = set()
        self._mailbox = None
        self._cond = threading.Condition()
        self._pipeline_lock = threading.Lock()       # held while a frame is processed: a model swap waits for it
        self._model_change_lock = threading.Lock()   # one parameter change at a time decides on a model load
        self._running = False
        self._worker: Optional[threading.Thread] = None
        self._loader: Optional[threading.Thread] = None
        self._input_sub = None
        self._info_sub = None
        self._pubs: dict = {}
        self._lazy_timer = None
        self._activated_at: Optional[float] = None
        self._diag_timer = None
        self._starting_up = False
        self.params: NodeParams = declare_parameters(self)     # ParameterError: one line naming the parameter
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # diagnostics exist in every state, so a manager sees why a node is not active
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self.params.diagnostics_period, self._publish_diagnostics) \
            if self.params.diagnostics_period > 0 else None

    # lifecycle transitions ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params.validate(require_model=True)
            pipeline = self._load_pipeline(self.params.model_path)
        except Exception as exc:  # any load failure is a refused model, reported, never a crash
            return self._fail("configure", exc)
        self.pipeline = pipeline
        self.active_model_path = self.params.model_path
        overrides = QoSOverridingOptions.with_default_policies()
        self._pubs = {
            "depth": self.create_lifecycle_publisher(Image, "depth/image", OUTPUT_QOS,
                                                     qos_overriding_options=overrides),
            "info": self.create_lifecycle_publisher(CameraInfo, "depth/camera_info", OUTPUT_QOS,
                                                    qos_overriding_options=overrides),
            "points": self.create_lifecycle_publisher(PointCloud2, "depth/points", OUTPUT_QOS,
                                                      qos_overriding_options=overrides),
            "colored": self.create_lifecycle_publisher(Image, "depth/colored", OUTPUT_QOS,
                                                       qos_overriding_options=overrides),
        }
        self.last_error = ""
        self.state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)                 # enables the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                  qos_profile_sensor_data,
                                                  qos_overriding_options=QoSOverridingOptions.with_default_policies())
        with self._cond:
            self._running = True
        self._worker = threading.Thread(target=self._work_loop, name="spidepth_inference", daemon=True)
        self._worker.start()
        self._activated_at = time.monotonic()
        self._update_input_subscription()
        self._lazy_timer = self.create_timer(LAZY_POLL_PERIOD_S, self._update_input_subscription)
        self.state_label = "active"
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self.state_label = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._release_model()
        self.state_label = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._release_model()
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, transition: str, exc: Exception) -> TransitionCallbackReturn:
        self.last_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, RuntimeError,
                                                                                   FileNotFoundError)) else str(exc)
        if not self._starting_up:             # at start-up main() prints the one FATAL line instead
            self.get_logger().error(f"{transition} failed: {self.last_error}")
        return TransitionCallbackReturn.FAILURE

    def start_up(self) -> None:
        """configure + activate (``autostart``); raises :class:`StartupError` with the reason."""
        self._starting_up = True
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self.last_error or "configure failed")
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise StartupError(self.last_error or "activate failed")
        finally:
            self._starting_up = False

    def stop(self) -> None:
        """Stop the worker and free the model while the context is still valid (before rclpy shutdown)."""
        self._stop_streaming()
        self._release_model()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()

    def _stop_streaming(self) -> None:
        if self._lazy_timer is not None:
            self.destroy_timer(self._lazy_timer)
            self._lazy_timer = None
        for sub in (self._input_sub, self._info_sub):
            if sub is not None:
                self.destroy_subscription(sub)
        self._input_sub = self._info_sub = None
        with self._cond:
            self._running = False
            self._mailbox = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            self._worker = None

    def _release_model(self) -> None:
        if self._loader is not None:
            self._loader.join()
            self._loader = None
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        with self._pipeline_lock:
            pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            pipeline.estimator.stop()
        self.model_status = "not loaded"

    # model loading and hot swap ----------------------------------------------------------------------------
    def _load_pipeline(self, model_path: str) -> DepthPipeline:
        """Build and start an estimator (the base class checks its output shape) and wrap it in a pipeline."""
        p = self.params
        self.get_logger().info(f"loading model {model_path}")
        estimator = create_estimator(model_path, p.backend, p.device, p.precision, p.crop,
                                     p.engine_cache_dir or None, p.threads, log=self.get_logger().info)
        estimator.start()
        meta = estimator.metadata
        self.model_status = (f"{Path(model_path).name}: {meta.preset['name']} {meta.input_width}x"
                             f"{meta.input_height} on {estimator.describe()}")
        self.get_logger().info(f"model {self.model_status}; depth_scale {self._depth_scale(p, estimator):g}")
        return DepthPipeline(estimator, p.output_resolution)

    def _swap_model(self, model_path: str) -> None:
        """Loader thread: load ``model_path`` and swap it in between frames, or keep the old one and say why.

        While this runs every other ``model_path`` change is refused (see :meth:`_on_set_parameters`), so the
        parameter ends up naming the model that runs: the new one, or the old one put back after a refusal.
        """
        try:
            try:
                pipeline = self._load_pipeline(model_path)
            except Exception as exc:  # a bad model is refused, the running one stays
                self._refuse_loaded_model(model_path, f"{type(exc).__name__}: {exc}")
                return
            with self._pipeline_lock:
                old, self.pipeline = self.pipeline, pipeline
                if old is None:                      # cleaned up while loading: nothing to swap into
                    self.pipeline = None
            if old is None:
                pipeline.estimator.stop()
                return
            old.estimator.stop()
            self.active_model_path = model_path
            self.get_logger().info(f"swapped in {model_path}")
        finally:
            self._loading_path = ""

    def _refuse_loaded_model(self, model_path: str, reason: str) -> None:
        """Record a model that failed to load and put ``model_path`` back to the running model."""
        self.models_refused += 1
        self.last_model_refusal = f"{model_path}: {reason}"
        self.get_logger().error(f"model_path {model_path} refused, still running {self.active_model_path}: "
                                f"{reason}")
        # rclpy stores a value only after the callback accepted it, so a load that fails within a millisecond
        # could put the old value back before the new one lands, which would then overwrite it: wait for it
        deadline = time.monotonic() + PARAMETER_STORE_TIMEOUT_S
        while self.get_parameter("model_path").value != model_path and time.monotonic() < deadline:
            time.sleep(0.005)
        # `ros2 param get` must tell the truth; the callback accepts this one change from this thread
        self.set_parameters([Parameter("model_path", value=self.active_model_path)])

    # parameters --------------------------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        """Validate a parameter change before it is stored; a new ``model_path`` is checked (file, sidecar, hash)
        here, synchronously, and loaded in the background when the node is configured."""
        values = {c.name: c.value for c in changes if hasattr(self.params, c.name)}
        try:
            new = dataclasses.replace(self.params, **values)
            new.validate(require_model=False)
        except (TypeError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._model_change_lock:        # two parameter services at once must not both start a load
            return self._apply_parameters(new)

    def _apply_parameters(self, new: NodeParams) -> SetParametersResult:
        swap = False
        if new.model_path != self.params.model_path and threading.current_thread() is not self._loader:
            # (the loader itself only ever puts back the running model after a refusal: no checks, no load)
            if self._loading_path:
                return SetParametersResult(successful=False, reason=(
                    f"model {self._loading_path} is still loading; set model_path again once it has been swapped "
                    "in or refused (see /diagnostics)"))
            if not new.model_path:
                return SetParametersResult(successful=False, reason="model_path is empty")
            try:
                check_model_file(new.model_path)
            except (OSError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=f"model_path {new.model_path} refused: {exc}")
            swap = self.pipeline is not None and new.model_path != self.active_model_path
        self.params = new
        if swap:
            self._loading_path = new.model_path
            self._loader = threading.Thread(target=self._swap_model, args=(new.model_path,), name="spidepth_loader",
                                            daemon=True)
            self._loader.start()
        return SetParametersResult(successful=True)

    @staticmethod
    def _depth_scale(p: NodeParams, estimator) -> float:
        """The parameter when set (> 0), else the model's own calibrated scale."""
        return p.depth_scale if p.depth_scale > 0 else estimator.metadata.depth_scale

    # subscriptions -----------------------------------------------------------------------------------------
    def _has_listeners(self) -> bool:
        return any(pub.get_subscription_count() > 0 for pub in self._pubs.values())

    def _update_input_subscription(self) -> None:
        """Subscribe to the image only while it is needed (lazy): no deserialisation with nobody listening."""
        want = self._running and (not self.params.lazy or self._has_listeners())
        if want and self._input_sub is None:
            overrides = QoSOverridingOptions.with_default_policies()
            if self.params.input_transport == "compressed":
                self._input_sub = self.create_subscription(CompressedImage, "image/compressed", self._on_compressed,
                                                           qos_profile_sensor_data, qos_overriding_options=overrides)
            else:
                self._input_sub = self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data,
                                                           qos_overriding_options=overrides)
        elif not want and self._input_sub is not None:
            self.destroy_subscription(self._input_sub)
            self._input_sub = None

    @property
    def input_subscribed(self) -> bool:
        return self._input_sub is not None

    # callbacks (executor thread: cheap, never raise) -------------------------------------------------------
    def _post(self, msg, kind: str) -> None:
        now = time.monotonic()
        self.stats.last_image = now
        self.stats.input_rate.add(now)
        self.stats.gaps.add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        with self._cond:
            self.stats.received += 1
            if self._mailbox is not None:
                self.stats.dropped += 1          # newest frame wins
            self._mailbox = (msg, kind, now)
            self._cond.notify()

    def _on_image(self, msg: Image) -> None:
        self._post(msg, "raw")

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._post(msg, "compressed")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            calib = CameraCalibration.from_msg(msg)
            problem = calib.problem(rectify=self.params.rectify)
        except (ValueError, TypeError) as exc:
            calib, problem = None, f"camera_info cannot be read: {exc}"
        if problem:
            self.stats.camera_info_refused += 1
            self._calib, self._calib_problem = None, problem
            self._warn("bad_info", f"refusing camera_info: {problem}. Publishing depth only (no "
                       "depth/camera_info, no cloud) until a valid one arrives")
            return
        self._calib, self._calib_problem = calib, ""

    # worker ------------------------------------------------------------------------------------------------
    def _warn(self, key: str, text: str, once: bool = False) -> None:
        if once:
            if key in self._warned_once:
                return
            self._warned_once.add(key)
            self.get_logger().warning(text)
        else:
            self.get_logger().warning(text, throttle_duration_sec=self.params.warn_throttle)

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
                with self._pipeline_lock:
                    if self.pipeline is not None:
                        self._process(self.pipeline, msg, kind, received)
            except Exception as exc:  # the node must survive anything a message can do
                if not self._running or not self.context.ok():
                    return                       # stopping: not a bad frame
                self.stats.bad += 1
                self._warn("process", f"dropping frame: {type(exc).__name__}: {exc}")

    def _camera_for(self, rgb: np.ndarray) -> tuple[Optional[PinholeIntrinsics], Optional[CameraCalibration],
                                                    np.ndarray]:
        """(pinhole model of the image the network sees, its calibration, that image) for one frame."""
        calib = self._calib
        if calib is None:
            if not self._calib_problem:
                now = time.monotonic()
                if self._no_info_since is None:
                    self._no_info_since = now
                if now - self._no_info_since >= CAMERA_INFO_GRACE_S:
                    self._warn("no_info", f"no camera_info received in {CAMERA_INFO_GRACE_S:g} s of images: "
                               "publishing depth only (no depth/camera_info, no point cloud). Remap 'camera_info' "
                               "to your camera's topic.", once=True)
            return None, None, rgb
        intr = calib.intrinsics
        h, w = rgb.shape[:2]
        if calib.distorted:
            if self.params.rectify:
                if (intr.width, intr.height) != (w, h):
                    self._warn("rectify_size", f"cannot rectify: camera_info is for {intr.width}x{intr.height} but "
                               f"images are {w}x{h}; publishing depth only")
                    return None, None, rgb
                rgb = self._rectifier(rgb, calib)
            else:
                self._warn("distorted", "camera_info has non-zero distortion D but rectify is off: depth assumes a "
                           "rectified image; subscribe to image_rect, or set rectify:=true for image_raw", once=True)
        if (intr.width, intr.height) != (w, h):
            self._warn("info_size", f"camera_info is for {intr.width}x{intr.height} but images are {w}x{h}: "
                       "scaling the intrinsics", once=True)
            intr = intr.resized(w, h)
        return intr, calib, rgb

    def _process(self, pipeline: DepthPipeline, msg, kind: str, received: float) -> None:
        p = self.params
        try:
            rgb = rgb_from_compressed_msg(msg, p.max_image_bytes) if kind == "compressed" else \
                rgb_from_image_msg(msg, p.max_image_bytes)
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
        camera, calib, rgb = self._camera_for(rgb)
        lazy = p.lazy
        want_cloud = p.publish_cloud and (not lazy or self._pubs["points"].get_subscription_count() > 0)
        want_colored = p.publish_colored and (not lazy or self._pubs["colored"].get_subscription_count() > 0)
        out = pipeline.process(rgb, camera, self._depth_scale(p, pipeline.estimator), p.min_range, p.max_range,
                               want_cloud, p.cloud_stride, p.cloud_color, want_colored)
        self._pubs["depth"].publish(image_msg(header, out.depth, "32FC1"))
        if out.intrinsics is not None:
            # P's Tx/Ty (-fx*baseline for a right stereo camera) scale with fx/fy: kept, so P stays exact
            sx, sy = out.intrinsics.fx / calib.intrinsics.fx, out.intrinsics.fy / calib.intrinsics.fy
            self._pubs["info"].publish(camera_info_msg(header, out.intrinsics, calib.tx * sx, calib.ty * sy))
        if out.cloud is not None:
            self._pubs["points"].publish(cloud_msg(header, out.cloud))
        if out.colored is not None:
            self._pubs["colored"].publish(image_msg(header, out.colored, "bgr8"))
        self.stats.processed += 1
        self.stats.output_rate.add(time.monotonic())
        self.stats.latencies_ms.append((time.monotonic() - received) * 1e3)
        self.stats.inference_ms.append(out.timings_ms["inference"])
        logger = self.get_logger()
        if logger.is_enabled_for(LoggingSeverity.DEBUG):      # format the per-frame line only when it is shown
            logger.debug(f"frame {header.stamp.sec}.{header.stamp.nanosec:09d} {rgb.shape[1]}x{rgb.shape[0]}: " +
                         ", ".join(f"{k} {v:.1f} ms" for k, v in out.timings_ms.items()))

    # diagnostics -------------------------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """Level and message from the state, the input's freshness and the model; rates over a recent window."""
        s, p, now = self.stats, self.params, time.monotonic()
        pipeline = self.pipeline
        level, message = DiagnosticStatus.OK, self.state_label
        since_input = now - (s.last_image if s.last_image is not None else (self._activated_at or now))
        if self.state_label != "active":
            if self.last_error:
                level, message = DiagnosticStatus.ERROR, f"{self.state_label}: {self.last_error}"
        elif self._input_sub is None:
            message = "idle: no subscribers, input unsubscribed (lazy)"
        elif since_input > p.input_timeout:
            level, message = DiagnosticStatus.WARN, f"no images for {since_input:.0f} s"
        elif self._calib_problem:
            level, message = DiagnosticStatus.WARN, f"running; {self._calib_problem}"
        elif self.models_refused:
            level = DiagnosticStatus.WARN
            message = (f"running {Path(self.active_model_path).name}; {self.models_refused} model(s) refused, the "
                       f"last {self.last_model_refusal}")
        elif self._loading_path:
            message = f"running; loading {self._loading_path}"
        elif self._calib is None and "no_info" in self._warned_once:
            message = "running; depth only: no camera_info received"
        else:
            message = "running"
        lat = np.percentile(list(s.latencies_ms), [50, 95]) if s.latencies_ms else [float("nan")] * 2
        inf_ms = float(np.mean(s.inference_ms)) if s.inference_ms else float("nan")
        scale = self._depth_scale(p, pipeline.estimator) if pipeline is not None else p.depth_scale
        values = (
            ("state", self.state_label), ("model", self.model_status), ("models_refused", self.models_refused),
            ("last_model_refusal", self.last_model_refusal), ("depth_scale", f"{scale:g}"),
            ("rate_hz", f"{s.output_rate.rate(now):.2f}"), ("input_rate_hz", f"{s.input_rate.rate(now):.2f}"),
            ("seconds_since_last_image", f"{since_input:.1f}"),
            ("latency_p50_ms", f"{lat[0]:.1f}"), ("latency_p95_ms", f"{lat[1]:.1f}"),
            ("inference_mean_ms", f"{inf_ms:.1f}"), ("received", s.received), ("processed", s.processed),
            ("dropped_newest_wins", s.dropped), ("bad_messages", s.bad),
            ("input_gaps_missing_frames", s.gaps.missing), ("camera_info_refused", s.camera_info_refused),
            ("input_subscribed", self._input_sub is not None))
        return DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: spidepth depth",
                                hardware_id=pipeline.estimator.describe() if pipeline is not None else "",
                                message=message, values=[KeyValue(key=k, value=str(v)) for k, v in values])

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                               status=[self.diagnostic_status()]))


class _Interrupted(BaseException):
    """A signal arrived while the node was starting (model loading): leave quietly."""


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until SIGINT/SIGTERM. Exit 0 on a signal, 1 (one FATAL line) on bad parameters or model.

    rclpy's own signal handlers are off: they invalidate the context at once, while the inference thread may
    still be publishing ("publisher's context is invalid"). Here a signal stops the worker first, then the
    node, then the context.
    """
    stop = threading.Event()
    starting = [True]

    def on_signal(signum, frame) -> None:
        stop.set()
        if starting[0]:
            raise _Interrupted(signal.Signals(signum).name)

    # installed before anything is created, so a signal at any point of start-up ends in the except below
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as exc:          # malformed --ros-args (e.g. `-p model_path:=` with no value)
        print(f"[FATAL] [depth_node]: cannot start: {exc} (an empty string parameter is written "
              "name:=\"''\")", file=sys.stderr)
        _restore(previous)
        return 1
    except _Interrupted as exc:
        rclpy.logging.get_logger("depth_node").info(f"{exc} during start-up: exiting")
        rclpy.try_shutdown()
        _restore(previous)
        return 0
    node: Optional[DepthNode] = None
    code = 0
    try:
        node = DepthNode()
        if node.params.autostart:
            node.start_up()
        starting[0] = False
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, stop), name="spidepth_executor", daemon=True)
        spinner.start()
        while not stop.wait(0.2) and spinner.is_alive():
            pass
        stop.set()
        spinner.join(timeout=5.0)         # the executor stops waiting before anything it waits on is destroyed
        node.stop()                       # then the worker, while the context is still valid
        executor.shutdown(timeout_sec=2.0)
    except (ParameterError, StartupError) as exc:
        logger = node.get_logger() if node is not None else rclpy.logging.get_logger("depth_node")
        logger.fatal(f"cannot start: {exc}")
        code = 1
    except _Interrupted as exc:
        rclpy.logging.get_logger("depth_node").info(f"{exc} during start-up: exiting")
    finally:
        starting[0] = False
        if node is not None:
            try:
                node.destroy_node()
            except Exception:  # already torn down by a signal mid-start: nothing left to release
                pass
        rclpy.try_shutdown()
        _restore(previous)
    return code


def _restore(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _spin(executor, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (ExternalShutdownException, ShutdownException):
        stop.set()


if __name__ == "__main__":
    raise SystemExit(main())
