"""The node's adaptation worker without the node: how much does it gain, and how much does that vary?

``bench/adapt_replay.py`` plays a recording into the node over DDS; which frames reach the worker there depends on
timing, so one run says little about the next. This drives the same :class:`~spidepth_ros.training.adaptation.
Worker` in-process on a schedule fixed by a seed: the training bag is looped, and before each training step the
worker is offered ``--offered`` consecutive frames (what its 8-frame inbox holds) after skipping a random
``--skip`` +- 50 % frames (those the node inferred while the worker trained and slept). After ``--steps`` steps
the last accepted weights (what the node would publish) are scored on the held-out bag (median-scaled AbsRel, as
``spidepth-eval``), beside the start model. Several seeds give the spread; ``--set`` changes worker settings
(``AdaptSettings`` fields) for a variant, so variants are compared on the same seeds in one run.

    python bench/adapt_offline.py --train-bag data/real/rs_train --test-bag data/real/rs_val --steps 100 \
        --seeds 0 1 2 --variant base: --variant ema:ema_decay=0.9
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_replay_arguments, load_replay  # noqa: E402


def parse_variant(text: str, fields: dict) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, {key: value typed as the AdaptSettings field})."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--variant {text}: {key!r} is not an AdaptSettings field ({', '.join(fields)})")
        kind = type(fields[key])
        overrides[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return name, overrides


def score(model: Path, frames, truth, settings) -> tuple[float, float]:
    """(median-scaled AbsRel, median scaling factor truth / published) of a model file's published depth (its
    ``depth_scale`` applied, as the node publishes it) on the held-out frames."""
    from spidepth_ros.metrics import evaluate_frame, summarize
    from spidepth_ros.runtime import create_estimator

    with create_estimator(model, backend="torch", device="cpu", log=lambda _: None) as estimator:
        rows = [evaluate_frame(gt, estimator.infer(rgb).depth, settings) for rgb, gt in zip(frames, truth)]
    summary = summarize([r for r in rows if r is not None])
    return summary["abs_rel"], summary["scale_median"]


def truth_scorer(test_images: np.ndarray, truth, settings):
    """``score(net) -> AbsRel`` of a depth network (eval mode, network output size, as the torch backend runs it)
    on the held-out images ``[N, H, W, 3]`` uint8 at the network size: the truth about each guard verdict."""
    import torch

    from spidepth_ros.metrics import evaluate_frame, summarize

    tensors = torch.from_numpy(test_images).permute(0, 3, 1, 2).float() / 255.0

    from spidepth_ros.training.adaptation import evaluating

    def score(net) -> float:
        with evaluating(net), torch.no_grad():
            depth = torch.cat([net(tensors[i:i + 8]) for i in range(0, len(tensors), 8)])[:, 0].numpy()
        rows = [evaluate_frame(gt, d, settings) for d, gt in zip(depth, truth)]
        return summarize([r for r in rows if r is not None])["abs_rel"]

    return score


def run_worker(settings, frames: list[np.ndarray], stamps: list[int], steps: int, offered: int, skip: int,
               seed: int, log, score_net=None) -> tuple[Path, dict]:
    """Drive a Worker for ``steps`` training steps on the looped ``frames``; returns the last accepted model file
    and counters. ``score_net``: also print each candidate's true held-out AbsRel (:func:`truth_scorer`)."""
    from spidepth_ros.training.adaptation import Worker, depth_weights

    worker = Worker(settings)
    rng = np.random.default_rng(1000 + seed)
    position, loops, verdicts, busy = 0, 0, [], time.perf_counter()
    period = stamps[-1] - stamps[0] + (stamps[1] - stamps[0])
    while worker.steps < steps:
        for _ in range(offered):
            i = position % len(frames)
            worker.offer(frames[i], stamps[i] + (position // len(frames)) * period)
            position += 1
        position += int(rng.integers(skip // 2, skip + skip // 2 + 1)) if skip else 0
        if not worker.ready():
            continue
        worker.train_step()
        if worker.steps % settings.steps_per_candidate == 0:
            truth = ""
            if score_net is not None:
                trainer = worker.trainer
                # the worker's candidate is the weight average when it keeps one, else the trained weights
                candidate_state = trainer.depth_net.state_dict() if worker.average is None else worker.average
                with depth_weights(trainer, candidate_state) as net:
                    candidate = score_net(net)
                with depth_weights(trainer, worker.current_state) as net:
                    running = score_net(net)
                truth = f"true AbsRel {running:.4f} -> {candidate:.4f}; "
            report = worker.judge()
            verdicts.append(report)
            log(f"    step {worker.steps}: {truth}{'accepted' if report.accepted else 'rejected: ' + report.reason}; "
                f"photometric {report.photometric_current:.4f} -> {report.photometric_candidate:.4f}, spread "
                f"{report.spread_current:.2f} -> {report.spread_candidate:.2f} (start {report.spread_start:.2f}), "
                f"scale x{report.scale_ratio:.2f}, {report.triplets} triplets")
    loops = position / len(frames)
    path = worker.write_accepted(Path(settings.out_dir) / "final.pt")   # what the node publishes: the last accepted
    return path, {"accepted": worker.accepted, "rejected": worker.rejected, "keyframes": len(worker.buffer),
                  "loops": loops, "seconds": time.perf_counter() - busy}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_replay_arguments(p, str(Path(__file__).resolve().parents[1] / "models" / "demo_small.pt"))
    p.add_argument("--steps", type=int, default=100, help="training steps per run (the node made 90-99 in 10 min)")
    p.add_argument("--offered", type=int, default=8, help="consecutive frames offered before each step")
    p.add_argument("--skip", type=int, default=40, help="frames skipped between offers (random +-50 %%)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--score-candidates", action="store_true",
                   help="score every candidate (accepted or not) and the running model on the held-out truth")
    p.add_argument("--variant", action="append", default=[],
                   help="name:field=value,... (AdaptSettings fields); repeat for several; default: base:")
    args = p.parse_args()

    import torch

    from spidepth_ros.adaptation import adapt_settings_for
    from spidepth_ros.metrics import EvalSettings
    from spidepth_ros.runtime import create_estimator
    from spidepth_ros.training.adaptation import AdaptSettings

    torch.set_num_threads(args.threads)
    defaults = {f.name: f.default for f in dataclasses.fields(AdaptSettings) if f.default is not dataclasses.MISSING}
    variants = [parse_variant(v, defaults) for v in (args.variant or ["base:"])]
    train, test, truth, calib = load_replay(args)
    with create_estimator(args.model, backend="torch", device="cpu", log=lambda _: None) as estimator:
        pre, meta = estimator.preprocessor, estimator.metadata
        k = pre.output_intrinsics(calib.intrinsics, meta.input_width, meta.input_height).normalized()
    frames = [pre.prepare(rgb).resized.copy() for _, rgb in train]
    stamps = [s for s, _ in train]
    eval_settings = EvalSettings(max_depth=args.max_depth)
    score_net = truth_scorer(np.stack([pre.prepare(rgb).resized for _, rgb in test]), truth, eval_settings) \
        if args.score_candidates else None
    start, start_factor = score(Path(args.model), [rgb for _, rgb in test], truth, eval_settings)
    print(f"{len(frames)} training frames (network size {meta.input_width}x{meta.input_height}), {len(test)} held-out;"
          f" start model {Path(args.model).name}: AbsRel {start:.4f}; {args.steps} steps per run, {args.offered} "
          f"frames offered then ~{args.skip} skipped; {args.threads} threads", flush=True)
    table = []
    for name, overrides in variants:
        results = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix=f"adapt_offline_{name}_{seed}_") as out:   # models, ~100 MB
                settings = adapt_settings_for(args.model, out, meta.input_width, meta.input_height, k,
                                              threads=args.threads, **{"seed": seed, **overrides})
                print(f"  {name} seed {seed}: {overrides}", flush=True)
                model, info = run_worker(settings, frames, stamps, args.steps, args.offered, args.skip, seed, print,
                                         score_net)
                abs_rel, factor = score(model, [rgb for _, rgb in test], truth, eval_settings)
            drift = start_factor / factor      # > 1: the published depth grew against the truth
            results.append((abs_rel, drift))
            print(f"  {name} seed {seed}: AbsRel {abs_rel:.4f} ({abs_rel / start - 1:+.1%}), published scale "
                  f"x{drift:.3f} of the start model's; {info['accepted']} "
                  f"accepted / {info['rejected']} rejected, {info['keyframes']} keyframes, {info['loops']:.1f} loops, "
                  f"{info['seconds']:.0f} s", flush=True)
        table.append((name, overrides, results))
    print(f"| variant | settings | AbsRel per seed {args.seeds} | mean change | worst change | published scale "
          "drift per seed |")
    print("|---|---|---|---|---|---|")
    for name, overrides, results in table:
        changes = [r / start - 1 for r, _ in results]
        print(f"| {name} | {overrides or 'defaults'} | {', '.join(f'{r:.4f}' for r, _ in results)} | "
              f"{np.mean(changes):+.1%} | {max(changes):+.1%} | {', '.join(f'x{d:.3f}' for _, d in results)} |")
    print(f"start {start:.4f} (median scaling factor {start_factor:.4f})")


if __name__ == "__main__":
    main()
