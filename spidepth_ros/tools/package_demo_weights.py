"""Turn a training checkpoint into the committed demo weights: depth network only, fp16 storage.

    python -m spidepth_ros.tools.package_demo_weights runs/demo/best.pt models/demo_small.pt \
        [--scale-from-bag data/synth_val_100]

Keeps the preset, the training config and the PoseNet (a fine-tune starts from a PoseNet that already sees
motion), drops the optimiser state, and stores float tensors as float16 (the loader casts back to float32).
With ``--scale-from-bag`` the median GT/prediction ratio on that bag is stored as ``depth_scale``;
``--scale-from-checkpoint`` carries another checkpoint's ``depth_scale`` over instead (the depth network it
was calibrated for, e.g. when only the PoseNet was trained).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, safe_torch_load


def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def package(src: Path, dst: Path, depth_scale: float | None = None, notes: str = "") -> Path:
    data = safe_torch_load(src)
    if data.get("pose_net") is None:
        raise ValueError(f"{src} has no PoseNet; every shipped model carries one (train with optim.pose_warmup_steps "
                         "from model.init to add it)")
    out = {"format": CHECKPOINT_FORMAT, "preset": data["preset"], "config": data.get("config", {}),
           "depth_net": _half(data["depth_net"]), "pose_net": _half(data["pose_net"]),
           "global_step": data.get("global_step", 0), "storage": "float16", "notes": notes}
    if depth_scale is not None:
        out["depth_scale"] = float(depth_scale)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out, dst)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--scale-from-bag", type=Path, help="bag with /camera/depth ground truth")
    ap.add_argument("--scale-from-checkpoint", type=Path, help="take depth_scale from this checkpoint")
    args = ap.parse_args(argv)
    scale = safe_torch_load(args.scale_from_checkpoint).get("depth_scale") if args.scale_from_checkpoint else None
    if args.scale_from_bag:
        from ..metrics import EvalSettings, summarize
        from ..runtime import create_estimator
        from ..training.evaluate import evaluate_bags

        with create_estimator(args.src, "torch", device="cpu") as est:
            rows = evaluate_bags(lambda rgb: est.infer(rgb).depth, [args.scale_from_bag], "/camera/image_raw",
                                 "/camera/depth", EvalSettings(0.1, 40.0), progress=False)
        scale = summarize(rows)["scale_median"]
        print(f"median scale on {args.scale_from_bag}: {scale:.4f}")
    path = package(args.src, args.dst, scale, notes="synthetic scenes only (spidepth-synth); see docs/demo_weights.md")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
