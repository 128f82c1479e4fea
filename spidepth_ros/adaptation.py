"""The node's side of self-supervised adaptation: start the worker process, feed it frames, read its verdicts.

:class:`AdaptationProcess` runs :func:`spidepth_ros.training.adaptation.worker_main` in a separate process
(``spawn``: its own interpreter, so neither the GIL nor torch's thread pool is shared with the node's executor and
inference). Frames go in through a bounded queue and are dropped, never waited for, when it is full; accepted
models (files the node hot-swaps in like a ``model_path`` change) and rejections come back through another.
Imports no rclpy.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

#: frames waiting for the worker; more are dropped (the worker measures parallax on each, it need not see all)
INBOX_FRAMES = 8
#: seconds the worker gets to stop before it is terminated
STOP_TIMEOUT_S = 5.0
#: the file ~/save_adapted writes in adapt_dir (the last accepted weights with the training state)
SAVED_STATE_NAME = "adapted_state.pt"
#: seconds a save may take: the worker finishes its training step first, then writes (and exports) the model
SAVE_TIMEOUT_S = 120.0


@dataclass
class AdaptationState:
    """What /diagnostics reports about adaptation."""

    state: str = "starting"              # starting | collecting | adapting | stopped | failed
    detail: str = ""                     # the last error, or why the worker stopped
    accepted: int = 0                    # candidates the guard accepted (each one swapped in)
    rejected: int = 0
    last_rejection: str = ""
    frames_sent: int = 0
    frames_dropped: int = 0              # the inbox was full
    worker: dict = field(default_factory=dict)   # the worker's last status (steps, keyframes, time share ...)
    last_model: str = ""                 # the last accepted model file
    verdicts: list = field(default_factory=list)  # guard reports not yet taken (dicts: accepted, reason, numbers)
    models: list = field(default_factory=list)    # accepted model files not yet taken, oldest first
    saves: dict = field(default_factory=dict)     # save request id -> (file written or "", error or "")


class AdaptationProcess:
    """Owns the worker process. ``settings``: :class:`spidepth_ros.training.adaptation.AdaptSettings`."""

    def __init__(self, settings) -> None:
        from spidepth_ros.training.adaptation import worker_main

        context = mp.get_context("spawn")
        self.settings = settings
        self.inbox = context.Queue(INBOX_FRAMES)
        self.outbox = context.Queue()
        self.process = context.Process(target=worker_main, args=(settings, self.inbox, self.outbox),
                                       name="spidepth-adaptation", daemon=True)
        self.state = AdaptationState()
        self._lock = threading.Lock()          # the node's timer and its save service both read the worker's answers
        self._request_ids = itertools.count(1)
        self.process.start()

    def offer(self, rgb: np.ndarray, stamp_ns: int) -> None:
        """Hand a ``[H, W, 3]`` uint8 network-size frame to the worker, or drop it if the worker is behind."""
        if not self.alive():
            return
        try:
            self.inbox.put_nowait(("frame", np.ascontiguousarray(rgb), int(stamp_ns)))
            self.state.frames_sent += 1
        except queue.Full:
            self.state.frames_dropped += 1

    def alive(self) -> bool:
        return self.process.is_alive()

    def request_save(self, path: str) -> int:
        """Ask the worker to write its state to ``path``; the answer appears in ``state.saves`` under the
        returned id (after :meth:`poll`). Raises RuntimeError when the worker cannot be asked."""
        if not self.alive():
            raise RuntimeError(f"the adaptation worker is not running ({self.state.state}: {self.state.detail})")
        request_id = next(self._request_ids)
        try:
            self.inbox.put(("save", request_id, str(path)), timeout=5.0)
        except queue.Full:
            raise RuntimeError("the adaptation worker is not taking messages (its queue stayed full for 5 s)")
        return request_id

    def poll(self) -> None:
        """Read the worker's messages into ``state`` (accepted model files, verdicts, save answers, status)."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        models = self.state.models
        while True:
            try:
                message = self.outbox.get_nowait()
            except queue.Empty:
                break
            kind = message[0]
            if kind == "status":
                self.state.worker = message[1]
            elif kind == "saved":
                self.state.saves[message[1]] = (message[2], message[3])
            elif kind == "accepted":
                models.append(message[1])
                self.state.accepted += 1
                self.state.last_model = message[1]
                self.state.worker = message[3]
                self.state.verdicts.append(message[2])
            elif kind == "rejected":
                self.state.rejected += 1
                self.state.last_rejection = message[1]
                self.state.worker = message[3]
                self.state.verdicts.append(message[2])
            elif kind == "error":
                self.state.state, self.state.detail = "failed", message[1]
        if self.state.state != "failed":
            if not self.alive():
                self.state.state = "stopped"
                self.state.detail = self.state.detail or f"worker exited (code {self.process.exitcode})"
            elif self.state.worker.get("steps", 0) > 0:
                self.state.state = "adapting"
            elif self.state.worker:
                self.state.state = "collecting"

    def take(self) -> tuple[list[str], list[dict]]:
        """The accepted model files and guard verdicts read since the last call (each handed out once)."""
        with self._lock:
            models, self.state.models = self.state.models, []
            verdicts, self.state.verdicts = self.state.verdicts, []
        return models, verdicts

    def stop(self) -> None:
        if self.alive():
            try:
                self.inbox.put(("stop",), timeout=1.0)
            except queue.Full:
                pass
            self.process.join(STOP_TIMEOUT_S)
            if self.alive():
                self.process.terminate()
                self.process.join(STOP_TIMEOUT_S)
        self.state.state = "stopped"
        for q in (self.inbox, self.outbox):
            q.cancel_join_thread()
            q.close()


@dataclass(frozen=True)
class AdapterOptions:
    """The node's adapt_* parameters, resolved (see spidepth_ros/ros/params.py for each one's meaning)."""

    start_model: str            # the .pt the worker starts from
    out_dir: str
    device: str                 # cpu | cuda | cuda:N
    max_share: float
    buffer_frames: int
    steps_per_swap: int
    guard_tolerance: float      # held-out photometric error a candidate may add (fraction; negative: must lower)
    export_onnx: bool           # the node runs an .onnx: accepted weights are exported for the swap
    learning_rate: float = 1e-4  # the worker's Adam learning rate


class Adapter:
    """What the node holds: starts the worker at the first frame that has camera intrinsics (the worker needs
    them at the network size), feeds it frames, hands back the newest accepted model, and reports."""

    def __init__(self, options: AdapterOptions, log=lambda text: None) -> None:
        self.options = options
        self.log = log                  # one line per guard verdict (the node's logger)
        self.process: Optional[AdaptationProcess] = None
        self.waiting_for = "the first frame with camera_info"
        self._told_resumed = False

    def feed(self, network_rgb: np.ndarray, network_k_normalized: Optional[np.ndarray], stamp_ns: int) -> None:
        """``network_rgb``: the ``[h, w, 3]`` uint8 image the network saw; its normalised 4x4 intrinsics."""
        if self.process is None:
            if network_k_normalized is None:
                return
            o = self.options
            h, w = network_rgb.shape[:2]
            self.process = AdaptationProcess(adapt_settings_for(
                o.start_model, o.out_dir, w, h, network_k_normalized, device=o.device, max_share=o.max_share,
                buffer_frames=o.buffer_frames, steps_per_candidate=o.steps_per_swap,
                photometric_tolerance=o.guard_tolerance, export_onnx=o.export_onnx,
                learning_rate=o.learning_rate))
            self.waiting_for = ""
        self.process.offer(network_rgb, stamp_ns)

    def newest_model(self) -> Optional[str]:
        """The newest model the guard accepted since the last call (older ones are superseded), or None."""
        if self.process is None:
            return None
        self.process.poll()
        models, verdicts = self.process.take()           # taken: a long run keeps none
        for verdict in verdicts:
            self.log(format_verdict(verdict))
        resumed = self.process.state.worker.get("resumed", "")
        if resumed and not self._told_resumed:
            self.log(f"adaptation: {resumed}")
            self._told_resumed = True
        return models[-1] if models else None

    def save(self, timeout_s: float = SAVE_TIMEOUT_S) -> tuple[bool, str]:
        """Have the worker write the last accepted weights with its training state to ``adapt_dir``/
        :data:`SAVED_STATE_NAME`; ``(done, what happened)``. Blocks until the worker answers (it finishes its
        training step first): call it off the thread that infers."""
        if self.process is None:
            return False, f"adaptation has not started: it is waiting for {self.waiting_for}"
        path = Path(self.options.out_dir) / SAVED_STATE_NAME
        try:
            request_id = self.process.request_save(str(path))
        except RuntimeError as exc:
            return False, str(exc)
        answers = self.process.state.saves

        def answered() -> bool:
            self.process.poll()
            return request_id in answers

        if not wait_for(answered, timeout_s, period_s=0.1):
            return False, f"the adaptation worker did not answer within {timeout_s:.0f} s"
        written, error = answers.pop(request_id)
        if error:
            return False, f"saving {path} failed: {error}"
        w = self.process.state.worker
        onnx = f" and {path.with_suffix('.onnx').name}" if self.options.export_onnx else ""
        return True, (f"wrote {written}{onnx} (the last accepted weights after {w.get('steps', 0)} steps, "
                      f"{w.get('keyframes', 0)} keyframes, optimiser state); restart with model_path (or "
                      f"adapt_model) set to it and adapt:=true to continue")

    def diagnostic_values(self) -> list[tuple[str, object]]:
        if self.process is None:
            return [("adapt_state", f"waiting for {self.waiting_for}")]
        st = self.process.state
        w = st.worker
        return [("adapt_state", st.state + (f": {st.detail}" if st.detail else "")),
                ("adapt_steps", w.get("steps", 0)), ("adapt_accepted", st.accepted), ("adapt_rejected", st.rejected),
                ("adapt_last_rejection", st.last_rejection), ("adapt_keyframes", w.get("keyframes", 0)),
                ("adapt_held_out_triplets", w.get("held_out_triplets", 0)),
                ("adapt_time_share", f"{w.get('time_share', 0.0):.2f}"), ("adapt_frames_dropped", st.frames_dropped),
                ("adapt_last_model", st.last_model), ("adapt_resumed", w.get("resumed", ""))]

    def problem(self) -> str:
        """Why adaptation is not working ("" when it is, or has not started)."""
        if self.process is None:
            return ""
        st = self.process.state
        return f"adaptation {st.state}: {st.detail}" if st.state in ("failed", "stopped") else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def format_verdict(v: dict) -> str:
    """One log line for a guard verdict (GuardReport as a dict)."""
    head = "adaptation: candidate accepted" if v["accepted"] else f"adaptation: candidate rejected ({v['reason']})"
    return (f"{head}; held-out photometric {v['photometric_current']:.4f} -> {v['photometric_candidate']:.4f}, "
            f"depth spread {v['spread_current']:.2f} -> {v['spread_candidate']:.2f} (start model "
            f"{v.get('spread_start', float('nan')):.2f}), median depth x"
            f"{v['scale_ratio']:.2f} over {v['triplets']} triplets")


def wait_for(predicate, timeout_s: float, period_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes (tests and start-up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period_s)
    return bool(predicate())


def adapt_settings_for(model_path: str, out_dir: str, width: int, height: int, k_normalized: np.ndarray,
                       **overrides) -> "object":
    """:class:`~spidepth_ros.training.adaptation.AdaptSettings` for the running model and the camera (its
    intrinsics at the network size, normalised)."""
    from spidepth_ros.training.adaptation import AdaptSettings

    return AdaptSettings(model_path=str(model_path), out_dir=str(out_dir), width=width, height=height,
                         k_normalized=tuple(map(tuple, np.asarray(k_normalized, float).tolist())), **overrides)


__all__ = ["AdaptationProcess", "AdaptationState", "Adapter", "AdapterOptions", "adapt_settings_for", "wait_for"]
