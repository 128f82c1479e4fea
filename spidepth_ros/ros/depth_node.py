"""``depth_node``: SPIdepth depth from one camera, as a managed (lifecycle) node over :mod:`spidepth_ros.pipeline`.

Subscribes (SensorDataQoS, overridable): ``image`` (sensor_msgs/Image) or ``image/compressed``, and
``camera_info``. Publishes (reliable, depth 5, overridable), stamped with the input header:
``depth/image`` (32FC1 metres, NaN invalid, REP 118), ``depth/camera_info`` (for the published size),
``depth/points`` (organized PointCloud2, depth_image_proc layout, flying pixels filtered), ``depth/colored``
(bgr8) and ``/diagnostics`` (in every state). With ``cameras: [front, rear]`` each camera has these topics
under its namespace (:class:`~spidepth_ros.ros.camera_stream.CameraStream`) and one model serves all of them.

Metres come from the model's scale, or (``scale_source: camera_height``) from every frame's floor fitted
against the camera's known height, filtered over time (:mod:`spidepth_ros.metric_scale`).

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
import traceback
from pathlib import Path
from typing import Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, ShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..encodings import ImageDecodeError
from ..pipeline import CloudOptions, DepthPipeline
from ..runtime import check_model_file, create_estimator
# CAMERA_INFO_GRACE_S and RATE_WINDOW_S are re-exported: they are part of what the node promises
from .camera_stream import CAMERA_INFO_GRACE_S, OUTPUTS, RATE_WINDOW_S, CameraStream, FrameStats  # noqa: F401
from .conversions import rgb_from_compressed_msg, rgb_from_image_msg
from .params import NodeParams, ParameterError, declare_parameters

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
#: How often lazy mode looks at the outputs' subscriber counts to (un)subscribe the input. rclpy has no
#: matched-subscription callback that works across RMWs, so poll, as image_pipeline's connect callbacks do.
LAZY_POLL_PERIOD_S = 0.5
#: Seconds a worker gets to finish its frame when the node stops.
WORKER_JOIN_TIMEOUT_S = 10.0
#: How long a refused hot swap waits for rclpy to store the refused model_path before putting the old one back.
PARAMETER_STORE_TIMEOUT_S = 5.0
#: How often the node looks for a model the adaptation worker had accepted.
ADAPT_POLL_PERIOD_S = 0.5
ADAPTED_LOADER = "spidepth_adapted_loader"    # the thread that swaps in adapted models


class StartupError(RuntimeError):
    """configure or activate failed at start-up; the message is the reason."""


class DepthNode(LifecycleNode):
    def __init__(self, node_name: str = "depth_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.pipeline: Optional[DepthPipeline] = None
        self.active_model_path = ""
        self.model_status = "not loaded"     # what /diagnostics says about the running model
        self.models_refused = 0              # model_path changes refused since start (hot swaps that failed)
        self.last_model_refusal = ""         # the newest of them: path and reason
        self._loading_path = ""              # the model a hot swap is loading ("" when none)
        self.last_error = ""                 # why the last transition failed
        self.state_label = "unconfigured"
        self._warned_once: set[str] = set()
        self._cond = threading.Condition()
        self._pipeline_lock = threading.Lock()       # held while a frame is processed: a model swap waits for it
        self._model_change_lock = threading.Lock()   # one parameter change at a time decides on a model load
        self._running = False
        self._worker: Optional[threading.Thread] = None
        self._loader: Optional[threading.Thread] = None
        self._lazy_timer = None
        self.adapter = None                          # spidepth_ros.adaptation.Adapter while adapting (adapt: true)
        self._adapt_timer = None
        self._save_adapted_srv = None                # ~/save_adapted while adapting
        self._tf_buffer = None                       # tf2_ros buffer for base_frame (camera height from TF)
        self._activated_at: Optional[float] = None
        self._diag_timer = None
        self._starting_up = False
        self.cameras: list[CameraStream] = []        # (empty until the parameters are read: stop() may run first)
        self.params: NodeParams = declare_parameters(self)     # ParameterError: one line naming the parameter
        self.cameras = [CameraStream(prefix, self._warn) for prefix in self.params.cameras]
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
        for cam in self.cameras:
            cam.pubs = {key: self.create_lifecycle_publisher(msg_type, cam.topic(topic), OUTPUT_QOS,
                                                             qos_overriding_options=overrides)
                        for key, msg_type, topic in OUTPUTS}
        self.last_error = ""
        self.state_label = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        ret = super().on_activate(state)                 # enables the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        for cam in self.cameras:
            cam.info_sub = self.create_subscription(
                CameraInfo, cam.topic("camera_info"), lambda msg, c=cam: c.on_camera_info(msg, self.params.rectify),
                qos_profile_sensor_data, qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._start_tf()
        with self._cond:
            self._running = True
        self._worker = threading.Thread(target=self._work_loop, name="spidepth_inference", daemon=True)
        self._worker.start()
        self._activated_at = time.monotonic()
        self._update_input_subscription()
        self._lazy_timer = self.create_timer(LAZY_POLL_PERIOD_S, self._update_input_subscription)
        if self.params.adapt:
            self.adapter = self._make_adapter()
            self._adapt_timer = self.create_timer(ADAPT_POLL_PERIOD_S, self._swap_in_adapted)
            # its own callback group: a save waits for the worker (seconds) while frames and timers go on
            self._save_adapted_srv = self.create_service(Trigger, "~/save_adapted", self._on_save_adapted,
                                                         callback_group=MutuallyExclusiveCallbackGroup())
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
        if self._adapt_timer is not None:
            self.destroy_timer(self._adapt_timer)
            self._adapt_timer = None
        if self._save_adapted_srv is not None:
            self.destroy_service(self._save_adapted_srv)
            self._save_adapted_srv = None
        for cam in self.cameras:
            for sub in (cam.input_sub, cam.info_sub):
                if sub is not None:
                    self.destroy_subscription(sub)
            cam.input_sub = cam.info_sub = None
        with self._cond:
            self._running = False
            for cam in self.cameras:
                cam.mailbox = None
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=WORKER_JOIN_TIMEOUT_S)
            self._worker = None
        if self.adapter is not None:
            self.adapter.stop()
            self.adapter = None

    def _release_model(self) -> None:
        if self._loader is not None:
            self._loader.join()
            self._loader = None
        for cam in self.cameras:
            for pub in cam.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            cam.pubs = {}
        with self._pipeline_lock:
            pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            pipeline.estimator.stop()
        self.model_status = "not loaded"

    # adaptation --------------------------------------------------------------------------------------------
    def _make_adapter(self):
        """The adapter for the running model (spidepth_ros.adaptation; the worker starts at the first frame)."""
        import os

        from ..adaptation import Adapter, AdapterOptions

        p = self.params
        device = p.adapt_device
        if device == "auto":
            import torch

            device = "cuda" if p.device != "cpu" and torch.cuda.is_available() else "cpu"
        out_dir = p.adapt_dir or os.path.join(os.path.expanduser("~"), ".ros", "spidepth_adapted", self.get_name())
        start = p.adapt_model or self.active_model_path
        self.get_logger().info(f"adapting {Path(start).name} on {device} (at most {p.adapt_max_share:.0%} of the "
                               f"time); accepted models go to {out_dir}")
        return Adapter(AdapterOptions(start, out_dir, device, p.adapt_max_share, p.adapt_buffer_frames,
                                      p.adapt_steps_per_swap, p.adapt_guard_tolerance,
                                      export_onnx=Path(self.active_model_path).suffix in (".onnx", ".engine"),
                                      learning_rate=p.adapt_learning_rate),
                       log=self.get_logger().info)

    def _feed_adapter(self, pipeline: DepthPipeline, result, camera, header) -> None:
        """Hand the image the network saw (and its intrinsics at that size) to the adaptation worker."""
        est = pipeline.estimator
        k = None
        if camera is not None:
            k = est.preprocessor.output_intrinsics(camera, est.metadata.input_width,
                                                   est.metadata.input_height).normalized()
        self.adapter.feed(result.prepared.resized, k, header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)

    def _swap_in_adapted(self) -> None:
        """Timer: swap in the newest model the adaptation guard accepted, between two frames (as a model_path
        change does); while another load runs it waits for the next tick."""
        adapter = self.adapter
        if adapter is None or self._loading_path:
            return
        model = adapter.newest_model()
        if model is None or self.pipeline is None:
            return
        self._loading_path = model
        self._loader = threading.Thread(target=self._swap_model, args=(model,), name=ADAPTED_LOADER, daemon=True)
        self._loader.start()

    def _on_save_adapted(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """~/save_adapted: the worker writes the last accepted weights with its training state (optimiser,
        counters, keyframes) to adapt_dir/adapted_state.pt (and .onnx when the node runs ONNX)."""
        adapter = self.adapter
        if adapter is None:
            response.success, response.message = False, "adaptation is not running (adapt is false or inactive)"
        else:
            response.success, response.message = adapter.save()
        # one call site per severity: rclpy refuses a second severity from the same line
        if response.success:
            self.get_logger().info(f"save_adapted: {response.message}")
        else:
            self.get_logger().warning(f"save_adapted: {response.message}")
        return response

    # model loading and hot swap ----------------------------------------------------------------------------
    def _load_pipeline(self, model_path: str, running: Optional[DepthPipeline] = None) -> DepthPipeline:
        """Build and start an estimator (the base class checks its output shape) and wrap it in a pipeline.
        ``running``: the pipeline it replaces with new weights of the same network (an adapted model), which
        may make it faster (TensorRT refits its engine instead of building one)."""
        p = self.params
        self.get_logger().info(f"loading model {model_path}")
        estimator = running.estimator.with_weights_of(model_path) if running is not None else None
        if estimator is None:
            # an adapting node builds TensorRT engines refittable, so that adapted weights need no rebuild
            estimator = create_estimator(model_path, p.backend, p.device, p.precision, p.crop,
                                         p.engine_cache_dir or None, p.threads, log=self.get_logger().info,
                                         refittable=p.adapt)
            estimator.start()
        else:
            self.get_logger().info(f"refitted the running engine with {Path(model_path).name}")
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
            adapted = threading.current_thread().name == ADAPTED_LOADER
            try:
                pipeline = self._load_pipeline(model_path, self.pipeline if adapted else None)
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
        if threading.current_thread().name == ADAPTED_LOADER:
            return                  # an adapted model never was the model_path parameter: nothing to put back
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
        if self._running:
            self._start_tf()                 # scale_source may just have become camera_height (from TF)
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
    def _update_input_subscription(self) -> None:
        """Subscribe to each camera's image only while it is needed (lazy): no deserialisation with nobody
        listening to that camera's outputs."""
        overrides = QoSOverridingOptions.with_default_policies()
        for cam in self.cameras:
            want = self._running and (not self.params.lazy or cam.has_listeners())
            if want and cam.input_sub is None:
                if self.params.input_transport == "compressed":
                    cam.input_sub = self.create_subscription(
                        CompressedImage, cam.topic("image/compressed"),
                        lambda msg, c=cam: c.post(msg, "compressed", self._cond), qos_profile_sensor_data,
                        qos_overriding_options=overrides)
                else:
                    cam.input_sub = self.create_subscription(
                        Image, cam.topic("image"), lambda msg, c=cam: c.post(msg, "raw", self._cond),
                        qos_profile_sensor_data, qos_overriding_options=overrides)
            elif not want and cam.input_sub is not None:
                self.destroy_subscription(cam.input_sub)
                cam.input_sub = None

    @property
    def input_subscribed(self) -> bool:
        """The first camera's image is subscribed (tests and single-camera use)."""
        return self.cameras[0].input_sub is not None

    @property
    def stats(self) -> FrameStats:
        """The first camera's counters (each camera has its own: ``node.cameras[i].stats``)."""
        return self.cameras[0].stats

    def _start_tf(self) -> None:
        """A TF listener when the camera height comes from TF (scale_source camera_height, camera_height 0)."""
        p = self.params
        if self._tf_buffer is not None or p.scale_source != "camera_height" or p.camera_height > 0 \
                or not p.base_frame:
            return
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            self._warn("no_tf", f"base_frame {p.base_frame!r} needs tf2_ros, which is not installed: set "
                       "camera_height (metres) instead; using the model's scale", once=True)
            return
        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self)

    def _camera_height(self, frame_id: str) -> Optional[float]:
        """Metres of the camera's optical centre above the floor: the parameter, or TF (base_frame <- frame_id);
        None for the model's own scale."""
        p = self.params
        if p.scale_source != "camera_height":
            return None
        if p.camera_height > 0:
            return p.camera_height
        if self._tf_buffer is None:
            return None
        from rclpy.time import Time

        try:
            tf = self._tf_buffer.lookup_transform(p.base_frame, frame_id, Time())
        except Exception as exc:  # tf2 raises several lookup exception types
            self._warn("tf", f"no transform {p.base_frame} <- {frame_id!r} ({type(exc).__name__}): using the last "
                       "scale")
            return None
        height = float(tf.transform.translation.z)
        return height if height > 0 else None

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
        """Take every camera's newest frame (one batch) whenever at least one has arrived."""
        while True:
            with self._cond:
                while self._running and all(cam.mailbox is None for cam in self.cameras):
                    self._cond.wait(timeout=0.5)
                if not self._running:
                    return
                batch = [(cam, cam.mailbox) for cam in self.cameras if cam.mailbox is not None]
                for cam, _ in batch:
                    cam.mailbox = None
            try:
                with self._pipeline_lock:
                    if self.pipeline is not None:
                        self._process(self.pipeline, batch)
            except Exception as exc:  # the node must survive anything a message can do
                if not self._running or not self.context.ok():
                    return                       # stopping: not a bad frame
                for cam, _ in batch:
                    cam.stats.bad += 1
                self._warn("process", f"dropping frame: {type(exc).__name__}: {exc}")

    def _process(self, pipeline: DepthPipeline, batch: list) -> None:
        """Decode each camera's frame, infer them together, then scale, filter and publish each."""
        p = self.params
        frames = []
        for cam, pending in batch:
            msg = pending.msg
            try:
                rgb = rgb_from_compressed_msg(msg, p.max_image_bytes) if pending.kind == "compressed" else \
                    rgb_from_image_msg(msg, p.max_image_bytes)
            except (ImageDecodeError, ValueError) as exc:
                cam.stats.bad += 1
                cam.warn("decode", f"dropping bad image: {exc}")
                continue
            header = msg.header
            if not header.frame_id:
                if p.frame_id_override:
                    header.frame_id = p.frame_id_override
                else:
                    cam.warn("frame", "input image has an empty frame_id; outputs keep it empty (set "
                             "frame_id_override to the camera's optical frame)", once=True)
            camera, calib, rgb = cam.camera_for(rgb, p.rectify)
            frames.append((cam, pending, header, rgb, camera, calib))
        if not frames:
            return
        results = pipeline.infer([f[3] for f in frames])
        model_scale = self._depth_scale(p, pipeline.estimator)
        options = CloudOptions(p.cloud_stride, p.cloud_color, p.edge_filter, p.edge_filter_depth, p.min_height,
                               p.max_height)
        for (cam, pending, header, rgb, camera, calib), result in zip(frames, results):
            intr = pipeline.depth_intrinsics(result, camera)
            scale, floor = cam.scale_for(result.depth, intr, model_scale, self._camera_height(header.frame_id))
            want_cloud = p.publish_cloud and (not p.lazy or cam.listeners("points"))
            want_colored = p.publish_colored and (not p.lazy or cam.listeners("colored"))
            out = pipeline.finish(result, rgb, intr, scale, p.min_range, p.max_range, want_cloud, options,
                                  want_colored, floor)
            cam.publish(header, out, calib)
            if self.adapter is not None and cam is self.cameras[0]:
                self._feed_adapter(pipeline, result, camera, header)
            now = time.monotonic()
            cam.stats.processed += 1
            cam.stats.batched += len(frames) > 1 and pipeline.estimator.max_batch > 1
            cam.stats.output_rate.add(now)
            cam.stats.latencies_ms.append((now - pending.received) * 1e3)
            cam.stats.inference_ms.append(out.timings_ms["inference"])
            logger = self.get_logger()
            if logger.is_enabled_for(LoggingSeverity.DEBUG):      # format the per-frame line only when shown
                logger.debug(f"{cam.label} frame {header.stamp.sec}.{header.stamp.nanosec:09d} {rgb.shape[1]}x"
                             f"{rgb.shape[0]}: scale {scale:.4g}, " +
                             ", ".join(f"{k} {v:.1f} ms" for k, v in out.timings_ms.items()))

    # diagnostics -------------------------------------------------------------------------------------------
    def diagnostic_status(self, camera: int = 0) -> DiagnosticStatus:
        """One camera's status: level and message from the state, its input's freshness, the model and its
        scale; rates over a recent window."""
        cam = self.cameras[camera]
        s, p, now = cam.stats, self.params, time.monotonic()
        pipeline = self.pipeline
        level, message = DiagnosticStatus.OK, self.state_label
        since_input = now - (s.last_image if s.last_image is not None else (self._activated_at or now))
        report = cam.scale_report
        if self.state_label != "active":
            if self.last_error:
                level, message = DiagnosticStatus.ERROR, f"{self.state_label}: {self.last_error}"
        elif cam.input_sub is None:
            message = "idle: no subscribers, input unsubscribed (lazy)"
        elif since_input > p.input_timeout:
            level, message = DiagnosticStatus.WARN, f"no images for {since_input:.0f} s"
        elif cam.calib_problem:
            level, message = DiagnosticStatus.WARN, f"running; {cam.calib_problem}"
        elif self.models_refused:
            level = DiagnosticStatus.WARN
            message = (f"running {Path(self.active_model_path).name}; {self.models_refused} model(s) refused, the "
                       f"last {self.last_model_refusal}")
        elif self._loading_path:
            message = f"running; loading {self._loading_path}"
        elif self.adapter is not None and self.adapter.problem():
            level = DiagnosticStatus.WARN
            message = f"running {Path(self.active_model_path).name} (the last good model); {self.adapter.problem()}"
        elif cam.calib is None and any(k.startswith("no_info") for k in self._warned_once):
            message = "running; depth only: no camera_info received"
        elif p.scale_source == "camera_height" and (report is None or report.age_s is None):
            message = "running; scale from the model until a floor is seen"
        elif report is not None and report.source == "held":
            message = f"running; no floor in this frame: holding the scale of {report.age_s:.0f} s ago"
        else:
            message = "running"
        scale = report.scale if report is not None else \
            self._depth_scale(p, pipeline.estimator) if pipeline is not None else p.depth_scale
        values = [("state", self.state_label), ("camera", cam.label), ("model", self.model_status),
                  ("models_refused", self.models_refused), ("last_model_refusal", self.last_model_refusal),
                  ("scale_source", p.scale_source), ("depth_scale", f"{scale:g}"),
                  *cam.diagnostic_values(now, since_input),
                  *(self.adapter.diagnostic_values() if self.adapter is not None else [])]
        name = f"{self.get_fully_qualified_name()}: spidepth depth" + (f" {cam.prefix}" if cam.prefix else "")
        return DiagnosticStatus(level=level, name=name,
                                hardware_id=pipeline.estimator.describe() if pipeline is not None else "",
                                message=message, values=[KeyValue(key=k, value=str(v)) for k, v in values])

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                               status=[self.diagnostic_status(i) for i in range(len(self.cameras))]))


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
        spinner = threading.Thread(target=_spin, args=(executor, stop, node.get_logger()), name="spidepth_executor",
                                   daemon=True)
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


def _spin(executor, stop: threading.Event, logger) -> None:
    """Spin until ``stop``. A callback that raises (a bug, not a bad message: those are handled where they
    arrive) is logged with its traceback, throttled, and the node goes on: one failed service call or timer
    tick must not take the camera's depth away."""
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, ShutdownException):
            stop.set()
        except Exception:  # noqa: BLE001 -- see the docstring
            logger.error(f"a callback failed (the node goes on):\n{traceback.format_exc()}",
                         throttle_duration_sec=10.0)


if __name__ == "__main__":
    raise SystemExit(main())
