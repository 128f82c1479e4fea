"""Self-supervised adaptation while the node runs: a keyframe buffer, a guard, and the worker process's loop.

The node (``depth_node`` with ``adapt: true``) hands every frame it infers, resized to the network's input, to a
worker process (:class:`spidepth_ros.adaptation.AdaptationProcess` starts it with :func:`worker_main`). The
worker keeps the frames that moved enough (:class:`KeyframeBuffer`: measured translation parallax to the last
keyframe at least the training recipe's ``data.target_parallax_px``; a camera that only turns adds nothing),
trains the depth network with the default training recipe (``config/train.yaml``: image-rotation start, LM pose
refinement) on triplets of consecutive keyframes, and every ``steps_per_candidate`` steps judges the weights on
keyframes it never trained on (:func:`judge_candidate`). Accepted weights are written as a model file and
announced; rejected ones are dropped (training continues from the last accepted weights) with the reason.

Frames and messages cross the process boundary through ``multiprocessing`` queues between the node and the
worker it started (the same program, trusted): no file or network input is unpickled.
"""
from __future__ import annotations

import math
import os
import queue
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

#: keyframe serial numbers n with n % holdout_every == HOLDOUT_PHASE are never training targets
HOLDOUT_PHASE = 0


@dataclass(frozen=True)
class AdaptSettings:
    """What the worker needs; plain values so it crosses to a spawned process. Sizes in network pixels."""

    model_path: str                              # the model the node runs now (.pt): the start
    out_dir: str                                 # where accepted models are written
    width: int
    height: int
    k_normalized: tuple                          # 4x4 intrinsics of the network image, normalised (data.py's form)
    device: str = "cpu"
    threads: int = 1                             # torch threads of the worker
    max_share: float = 0.5                       # share of wall time the worker may compute (it sleeps the rest)
    buffer_frames: int = 120                     # keyframes kept (oldest dropped first)
    holdout_every: int = 5                       # every n-th keyframe is held out for the guard
    target_parallax_px: float = 1.2              # keyframe spacing: measured translation parallax to the last one
    steps_per_candidate: int = 20                # training steps between two judged candidates
    batch_size: int = 4
    min_train_triplets: int = 4                  # train only once this many training triplets exist
    guard_triplets: int = 16                     # held-out triplets the guard scores (the newest)
    photometric_tolerance: float = 0.0           # reject when held-out photometric error rises by more (fraction)
    min_spread_ratio: float = 0.7                # reject when the depth spread (p95/p5) falls below this x current
    max_scale_drift: float = 0.3                 # reject when the median depth moves by more (fraction) vs current
    export_onnx: bool = False                    # also write an ONNX (+ sidecar) for the ONNX Runtime backend
    seed: int = 0


@dataclass
class Keyframe:
    serial: int                                  # how many keyframes came before it (never reused)
    rgb: np.ndarray                              # [H, W, 3] uint8 network image
    stamp_ns: int
    parallax_px: float = float("nan")            # to the keyframe before it
    rotation_vec: np.ndarray = field(default_factory=lambda: np.full(3, np.nan, np.float32))  # previous -> this


class KeyframeBuffer:
    """Bounded keyframes of a moving camera, with the image-measured motion between consecutive ones.

    ``k_pixels``: 3x3 intrinsics of the network image. ``offer`` measures (training/parallax.py) the parallax to
    the last keyframe and keeps the frame when it reaches ``target_parallax_px``.
    """

    def __init__(self, k_pixels: np.ndarray, target_parallax_px: float, capacity: int, holdout_every: int) -> None:
        if capacity < 3:
            raise ValueError("adapt_buffer_frames must be at least 3 (one triplet)")
        self.k_pixels = np.asarray(k_pixels, np.float64)
        self.target_parallax_px = target_parallax_px
        self.holdout_every = max(2, holdout_every)
        self.keyframes: deque[Keyframe] = deque(maxlen=capacity)
        self.offered = 0
        self.serial = 0

    def __len__(self) -> int:
        return len(self.keyframes)

    def offer(self, rgb: np.ndarray, stamp_ns: int) -> bool:
        """Keep ``rgb`` (``[H, W, 3]`` uint8) if it moved enough from the last keyframe; True if kept."""
        from .parallax import pair_motion
        from spidepth_ros.geometry import matrix_to_axis_angle

        self.offered += 1
        if not self.keyframes:
            self._add(Keyframe(self.serial, rgb.copy(), stamp_ns))
            return True
        motion = pair_motion(self.keyframes[-1].rgb, rgb, self.k_pixels)
        if not (math.isfinite(motion.parallax_px) and motion.parallax_px >= self.target_parallax_px):
            return False
        self._add(Keyframe(self.serial, rgb.copy(), stamp_ns, motion.parallax_px,
                           matrix_to_axis_angle(motion.rotation).astype(np.float32)))
        return True

    def _add(self, keyframe: Keyframe) -> None:
        self.keyframes.append(keyframe)
        self.serial += 1

    def held_out(self, keyframe: Keyframe) -> bool:
        return keyframe.serial % self.holdout_every == HOLDOUT_PHASE

    def frame_store(self, k_normalized: np.ndarray):
        """The keyframes as a training :class:`~spidepth_ros.training.data.FrameStore` (offset-1 motion tables:
        entry ``i`` is keyframe ``i`` -> ``i + 1``)."""
        from .data import FrameStore

        frames = list(self.keyframes)
        n = len(frames)
        parallax = np.full((n, 1), np.nan, np.float32)
        rotation_vec = np.full((n, 1, 3), np.nan, np.float32)
        for i in range(n - 1):
            parallax[i, 0] = frames[i + 1].parallax_px
            rotation_vec[i, 0] = frames[i + 1].rotation_vec
        rotation_deg = np.degrees(np.linalg.norm(rotation_vec, axis=2))
        return FrameStore(np.stack([f.rgb for f in frames]), np.array([f.stamp_ns for f in frames], np.int64),
                          np.asarray(k_normalized, np.float32), np.zeros(n, np.float32), "adaptation buffer",
                          parallax, rotation_deg, rotation_vec)

    def triplets(self) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
        """``(train, held_out)`` triplets ``(0, prev, target, next)`` of consecutive keyframes; a held-out
        keyframe is never a training target (the depth network never sees it as input), only a source."""
        train, held = [], []
        for t in range(1, len(self.keyframes) - 1):
            (held if self.held_out(self.keyframes[t]) else train).append((0, t - 1, t, t + 1))
        return train, held


@dataclass(frozen=True)
class GuardReport:
    """The guard's verdict on a candidate against the running (current) model, on held-out keyframes."""

    accepted: bool
    reason: str                      # why rejected ("" when accepted)
    photometric_current: float       # view-synthesis error with refined poses (lower is better)
    photometric_candidate: float
    spread_current: float            # depth p95 / p5 over the held-out targets
    spread_candidate: float
    scale_ratio: float               # candidate median depth / current median depth
    triplets: int


def _held_out_numbers(trainer, batches: list[dict]) -> tuple[float, float, float]:
    """(photometric, p95/p5 spread, median depth) of ``trainer``'s depth network on held-out batches."""
    import torch

    photometric, depths, count = 0.0, [], 0
    trainer.depth_net.eval()
    with torch.no_grad():
        for batch in batches:
            out = trainer.compute_loss(batch)        # the refined poses' error; the PoseNet extras are not needed
            n = len(batch["index"])
            photometric += float(out["photometric"]) * n
            count += n
            depths.append(out["depth"].flatten())
    trainer.depth_net.train()
    d = torch.cat(depths)
    p5, p50, p95 = (float(v) for v in torch.quantile(d[:: max(1, len(d) // 200_000)],
                                                      torch.tensor([0.05, 0.5, 0.95])))
    return photometric / max(count, 1), p95 / max(p5, 1e-9), p50


def judge_candidate(trainer, current_state: dict, batches: list[dict], settings: AdaptSettings) -> GuardReport:
    """Score the trainer's depth network (the candidate) against ``current_state`` (the running model's depth
    weights) on held-out ``batches``; the trainer's depth network is left holding the candidate."""
    import copy

    candidate_state = copy.deepcopy(trainer.depth_net.state_dict())
    trainer.depth_net.load_state_dict(current_state)
    cur = _held_out_numbers(trainer, batches)
    trainer.depth_net.load_state_dict(candidate_state)
    cand = _held_out_numbers(trainer, batches)
    reason = ""
    if not math.isfinite(cand[0]):
        reason = "the candidate's photometric error is not finite"
    elif cand[0] > cur[0] * (1 + settings.photometric_tolerance):
        reason = (f"held-out photometric error rose from {cur[0]:.4f} to {cand[0]:.4f} (tolerance "
                  f"{settings.photometric_tolerance:.0%})")
    elif cand[1] < settings.min_spread_ratio * cur[1]:
        reason = (f"depth spread (p95/p5) fell from {cur[1]:.2f} to {cand[1]:.2f}, below "
                  f"{settings.min_spread_ratio:g}x: flattening towards a collapse")
    elif abs(cand[2] / cur[2] - 1) > settings.max_scale_drift:
        reason = (f"median depth moved {cand[2] / cur[2]:.2f}x against the running model (limit "
                  f"{settings.max_scale_drift:.0%}): scale drift")
    return GuardReport(not reason, reason, cur[0], cand[0], cur[1], cand[1], cand[2] / cur[2],
                       sum(len(b["index"]) for b in batches))


def adaptation_config(settings: AdaptSettings):
    """The default training recipe (config/train.yaml's values are the dataclass defaults) set up to fine-tune
    the running model on the buffer."""
    from .config import config_from_dict

    return config_from_dict({
        "model": {"init": settings.model_path},
        "data": {"target_parallax_px": settings.target_parallax_px, "max_frame_offset": 1},
        "optim": {"batch_size": settings.batch_size},
        "device": settings.device, "threads": settings.threads, "seed": settings.seed,
        "out_dir": settings.out_dir})


def _collate(dataset, indices: list[int]) -> dict:
    import torch

    items = [dataset[i] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def write_model(trainer, path: Path, export_onnx: bool) -> Path:
    """The trainer's weights as a model file the node loads (``.pt``; with ``export_onnx`` also the ``.onnx``
    and its sidecar next to it, returned instead). Written atomically (save_checkpoint)."""
    from spidepth_ros.checkpoint import save_checkpoint

    save_checkpoint(path, trainer.preset, trainer.depth_net, trainer.pose_net)
    if not export_onnx:
        return path
    from spidepth_ros.export import export_onnx as export

    onnx_path = path.with_suffix(".onnx")
    export(path, onnx_path)
    return onnx_path


class Worker:
    """The worker's state and one iteration of its loop (:func:`worker_main` runs it in its own process; tests
    drive it in-process, step by step)."""

    def __init__(self, settings: AdaptSettings) -> None:
        import copy

        import torch

        from spidepth_ros.geometry import PinholeIntrinsics

        from .trainer import Trainer

        self.settings = settings
        torch.set_num_threads(max(1, settings.threads))
        torch.manual_seed(settings.seed)
        self.cfg = adaptation_config(settings)
        self.trainer = Trainer(self.cfg, torch.device(settings.device))
        k_norm = np.asarray(settings.k_normalized, np.float64)
        k_pix = PinholeIntrinsics.from_normalized(k_norm, settings.width, settings.height).matrix()
        self.buffer = KeyframeBuffer(k_pix, settings.target_parallax_px, settings.buffer_frames,
                                     settings.holdout_every)
        self.current_state = copy.deepcopy(self.trainer.depth_net.state_dict())
        self.rng = np.random.default_rng(settings.seed)
        self.steps = self.accepted = self.rejected = 0
        self.busy_s = 0.0
        self.started = time.monotonic()
        self.last_report: Optional[GuardReport] = None

    def offer(self, rgb: np.ndarray, stamp_ns: int) -> None:
        self.buffer.offer(rgb, stamp_ns)

    def ready(self) -> bool:
        train, held = self.buffer.triplets()
        return len(train) >= self.settings.min_train_triplets and len(held) >= 1

    def train_step(self) -> dict:
        """One training step on a random batch of buffer triplets."""
        from .data import TripletDataset

        s = self.settings
        train, _ = self.buffer.triplets()
        dataset = TripletDataset([self.buffer.frame_store(np.asarray(s.k_normalized))], train, s.width, s.height,
                                 augment=True, seed=s.seed)
        dataset.set_epoch(self.steps)
        picks = self.rng.choice(len(train), size=min(s.batch_size, len(train)), replace=False).tolist()
        out = self.trainer.train_step(_collate(dataset, picks))
        self.steps += 1
        return out

    def judge(self) -> GuardReport:
        """Judge the current weights on the newest held-out triplets; accept (they become the reference) or
        reject (the network goes back to the last accepted weights)."""
        import copy

        from .data import TripletDataset

        s = self.settings
        _, held = self.buffer.triplets()
        held = held[-s.guard_triplets:]
        dataset = TripletDataset([self.buffer.frame_store(np.asarray(s.k_normalized))], held, s.width, s.height,
                                 augment=False)
        batches = [_collate(dataset, list(range(i, min(i + s.batch_size, len(held)))))
                   for i in range(0, len(held), s.batch_size)]
        report = judge_candidate(self.trainer, self.current_state, batches, s)
        if report.accepted:
            self.current_state = copy.deepcopy(self.trainer.depth_net.state_dict())
            self.accepted += 1
        else:
            self.trainer.depth_net.load_state_dict(self.current_state)
            self.rejected += 1
        self.last_report = report
        return report

    def status(self) -> dict:
        train, held = self.buffer.triplets()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"steps": self.steps, "accepted": self.accepted, "rejected": self.rejected,
                "keyframes": len(self.buffer), "frames_offered": self.buffer.offered,
                "train_triplets": len(train), "held_out_triplets": len(held),
                "time_share": self.busy_s / elapsed}


def worker_main(settings: AdaptSettings, inbox, outbox) -> None:
    """The worker process: frames in (``("frame", rgb, stamp_ns)``; ``("stop",)`` ends it), messages out:
    ``("accepted", model_path, report, status)``, ``("rejected", reason, report, status)``, ``("status", status)``,
    ``("error", text)``. Its compute is held to ``settings.max_share`` of wall time by sleeping after each step."""
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the node stops this worker itself (a "stop" message,
    # then terminate), so the worker ignores SIGINT instead of dying with a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    if settings.device == "cpu" and hasattr(os, "nice"):
        os.nice(10)                   # the node's inference keeps priority over training on a shared CPU
    import cv2

    cv2.setNumThreads(max(1, settings.threads))     # OpenCV's own pool (tracking, resizing) stays within its share
    try:
        worker = Worker(settings)
    except Exception as exc:  # the node reports it; nothing else to do here
        outbox.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outbox.put(("status", worker.status()))
    share = min(max(settings.max_share, 0.01), 1.0)
    while True:
        if os.getppid() != parent:   # the node died without stopping us (SIGKILL): nobody reads our models
            return
        try:
            deadline = time.monotonic() + (0.0 if worker.ready() else 0.1)
            while True:                  # take every frame waiting (measuring parallax is part of the work)
                timeout = max(0.0, deadline - time.monotonic())
                message = inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
                if message[0] == "stop":
                    return
                start = time.monotonic()
                worker.offer(message[1], message[2])
                worker.busy_s += time.monotonic() - start
                outbox.put(("status", worker.status()))        # a small dict; the node keeps the last one
        except queue.Empty:
            pass
        if not worker.ready():
            continue
        start = time.monotonic()
        try:
            worker.train_step()
            if worker.steps % settings.steps_per_candidate == 0:
                report = worker.judge()
                if report.accepted:
                    path = write_model(worker.trainer, out_dir / f"adapted_{worker.accepted:04d}.pt",
                                       settings.export_onnx)
                    outbox.put(("accepted", str(path), asdict(report), worker.status()))
                else:
                    outbox.put(("rejected", report.reason, asdict(report), worker.status()))
        except Exception as exc:  # a failed step is reported; the node keeps its model
            outbox.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        spent = time.monotonic() - start
        worker.busy_s += spent
        time.sleep(spent * (1.0 / share - 1.0))       # hold the worker to its share of the machine
