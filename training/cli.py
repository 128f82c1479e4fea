"""``spidepth-train``: self-supervised training on rosbag2 recordings.

Examples::

    spidepth-train --config config/train.yaml --bags run1 run2 --out runs/mine
    spidepth-train --config config/train.yaml --set optim.lr=5e-5 model.init=/path/to/official/kitti
    torchrun --nproc_per_node 2 -m spidepth_ros.training.cli --config config/train.yaml
    spidepth-train --resume runs/mine/last.pt      # continues exactly where it stopped
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from spidepth_ros.bagio import BagError, check_bag_path
from spidepth_ros.metrics import EvalSettings, summarize

from .config import TrainConfig, config_from_dict, load_config, save_config, upgrade_saved_config
from .data import build_datasets
from .diagnostics import EpochDiagnostics, collapse_warnings, drift_references, validation_warnings
from .trainer import Trainer, init_distributed, resolve_device


def image_panel(batch: dict, depth: torch.Tensor, count: int = 4) -> np.ndarray:
    """``[3, N*H, 2*W]`` float panel: input | colourised predicted depth, for TensorBoard."""
    from spidepth_ros.colorize import colorize_depth

    rows = []
    for i in range(min(count, depth.shape[0])):
        rgb = batch["target"][i].permute(1, 2, 0).numpy()
        col = colorize_depth(depth[i, 0].cpu().numpy())[..., ::-1].astype(np.float32) / 255.0
        rows.append(np.concatenate([rgb, col], axis=1))
    return np.concatenate(rows, axis=0).transpose(2, 0, 1)


def auto_threads(workers: int, cpu_count: Optional[int] = None, local_world_size: Optional[int] = None) -> int:
    """torch CPU threads for ``threads: 0``: the CPUs this process may use (its affinity mask, so a container or
    ``taskset`` limit counts), shared among the torchrun processes on this machine and their DataLoader workers.
    torch's own default takes every core for every process, which oversubscribes a loaded machine."""
    if cpu_count is None:
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cpu_count // (max(1, local_world_size) * (1 + max(0, workers))))


#: validation budget per epoch: triplets for the photometric errors, frames for the depth metrics; both spread
#: evenly over the whole validation set (training/evaluate.py:spread_indices)
VAL_TRIPLETS = 120
VAL_DEPTH_FRAMES = 40
#: per-triplet validation numbers averaged into the epoch's row (val_<name>)
VAL_KEYS = ("photometric", "photometric_posenet", "photometric_start", "posenet_rotation_error_deg",
            "posenet_direction_error_deg", "start_rotation_error_deg", "refined_rotation_error_deg",
            "refined_direction_error_deg", "refine_posenet_start_fraction")


def validate(trainer: Trainer, val_set, cfg: TrainConfig, max_triplets: int = VAL_TRIPLETS,
             depth_frames: int = VAL_DEPTH_FRAMES) -> dict:
    """Validation numbers of one epoch, on triplets and frames spread evenly over the validation set.

    ``val_photometric``: the view-synthesis error with the poses training uses (refined on these very frames, so
    test-time optimised); ``val_photometric_posenet``: with PoseNet's poses alone (a plain number: what PoseNet
    learned, and the depth through it); ``val_photometric_start``: with the refinement's start poses. Pose errors
    against recorded poses where the bags have them; depth metrics when ``data.depth_topic`` is set.
    """
    from torch.utils.data import DataLoader, Subset

    from .evaluate import spread_indices

    trainer.depth_net.eval()
    trainer.pose_net.eval()
    sums: dict = {}
    counts: dict = {}
    subset = Subset(val_set, spread_indices(len(val_set), max_triplets).tolist())
    with torch.no_grad():
        for batch in DataLoader(subset, batch_size=cfg.optim.batch_size):
            out = trainer.compute_loss(batch, validation=True)
            n = len(batch["index"])
            for key in VAL_KEYS:
                if key in out and bool(torch.isfinite(torch.as_tensor(out[key]))):
                    sums[key] = sums.get(key, 0.0) + float(out[key]) * n
                    counts[key] = counts.get(key, 0) + n
        result = {f"val_{k}": sums[k] / counts[k] for k in sums}
        result.setdefault("val_photometric", float("nan"))
        result["val_triplets"] = float(len(subset))
        if cfg.data.depth_topic:
            result.update(depth_metrics(trainer, cfg, depth_frames))
    trainer.depth_net.train()
    trainer.pose_net.train()
    return result


def depth_metrics(trainer: Trainer, cfg: TrainConfig, frames: int = VAL_DEPTH_FRAMES) -> dict:
    from spidepth_ros.runtime.preprocess import Preprocessor

    from .evaluate import evaluate_bags

    preset = trainer.preset
    pre = Preprocessor(preset.width, preset.height)
    bags = [Path(b) for b in (cfg.data.val_bags or cfg.data.bags)]

    def predict(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(pre.prepare(rgb).tensor).to(trainer.device)
        return trainer.depth_net(x)[0, 0].float().cpu().numpy()

    rows = evaluate_bags(predict, bags, cfg.data.image_topic, cfg.data.depth_topic,
                         EvalSettings(preset.min_depth, cfg.data.eval_max_depth or preset.max_depth),
                         spread=frames, progress=False)
    s = summarize(rows)
    out = {f"val_{k}": v for k, v in s.items()
           if k in ("abs_rel", "rmse", "a1", "scale_median", "const_abs_rel", "const_a1")}
    out["val_depth_frames"] = float(len(rows))
    return out


def build_datasets_once(data_cfg, width: int, height: int, cache: Path, seed: int, progress: bool, dist_info):
    """:func:`build_datasets` with the frame cache filled by the main process only: under torchrun the other
    ranks wait at a barrier and then read the finished cache (concurrent decoding of one bag raced)."""
    import torch.distributed as dist

    if dist_info.world_size == 1:
        return build_datasets(data_cfg, width, height, cache, seed, progress=progress)
    data = build_datasets(data_cfg, width, height, cache, seed, progress=progress) if dist_info.is_main else None
    dist.barrier()
    return data if data is not None else build_datasets(data_cfg, width, height, cache, seed, progress=False)


class BestTracker:
    """Which epoch is best: by validation AbsRel when the validation bags carry depth, else by the photometric
    error with PoseNet's poses (not by the refined poses' error: the refinement optimises on the frames it scores).

    Epoch 0 is the initial model, so best.pt is never worse than the model training started from.
    """

    def __init__(self) -> None:
        self.key: Optional[str] = None
        self.value = float("inf")
        self.epoch: Optional[int] = None
        self.initial_abs_rel: Optional[float] = None

    def update(self, epoch: int, result: dict) -> bool:
        key = next((k for k in ("val_abs_rel", "val_photometric_posenet", "val_photometric") if k in result), None)
        if key is None:
            return False
        if epoch == 0 and "val_abs_rel" in result:
            self.initial_abs_rel = result["val_abs_rel"]
        if self.key != key:                        # depth metrics appeared: compare like with like from now on
            self.key, self.value = key, float("inf")
        if result[key] < self.value:
            self.value, self.epoch = result[key], epoch
            return True
        return False

    @classmethod
    def from_history(cls, history: list[dict]) -> "BestTracker":
        """The best so far of a run's earlier epochs (:func:`read_history` rows)."""
        tracker = cls()
        for row in history:
            tracker.update(int(row.get("epoch", -1)), row)
        return tracker


def read_history(metrics_file: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (one per epoch, oldest first); none when it does not exist."""
    if not metrics_file.exists():
        return []
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]


def remove_stale_partial_saves(out_dir: Path) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` files a killed save left (atomic_torch_save), unless that process still runs."""
    removed = []
    for tmp in out_dir.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists():
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config (see config/train.yaml)")
    p.add_argument("--bags", nargs="*", help="override data.bags")
    p.add_argument("--val-bags", nargs="*", help="override data.val_bags")
    p.add_argument("--out", help="override out_dir")
    p.add_argument("--resume", type=Path, help="training checkpoint to continue (its saved config is used)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. optim.lr=1e-4 (may be given several times)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    overrides = list(args.set)
    if args.bags:
        overrides.append(f"data.bags={json.dumps(args.bags)}")
    if args.val_bags:
        overrides.append(f"data.val_bags={json.dumps(args.val_bags)}")
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.resume:
        from .config import apply_overrides
        from spidepth_ros.checkpoint import safe_torch_load

        saved = safe_torch_load(args.resume)
        cfg = config_from_dict(apply_overrides(upgrade_saved_config(saved.get("config", {})), overrides))
    else:
        cfg = load_config(args.config, overrides)
    threads = cfg.threads or auto_threads(cfg.data.workers)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    dist_probe = init_distributed(resolve_device(cfg.device))
    device = resolve_device(cfg.device, dist_probe)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:                                 # before any model is built: a typo in a path fails in a second
        for bag in [*cfg.data.bags, *cfg.data.val_bags]:
            check_bag_path(bag)
    except BagError as exc:
        print(f"spidepth-train: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist_probe.is_main:
        remove_stale_partial_saves(out_dir)

    trainer = Trainer(cfg, device, dist_probe)
    preset = trainer.preset
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
    data = build_datasets_once(cfg.data, preset.width, preset.height, cache, cfg.seed,
                               progress=dist_probe.is_main and not args.no_progress, dist_info=dist_probe)
    if args.resume:
        trainer.load(args.resume)
    if dist_probe.is_main:
        save_config(cfg, out_dir / "config.yaml")
        print(f"preset {preset.name}: {len(data.train)} training / {len(data.val)} validation triplets, "
              f"device {device}, world size {dist_probe.world_size}")
        if trainer.anchor_net is not None:
            print(f"scale anchor: each frame's mean log depth held to {cfg.model.init}'s (loss.scale_anchor="
                  f"{cfg.loss.scale_anchor:g}; 0 turns it off)")
        if trainer.posenet_residual and not args.resume:
            if not trainer.posenet_restarted:
                why = f"{cfg.model.init}'s PoseNet was trained so and is kept"
            elif not trainer.fine_tune:
                why = "it starts at zero (the measured rotation, no translation)"
            else:
                why = (f"{cfg.model.init}'s PoseNet was trained for the whole motion, so its output layer starts at "
                       "zero (the measured rotation, no translation)")
            print(f"PoseNet: learns the correction to the measured rotation and the translation "
                  f"(pose.posenet_residual); {why}")
        if len(data.val):
            depth_part = (f" and depth on {VAL_DEPTH_FRAMES} frames spread evenly over the validation bags' "
                          f"ground-truth frames" if cfg.data.depth_topic else "")
            print(f"validation each epoch: {min(VAL_TRIPLETS, len(data.val))} of the {len(data.val)} validation "
                  f"triplets, spread evenly{depth_part}")

    writer = None
    if dist_probe.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
    metrics_file = out_dir / "metrics.jsonl"
    if dist_probe.is_main and not args.resume:
        metrics_file.unlink(missing_ok=True)                # a new run does not inherit another run's history
    history = read_history(metrics_file)                   # a resumed run's earlier epochs
    best = BestTracker.from_history(history)               # resuming keeps the best of the epochs already run
    # every epoch's training median depth, the earlier epochs included (drift warnings)
    medians = [row["train_depth_median"] for row in history if "train_depth_median" in row]

    def on_log(step: int, out: dict) -> None:
        if writer is None:
            return
        for key in ("loss", "photometric", "smoothness", "automask_fraction", "grad_norm", "translation_norm",
                    "rotation_deg"):
            if key in out:
                value = out[key]
                writer.add_scalar(f"train/{key}", float(value.detach() if torch.is_tensor(value) else value), step)
        writer.add_scalar("train/lr", trainer.optimizer.param_groups[-1]["lr"], step)

    def record(epoch: int, result: dict) -> None:
        """Console line, TensorBoard scalars, metrics.jsonl row and best.pt for one validated epoch."""
        for key, value in result.items():
            writer.add_scalar(f"val/{key}" if key.startswith("val_") else f"epoch/{key}", value, trainer.global_step)
        label = "epoch 0 (initial model, before any step)" if epoch == 0 else f"epoch {epoch}"
        print(f"{label}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        if "val_abs_rel" in result:
            initial = best.initial_abs_rel if best.initial_abs_rel is not None else result["val_abs_rel"]
            print(f"  val AbsRel (median-scaled) {result['val_abs_rel']:.4f} | initial model {initial:.4f} | "
                  f"constant depth {result['val_const_abs_rel']:.4f}")
        with open(metrics_file, "a") as f:
            f.write(json.dumps({"epoch": epoch, "step": trainer.global_step, **result}) + "\n")
        if best.update(epoch, result):
            trainer.save(out_dir / "best.pt")
            print(f"  best.pt <- epoch {epoch} (by {best.key})")

    def on_epoch_end(epoch: int) -> None:
        diagnostics = trainer.epoch_diagnostics.summary()
        trainer.epoch_diagnostics = EpochDiagnostics()
        if not dist_probe.is_main:
            return
        if "train_depth_median" in diagnostics:
            medians.append(diagnostics["train_depth_median"])
        result = {**diagnostics, **(validate(trainer, data.val, cfg) if len(data.val) else {})}
        # wall time of training so far (validation of earlier epochs included, resumes added up): each documented
        # run's time comes from its own metrics.jsonl
        result["elapsed_min"] = trainer.elapsed_s / 60.0
        if len(data.val):
            batch = next(iter(torch.utils.data.DataLoader(data.val, batch_size=4)))
            with torch.no_grad():
                trainer.depth_net.eval()
                depth = trainer.predict_depth(batch["target"].to(device)).cpu()
                trainer.depth_net.train()
            writer.add_image("val/input_depth", image_panel(batch, depth), trainer.global_step)
        record(epoch, result)
        references = drift_references(medians, cfg.model.init == "scratch")
        for warning in collapse_warnings(diagnostics, references, parallax_triplets=cfg.data.target_parallax_px > 0):
            print(f"  WARNING: {warning}")
        for warning in validation_warnings(result, best.initial_abs_rel):
            print(f"  WARNING: {warning}")
        writer.flush()

    if dist_probe.is_main and not args.resume and len(data.val):
        record(0, validate(trainer, data.val, cfg))        # the model training starts from, as the baseline

    trainer.fit(data.train, out_dir, on_log, on_epoch_end, progress=not args.no_progress)
    if writer is not None:
        writer.close()
    if dist_probe.world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
