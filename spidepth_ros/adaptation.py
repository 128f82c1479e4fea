"""The node's side of self-supervised adaptation: start the worker process, feed it frames, read its verdicts.

:class:`AdaptationProcess` runs :func:`spidepth_ros.training.adaptation.worker_main` in a separate process
(``spawn``: its own interpreter, so neither the GIL nor torch's thread pool is shared with the node's executor and
inference). Frames go in through a bounded queue and are dropped, never waited for, when it is full; accepted
models (files the node hot-swaps in like a ``model_path`` change) and rejections come back through another.
Imports no rclpy.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, field
import numpy as np

#: frames waiting for the worker; more are dropped (the worker measures parallax on each, it need not see all)
INBOX_FRAMES = 8
#: seconds the worker gets to stop before it is terminated
STOP_TIMEOUT_S = 5.0


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

    def poll(self) -> list[str]:
        """Read the worker's messages; returns the accepted model files, oldest first, and updates ``state``."""
        models = []
        while True:
            try:
                message = self.outbox.get_nowait()
            except queue.Empty:
                break
            kind = message[0]
            if kind == "status":
                self.state.worker = message[1]
            elif kind == "accepted":
                models.append(message[1])
                self.state.accepted += 1
                self.state.last_model = message[1]
                self.state.worker = message[3]
            elif kind == "rejected":
                self.state.rejected += 1
                self.state.last_rejection = message[1]
                self.state.worker = message[3]
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
        return models

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


__all__ = ["AdaptationProcess", "AdaptationState", "adapt_settings_for", "wait_for"]
