"""Self-supervised adaptation while the node runs: a keyframe buffer, a guard, and the worker process's loop.

The node (``depth_node`` with ``adapt: true``) hands every frame it infers, resized to the network's input, to a
worker process (:class:`spidepth_ros.adaptation.AdaptationProcess` starts it with :func:`worker_main`). The
worker keeps the frames that moved enough (:class:`KeyframeBuffer`: measured translation parallax to the last
keyframe at least the training recipe's ``data.target_parallax_px``; a camera that only turns adds nothing),
trains the depth network with the default training recipe (``config/train.yaml``: image-rotation start, LM pose
refinement) on triplets of consecutive keyframes, and every ``steps_per_candidate`` steps judges a candidate on
keyframes it never trained on (:func:`judge_candidate`): a moving average of the trained weights (``ema_decay``),
steadier than the last step's. Accepted weights are written as a model file and announced; rejected ones are
dropped (training goes back to the last accepted point) with the reason.

Frames and messages cross the process boundary through ``multiprocessing`` queues between the node and the
worker it started (the same program, trusted): no file or network input is unpickled.
"""
from __future__ import annotations

import math
import os
import queue
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

#: keyframe serial numbers n with n % holdout_every == HOLDOUT_PHASE are never training targets
HOLDOUT_PHASE = 0
#: the checkpoint entry that makes a saved model a resumable adaptation state (Worker.save_state)
STATE_KEY = "adaptation"


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
    photometric_tolerance: float = 0.0           # reject when the held-out photometric error is above (1 + this)
                                                 # x the running model's; negative asks for an improvement (asking
                                                 # 10 % did not steady the gain on the real sequence: docs)
    min_spread_ratio: float = 0.4                # reject when the depth spread (p95/p5) on the held-out frames falls
                                                 # below this x the start model's on the same frames (a collapse
                                                 # goes towards 1; on the real sequence candidates at 0.51-0.68x were
                                                 # all closer to the truth, docs/real_data.md)
    max_scale_change: float = 4.0                # reject when the median depth moves beyond this factor (either
                                                 # way) vs current; within it the written model's depth_scale
                                                 # takes the change back (monocular scale is free to drift)
    scale_frames: int = 48                       # keyframes (all of the buffer, evenly spaced) the scale change is
                                                 # measured on: a network's change varies 0.87-1.19x from frame to
                                                 # frame (docs/real_data.md), so a few held-out frames mis-measure it
    export_onnx: bool = False                    # also write an ONNX (+ sidecar) for the ONNX Runtime backend
    learning_rate: float = 1e-4                  # the default recipe's optim.lr (config/train.yaml)
    ema_decay: float = 0.97                      # > 0: the candidate is an exponential moving average of the
                                                 # trained weights (this decay per step, ~33 steps), not the last
                                                 # step's: on the real sequence it narrowed the run-to-run spread
                                                 # of the gain (bench/adapt_offline.py, docs/real_data.md); 0: off
    scale_anchor: float = 1.0                    # weight of a loss holding each training frame's mean log depth
                                                 # to the start model's (losses.scale_anchor_loss), so the scale
                                                 # stays per frame, not only on average: in the offline simulation
                                                 # of the real sequence the published scale then moved 0.93-0.96x
                                                 # instead of 1.29-1.92x and the gain rose (bench/adapt_offline.py);
                                                 # over DDS it still moved 1.27-1.36x (docs/real_data.md); 0: off
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

    def state(self) -> dict:
        """The buffer as tensors and numbers (a checkpoint entry that loads with ``weights_only=True``)."""
        import torch

        frames = list(self.keyframes)
        h, w = (frames[0].rgb.shape[:2]) if frames else (0, 0)
        return {"rgb": torch.from_numpy(np.stack([f.rgb for f in frames]) if frames
                                        else np.zeros((0, h, w, 3), np.uint8)),
                "stamp_ns": torch.tensor([f.stamp_ns for f in frames], dtype=torch.int64),
                "serial": torch.tensor([f.serial for f in frames], dtype=torch.int64),
                "parallax_px": torch.tensor([f.parallax_px for f in frames], dtype=torch.float32),
                "rotation_vec": torch.from_numpy(np.stack([f.rotation_vec for f in frames]) if frames
                                                 else np.zeros((0, 3), np.float32)),
                "k_pixels": torch.from_numpy(self.k_pixels.copy()), "next_serial": self.serial,
                "offered": self.offered}

    def restore(self, state: dict, width: int, height: int) -> str:
        """Take the keyframes of :meth:`state` back; returns why not ("" when restored): they must have this
        network size (``width`` x ``height``) and intrinsics (another camera starts an empty buffer)."""
        rgb = state["rgb"].numpy()
        if len(rgb) and tuple(rgb.shape[1:]) != (height, width, 3):
            return f"the saved keyframes are {rgb.shape[2]}x{rgb.shape[1]}, the network takes {width}x{height}"
        if not np.allclose(state["k_pixels"].numpy(), self.k_pixels, rtol=1e-3, atol=1e-2):
            return "the saved keyframes were taken with other camera intrinsics"
        self.keyframes.clear()
        for i in range(len(rgb)):
            self.keyframes.append(Keyframe(int(state["serial"][i]), rgb[i].copy(), int(state["stamp_ns"][i]),
                                           float(state["parallax_px"][i]), state["rotation_vec"][i].numpy().copy()))
        self.serial, self.offered = int(state["next_serial"]), int(state["offered"])
        return ""

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
    spread_start: float              # the model adaptation started from, same frames (the flattening reference)
    scale_ratio: float               # candidate / current depth: median over keyframes of per-frame medians
    scale_ratio_start: float         # candidate / start model, the same way (nan without keyframes or start):
                                     # what the written depth_scale divides out of the start model's
    triplets: int


def _spread(depths: list) -> tuple[float, float]:
    """(p95 / p5, median) of the depth values pooled from ``depths`` (tensors of any shape)."""
    import torch

    d = torch.cat([x.flatten() for x in depths])
    p5, p50, p95 = (float(v) for v in torch.quantile(d[:: max(1, len(d) // 200_000)],
                                                      torch.tensor([0.05, 0.5, 0.95])))
    return p95 / max(p5, 1e-9), p50


@contextmanager
def depth_weights(trainer, state: dict):
    """The trainer's depth network holds ``state`` inside the block and its own weights again after it."""
    import copy

    held = copy.deepcopy(trainer.depth_net.state_dict())
    trainer.depth_net.load_state_dict(state)
    try:
        yield trainer.depth_net
    finally:
        trainer.depth_net.load_state_dict(held)


@contextmanager
def evaluating(net):
    """``net`` in eval mode inside the block (BatchNorm uses its running statistics, none are updated) and in
    train mode after it: the worker's networks are always training outside a guard measurement."""
    net.eval()
    try:
        yield net
    finally:
        net.train()


def _start_numbers(trainer, start_state: dict, batches: list[dict], scale_images=None):
    """``(spread, medians)``: the start weights' depth spread (p95 / p5) on the held-out batches' targets (the
    depth network's input only: no poses needed) and their per-frame medians on ``scale_images`` (None without);
    the trainer's depth network is left as it was."""
    import torch

    with depth_weights(trainer, start_state) as net:
        with evaluating(net), torch.no_grad():
            spread = _spread([trainer.predict_depth(b["target"].to(trainer.device)) for b in batches])[0]
        return spread, (_frame_medians(trainer, scale_images) if scale_images is not None else None)


def _held_out_numbers(trainer, batches: list[dict]) -> tuple[float, float, float]:
    """(photometric, p95/p5 spread, median depth) of ``trainer``'s depth network on held-out batches."""
    import torch

    photometric, depths, count = 0.0, [], 0
    with evaluating(trainer.depth_net), torch.no_grad():
        for batch in batches:
            out = trainer.compute_loss(batch)        # the refined poses' error; the PoseNet extras are not needed
            n = len(batch["index"])
            photometric += float(out["photometric"]) * n
            count += n
            depths.append(out["depth"].flatten())
    spread, median = _spread(depths)
    return photometric / max(count, 1), spread, median


def _frame_medians(trainer, images):
    """Per-frame median depth ``[N]`` (model units) of ``trainer``'s depth network on ``images`` ``[N, 3, H, W]``."""
    import torch

    with evaluating(trainer.depth_net), torch.no_grad():
        return torch.cat([trainer.predict_depth(images[i:i + 8]).flatten(1).median(dim=1).values
                          for i in range(0, len(images), 8)])


def judge_candidate(trainer, current_state: dict, batches: list[dict], settings: AdaptSettings,
                    scale_images=None, start_state: Optional[dict] = None) -> GuardReport:
    """Score the trainer's depth network (the candidate) against ``current_state`` (the running model's depth
    weights) on held-out ``batches``; the trainer's depth network is left holding the candidate.

    The scale change is the median over ``scale_images`` (``[N, 3, H, W]``, keyframes; default: the held-out
    targets' pixels pooled) of each frame's candidate / current median depth. The depth spread is compared with
    ``start_state``'s (the weights adaptation started from) on the same frames; default: the current model's.
    Anchored to the start, a run of candidates each a little flatter than the last cannot walk into a collapse."""
    with depth_weights(trainer, current_state):
        cur = _held_out_numbers(trainer, batches)
        cur_medians = _frame_medians(trainer, scale_images) if scale_images is not None else None
    cand = _held_out_numbers(trainer, batches)
    spread_start, start_medians = cur[1], None
    if start_state is not None:
        spread_start, start_medians = _start_numbers(trainer, start_state, batches, scale_images)
    scale_ratio, scale_ratio_start = cand[2] / cur[2], float("nan")
    if cur_medians is not None:
        cand_medians = _frame_medians(trainer, scale_images)
        scale_ratio = float((cand_medians / cur_medians.clamp_min(1e-9)).median())
        if start_medians is not None:
            scale_ratio_start = float((cand_medians / start_medians.clamp_min(1e-9)).median())
    reason = ""
    if not math.isfinite(cand[0]):
        reason = "the candidate's photometric error is not finite"
    elif cand[0] > cur[0] * (1 + settings.photometric_tolerance):
        tolerance = settings.photometric_tolerance
        reason = (f"held-out photometric error went from {cur[0]:.4f} to {cand[0]:.4f}: " +
                  (f"not the {-tolerance:.0%} improvement a swap needs" if tolerance < 0 else
                   f"rose by more than the tolerated {tolerance:.0%}"))
    elif not cand[1] >= settings.min_spread_ratio * spread_start:
        reason = (f"depth spread (p95/p5) {cand[1]:.2f} is below {settings.min_spread_ratio:g}x the start model's "
                  f"{spread_start:.2f} on the same frames: flattening towards a collapse")
    elif not (1 / settings.max_scale_change <= scale_ratio <= settings.max_scale_change):
        reason = (f"median depth moved {scale_ratio:.2f}x against the running model, beyond the "
                  f"{settings.max_scale_change:g}x a depth_scale correction may take")
    return GuardReport(not reason, reason, cur[0], cand[0], cur[1], cand[1], spread_start, scale_ratio,
                       scale_ratio_start, sum(len(b["index"]) for b in batches))


def adaptation_config(settings: AdaptSettings):
    """The default training recipe (config/train.yaml's values are the dataclass defaults) set up to fine-tune
    the running model on the buffer."""
    from .config import config_from_dict

    return config_from_dict({
        "model": {"init": settings.model_path},
        "data": {"target_parallax_px": settings.target_parallax_px, "max_frame_offset": 1},
        "loss": {"scale_anchor": settings.scale_anchor},
        "optim": {"batch_size": settings.batch_size, "lr": settings.learning_rate},
        "device": settings.device, "threads": settings.threads, "seed": settings.seed,
        "out_dir": settings.out_dir})


def _collate(dataset, indices: list[int]) -> dict:
    import torch

    items = [dataset[i] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def write_model(trainer, path: Path, export_onnx: bool, depth_scale: float) -> Path:
    """The trainer's weights as a model file the node loads (``.pt`` with its ``depth_scale``: model units ->
    published metres; with ``export_onnx`` also the ``.onnx`` and its sidecar next to it, returned instead).
    Written atomically (save_checkpoint)."""
    from spidepth_ros.checkpoint import save_checkpoint

    save_checkpoint(path, trainer.preset, trainer.depth_net, trainer.pose_net, config=trainer.cfg.to_dict(),
                    depth_scale=float(depth_scale))     # the config says how its PoseNet was trained
    if not export_onnx:
        return path
    from spidepth_ros.export import export_onnx as export

    onnx_path = path.with_suffix(".onnx")
    export(path, onnx_path)
    return onnx_path


def _checkpoint_depth_scale(path: Path) -> float:
    """The ``depth_scale`` a model file carries (1.0 where it has none, e.g. an official folder)."""
    if path.suffix != ".pt":
        return 1.0
    from spidepth_ros.checkpoint import load_weights

    return float(load_weights(path).extra.get("depth_scale") or 1.0)


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
        self.rng = np.random.default_rng(settings.seed)
        self.steps = self.accepted = self.rejected = 0
        self.resumed = ""                # what a saved adaptation state gave back (status and log)
        # the start model's depth_scale (model units -> metres): each accepted candidate's whole scale change
        # since the start, measured on the buffer of that moment, is divided out of it (not the product of the
        # per-swap changes, each measured on the fewer keyframes of its time: their errors would accumulate)
        # (nan for a resumed state saved without it: then the per-swap changes are divided out one by one)
        self.start_depth_scale = _checkpoint_depth_scale(Path(settings.model_path))
        self.depth_scale = self.start_depth_scale      # the running model's: the node publishes the same metres
        self._resumed_trained: Optional[dict] = None
        # the weights adaptation started from: the depth spread's reference (a resumed run keeps its own start)
        self.start_state = copy.deepcopy(self.trainer.depth_net.state_dict())
        self._resume(Path(settings.model_path))
        # the scale anchor's reference network (the trainer's, loss.scale_anchor) holds the start weights: those
        # of the model file, or a resumed state's own start
        if self.trainer.anchor_net is not None:
            self.trainer.anchor_net.load_state_dict(self.start_state)
        # the accepted point a rejection goes back to: the published weights, and with averaging also the trained
        # weights the average follows (training goes on from those, not from the average), PoseNet and Adam
        self.current_state = copy.deepcopy(self.trainer.depth_net.state_dict())
        self.average: Optional[dict] = None
        self.current_trained: Optional[dict] = None
        if settings.ema_decay > 0:
            self.average = copy.deepcopy(self.current_state)
            if self._resumed_trained is not None:
                self.trainer.depth_net.load_state_dict(self._resumed_trained)
            self.current_trained = copy.deepcopy(self.trainer.depth_net.state_dict())
        self.current_training = self._training_state()
        self.busy_s = 0.0
        self.started = time.monotonic()
        self.last_report: Optional[GuardReport] = None

    def _resume(self, path: Path) -> None:
        """Continue a saved adaptation (:meth:`save_state`): optimiser, counters, RNGs and keyframes; a plain
        model file starts a new one."""
        from spidepth_ros.checkpoint import safe_torch_load

        if path.suffix != ".pt":
            return
        data = safe_torch_load(path)
        saved = data.get(STATE_KEY) if isinstance(data, dict) else None
        if not isinstance(saved, dict):
            return
        self.trainer.load(path)            # weights (the accepted ones), optimiser, scheduler, counters, torch RNG
        o = self.cfg.optim                 # this run's learning rate (adapt_learning_rate may have changed)
        for group, lr in zip(self.trainer.optimizer.param_groups,
                             (o.lr * o.encoder_lr_factor, o.lr, o.lr * o.pose_lr_factor)):
            group["lr"] = lr
        self.steps, self.accepted, self.rejected = (int(saved[k]) for k in ("steps", "accepted", "rejected"))
        self.rng.bit_generator.state = saved["rng"]
        self._resumed_trained = saved.get("trained")      # saved with weight averaging: the weights it follows
        if isinstance(saved.get("start"), dict):          # the spread's reference: the first run's start weights
            self.start_state = saved["start"]
        self.start_depth_scale = float(saved.get("start_depth_scale", math.nan))
        why_not = self.buffer.restore(saved["buffer"], self.settings.width, self.settings.height)
        self.resumed = (f"resumed {path.name} at step {self.steps}"
                        + (f" without its keyframes ({why_not})" if why_not else
                           f" with {len(self.buffer)} keyframes"))

    def _training_state(self) -> dict:
        """PoseNet's weights and the optimiser's state (Adam's moments), copied."""
        import copy

        return copy.deepcopy({"pose_net": self.trainer.pose_net.state_dict(),
                              "optimizer": self.trainer.optimizer.state_dict()})

    def _load_training_state(self, state: dict) -> None:
        import copy

        self.trainer.pose_net.load_state_dict(state["pose_net"])
        self.trainer.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))

    def save_state(self, path: Path) -> Path:
        """Write the last accepted weights with the training state (optimiser, counters, RNGs, keyframes) as one
        checkpoint, atomically: a model file the node runs, and a state a worker started from it continues."""
        training_now = self._training_state()
        self._load_training_state(self.current_training)
        try:
            with depth_weights(self.trainer, self.current_state):
                saved = {"steps": self.steps, "accepted": self.accepted, "rejected": self.rejected,
                         "rng": self.rng.bit_generator.state, "buffer": self.buffer.state(),
                         "start": self.start_state, "start_depth_scale": self.start_depth_scale}
                if self.current_trained is not None:
                    saved["trained"] = self.current_trained
                self.trainer.save(Path(path), depth_scale=float(self.depth_scale), **{STATE_KEY: saved})
        finally:
            self._load_training_state(training_now)
        return Path(path)

    def write_accepted(self, path: Path) -> Path:
        """The last accepted weights (with averaging: the average, not the trained weights the network holds
        now) as a model file with the corrected ``depth_scale``; returns the file the node should load."""
        with depth_weights(self.trainer, self.current_state):
            return write_model(self.trainer, Path(path), self.settings.export_onnx, self.depth_scale)

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
        batch = _collate(dataset, picks)
        out = self.trainer.train_step(batch)
        self.steps += 1
        if self.average is not None:
            self._update_average()
        return out

    def _update_average(self) -> None:
        """Move the weight average towards the trained weights (floats, BatchNorm statistics included; counters
        copied)."""
        import torch

        decay = self.settings.ema_decay
        with torch.no_grad():
            for key, value in self.trainer.depth_net.state_dict().items():
                if value.is_floating_point():
                    self.average[key].mul_(decay).add_(value, alpha=1.0 - decay)
                else:
                    self.average[key].copy_(value)

    def judge(self) -> GuardReport:
        """Judge the current weights on the newest held-out triplets; accept (they become the reference) or
        reject (the networks and the optimiser go back to the last accepted state)."""
        import copy

        from .data import TripletDataset

        s = self.settings
        _, held = self.buffer.triplets()
        held = held[-s.guard_triplets:]
        dataset = TripletDataset([self.buffer.frame_store(np.asarray(s.k_normalized))], held, s.width, s.height,
                                 augment=False)
        batches = [_collate(dataset, list(range(i, min(i + s.batch_size, len(held)))))
                   for i in range(0, len(held), s.batch_size)]
        trained = None
        if self.average is not None:     # the candidate is the average; training goes on from the trained weights
            trained = copy.deepcopy(self.trainer.depth_net.state_dict())
            self.trainer.depth_net.load_state_dict(self.average)
        report = judge_candidate(self.trainer, self.current_state, batches, s, self.scale_images(), self.start_state)
        if report.accepted:
            self.current_state = copy.deepcopy(self.trainer.depth_net.state_dict())
            if trained is not None:
                self.trainer.depth_net.load_state_dict(trained)
                self.current_trained = trained
            self.current_training = self._training_state()
            if math.isfinite(report.scale_ratio_start) and math.isfinite(self.start_depth_scale):
                self.depth_scale = self.start_depth_scale / report.scale_ratio_start
            else:
                self.depth_scale /= report.scale_ratio
            self.accepted += 1
        else:                # back to the accepted point: weights, PoseNet, Adam moments (a divergence leaves none)
            self.trainer.depth_net.load_state_dict(self.current_trained if self.current_trained is not None
                                                   else self.current_state)
            self._load_training_state(self.current_training)
            if self.average is not None:
                self.average = copy.deepcopy(self.current_state)
            self.rejected += 1
        self.last_report = report
        return report

    def scale_indices(self) -> list[int]:
        """The keyframes (indices into the buffer, at most ``scale_frames``, evenly spaced) the guard measures a
        candidate's scale change on."""
        n = len(self.buffer)
        return sorted(set(np.linspace(0, n - 1, min(n, self.settings.scale_frames)).round().astype(int).tolist()))

    def scale_images(self):
        """``[N, 3, H, W]`` float tensor of :meth:`scale_indices`, prepared as the depth network's training input."""
        import torch

        from .data import TripletDataset

        s = self.settings
        n = len(self.buffer)
        triplets = [(0, max(i - 1, 0), i, min(i + 1, n - 1)) for i in self.scale_indices()]
        dataset = TripletDataset([self.buffer.frame_store(np.asarray(s.k_normalized))], triplets, s.width, s.height,
                                 augment=False)
        return torch.stack([dataset[i]["target"] for i in range(len(triplets))])

    def status(self) -> dict:
        train, held = self.buffer.triplets()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"steps": self.steps, "accepted": self.accepted, "rejected": self.rejected, "resumed": self.resumed,
                "keyframes": len(self.buffer), "frames_offered": self.buffer.offered,
                "train_triplets": len(train), "held_out_triplets": len(held),
                "time_share": self.busy_s / elapsed}


def save_state(worker: Worker, path: Path, export_onnx: bool) -> tuple[str, str]:
    """``(file, "")`` after writing the worker's state (and its ONNX export beside it, for a node on ONNX
    Runtime), or ``("", why not)``: a failed save is answered, it does not stop the worker."""
    try:
        worker.save_state(path)
        if export_onnx:
            from spidepth_ros.export import export_onnx as export

            export(path, path.with_suffix(".onnx"))
        return str(path), ""
    except Exception as exc:  # a full disk, a read-only folder: the caller is told
        return "", f"{type(exc).__name__}: {exc}"


def worker_main(settings: AdaptSettings, inbox, outbox) -> None:
    """The worker process: messages in: ``("frame", rgb, stamp_ns)``, ``("save", request_id, path)`` (write the
    adaptation state, :meth:`Worker.save_state`), ``("stop",)``; messages out: ``("accepted", model_path, report,
    status)``, ``("rejected", reason, report, status)``, ``("saved", request_id, path, error)``, ``("status",
    status)``, ``("error", text)``. Its compute is held to ``settings.max_share`` of wall time by sleeping after
    each step."""
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
                if message[0] == "save":
                    outbox.put(("saved", message[1], *save_state(worker, Path(message[2]), settings.export_onnx)))
                    continue
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
                    path = worker.write_accepted(out_dir / f"adapted_{worker.accepted:04d}.pt")
                    outbox.put(("accepted", str(path), asdict(report), worker.status()))
                else:
                    outbox.put(("rejected", report.reason, asdict(report), worker.status()))
        except Exception as exc:  # a failed step is reported; the node keeps its model
            outbox.put(("error", f"{type(exc).__name__}: {exc}"))
            return
        spent = time.monotonic() - start
        worker.busy_s += spent
        time.sleep(spent * (1.0 / share - 1.0))       # hold the worker to its share of the machine
