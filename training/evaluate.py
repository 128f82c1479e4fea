"""``spidepth-eval``: depth metrics of a model against a depth topic recorded in a bag.

Ground truth: a ``sensor_msgs/Image`` depth topic (32FC1 metres or 16UC1 millimetres, 0/NaN invalid),
matched to the colour frames by header stamp (exact, or nearest within ``--max-offset-ms``). Prediction: any
model the runtime can load (checkpoint, official folder, ONNX), any backend. Writes a per-frame CSV and a
summary JSON, and prints the summary.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from spidepth_ros.bagio import iter_images
from spidepth_ros.metrics import BASELINE_NAMES, GARG_CROP, METRIC_NAMES, EvalSettings, evaluate_frame, summarize

Predictor = Callable[[np.ndarray], np.ndarray]   # RGB uint8 [H, W, 3] -> depth [h, w] metres/model units


def load_ground_truth(bags: Sequence[Path], depth_topic: str) -> dict[int, np.ndarray]:
    return {stamp: depth for stamp, depth in iter_images(bags, depth_topic, depth=True)}


def match_stamp(stamp: int, gt_stamps: np.ndarray, max_offset_ns: int) -> Optional[int]:
    if gt_stamps.size == 0:
        return None
    i = int(np.searchsorted(gt_stamps, stamp))
    best = min((j for j in (i - 1, i) if 0 <= j < gt_stamps.size), key=lambda j: abs(int(gt_stamps[j]) - stamp))
    return int(gt_stamps[best]) if abs(int(gt_stamps[best]) - stamp) <= max_offset_ns else None


def spread_indices(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)``, the first and the last included (all when fewer)."""
    if count >= total:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, count)).astype(int))


def evaluate_bags(predict: Predictor, bags: Sequence[Path], image_topic: str, depth_topic: str,
                  settings: EvalSettings, max_frames: int = 0, every: int = 1, max_offset_ns: int = 0,
                  progress: bool = True, spread: int = 0) -> list[dict]:
    """Per-frame metric rows (with ``stamp_ns``) over the bags' frames that have ground truth.

    ``spread`` > 0: score only that many frames, spread evenly over all the ground-truth frames of the bags (the
    first and the last included), so a fixed budget sees the whole sequence, not its beginning."""
    from tqdm import tqdm

    gt = load_ground_truth(bags, depth_topic)
    gt_stamps = np.array(sorted(gt), dtype=np.int64)
    chosen = None
    if spread and spread < len(gt_stamps):
        chosen = set(gt_stamps[spread_indices(len(gt_stamps), spread)].tolist())
    rows = []
    frames: Iterable = iter_images(bags, image_topic)
    for i, (stamp, rgb) in enumerate(tqdm(frames, disable=not progress, desc="evaluate", unit="frame")):
        if i % every:
            continue
        match = match_stamp(stamp, gt_stamps, max_offset_ns)
        if match is None or (chosen is not None and match not in chosen):
            continue
        row = evaluate_frame(gt[match], predict(rgb), settings)
        if row is not None:
            rows.append({"stamp_ns": stamp, **row})
        if max_frames and len(rows) >= max_frames:
            break
    return rows


def write_results(rows: list[dict], out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_frame.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stamp_ns", *METRIC_NAMES, "scale", "pixels", *BASELINE_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    head = " ".join(f"{k:>9}" for k in METRIC_NAMES)
    vals = " ".join(f"{summary[k]:9.4f}" for k in METRIC_NAMES)
    return (f"{head}\n{vals}\nframes {summary['frames']}, median scale {summary['scale_median']:.4f} "
            f"(std/median {summary['scale_std_over_median']:.3f})\n"
            f"constant depth (each frame's GT median everywhere, same pixels): abs_rel "
            f"{summary['const_abs_rel']:.4f}, a1 {summary['const_a1']:.4f} -> the model is "
            f"{'better' if summary['abs_rel'] < summary['const_abs_rel'] else 'NOT better'} than a flat map")


def estimate_scale_from_height(estimator, bags: Sequence[Path], image_topic: str, camera_info_topic: str,
                               known_height_m: float, max_frames: int = 0, every: int = 1,
                               progress: bool = True) -> tuple[float, int, int]:
    """(depth_scale, frames with a floor, frames tried) from the model's depth and the camera's known height."""
    from tqdm import tqdm

    from spidepth_ros.bagio import BagError, read_camera_info
    from spidepth_ros.ground_scale import camera_height, scale_from_heights

    calib = read_camera_info(bags, camera_info_topic)
    if calib is None or calib.problem():
        raise BagError(f"--camera-height needs the camera's intrinsics: {camera_info_topic!r} has no valid "
                       "CameraInfo in the bag(s) (set --camera-info-topic)")
    rng = np.random.default_rng(0)
    heights, tried = [], 0
    for i, (stamp, rgb) in enumerate(tqdm(iter_images(bags, image_topic), disable=not progress, desc="floor",
                                          unit="frame")):
        if i % every:
            continue
        result = estimator.infer(rgb)
        h, w = result.depth.shape
        camera = calib.intrinsics.resized(rgb.shape[1], rgb.shape[0])
        heights.append(camera_height(result.depth, estimator.preprocessor.output_intrinsics(camera, w, h), rng))
        tried += 1
        if max_frames and tried >= max_frames:
            break
    found = sum(x is not None for x in heights)
    return scale_from_heights(heights, known_height_m), found, tried


def evaluate_node_scale(estimator, bags: Sequence[Path], image_topic: str, depth_topic: str,
                        camera_info_topic: str, settings: EvalSettings, camera_height_m: Optional[float] = None,
                        pose_topic: str = "", max_frames: int = 0, progress: bool = True) -> dict:
    """Depth as the node publishes it, scored without median scaling, beside the median-scaled AbsRel.

    The node's scale is the model's (``camera_height_m`` None: the sidecar's ``depth_scale``) or the online
    camera-height filter of :class:`spidepth_ros.metric_scale.CameraHeightScale`, fed frame by frame in
    recording order exactly as the node does. Also reports the frame-to-frame scale consistency
    (:func:`spidepth_ros.metrics.scale_consistency`: with the recorded motion from ``pose_topic`` when given) of
    the published depth and, with a camera height, of each frame's own floor-fit scale (the unfiltered one).
    """
    import dataclasses

    from tqdm import tqdm

    from spidepth_ros.bagio import BagError, read_camera_info, read_poses
    from spidepth_ros.geometry import interpolate_pose
    from spidepth_ros.metric_scale import CameraHeightScale
    from spidepth_ros.metrics import scale_consistency

    calib = read_camera_info(bags, camera_info_topic)
    if calib is None or calib.problem():
        raise BagError(f"the node's scale needs the camera's intrinsics: {camera_info_topic!r} has no valid "
                       "CameraInfo in the bag(s) (set --camera-info-topic)")
    model_scale = estimator.metadata.depth_scale
    tracker = CameraHeightScale(camera_height_m, model_scale) if camera_height_m else None
    poses = read_poses(bags, pose_topic) if pose_topic else None
    gt = load_ground_truth(bags, depth_topic)
    gt_stamps = np.array(sorted(gt), dtype=np.int64)
    fixed = dataclasses.replace(settings, median_scaling=False, fixed_scale=1.0)
    rows, published, floor_scaled, world_t_cam, intr = [], [], [], [], None
    for stamp, rgb in tqdm(iter_images(bags, image_topic), disable=not progress, desc="node scale", unit="frame"):
        depth = estimator.infer(rgb).depth
        h, w = depth.shape
        intr = estimator.preprocessor.output_intrinsics(calib.intrinsics.resized(rgb.shape[1], rgb.shape[0]), w, h)
        if tracker is not None:
            report = tracker.update(depth, intr, stamp * 1e-9)
            scale, frame_scale = report.scale, report.frame_scale
        else:
            scale, frame_scale = model_scale, None
        published.append(depth * scale)
        floor_scaled.append(depth * frame_scale if frame_scale is not None else np.full_like(depth, np.nan))
        if poses is not None:
            pose = interpolate_pose(poses[0], poses[1], stamp, 100_000_000)
            world_t_cam.append(pose if pose is not None else np.full((4, 4), np.nan))
        match = match_stamp(stamp, gt_stamps, 0)
        if match is not None:
            node = evaluate_frame(gt[match], depth * scale, fixed)
            median = evaluate_frame(gt[match], depth, settings)
            if node is not None and median is not None:
                rows.append({"stamp_ns": stamp, "node_abs_rel": node["abs_rel"], "node_a1": node["a1"],
                             "abs_rel": median["abs_rel"], "applied_scale": scale,
                             "oracle_scale": median["scale"]})
        if max_frames and len(published) >= max_frames:
            break
    relative = None
    if poses is not None:
        relative = [np.linalg.inv(world_t_cam[i + 1]) @ world_t_cam[i] for i in range(len(world_t_cam) - 1)]
    out = {"frames": len(rows), "camera_height": camera_height_m or 0.0,
           "node_abs_rel": float(np.mean([r["node_abs_rel"] for r in rows])) if rows else float("nan"),
           "node_a1": float(np.mean([r["node_a1"] for r in rows])) if rows else float("nan"),
           "abs_rel": float(np.mean([r["abs_rel"] for r in rows])) if rows else float("nan"),
           "published_consistency": scale_consistency(published, relative, intr),
           "rows": rows}
    if tracker is not None:
        out["floor_fit_consistency"] = scale_consistency(floor_scaled, relative, intr)
    return out


def format_node_scale(result: dict) -> str:
    pub = result["published_consistency"]
    source = f"camera height {result['camera_height']:g} m" if result["camera_height"] else "the model scale"
    lines = [f"with the node's own scale ({source}), no median scaling: abs_rel {result['node_abs_rel']:.4f}, "
             f"a1 {result['node_a1']:.4f}; median-scaled abs_rel {result['abs_rel']:.4f} ({result['frames']} frames)",
             f"frame-to-frame scale consistency of the published depth: p95 |log ratio| "
             f"{pub['p95_abs_log_ratio']:.4f} over {pub['pairs']} pairs"]
    if "floor_fit_consistency" in result:
        fit = result["floor_fit_consistency"]
        lines.append(f"  each frame's own floor-fit scale (unfiltered): p95 |log ratio| "
                     f"{fit['p95_abs_log_ratio']:.4f} over {fit['pairs']} pairs")
    return "\n".join(lines)


def write_depth_scale(model: Path, scale: float) -> Path:
    """Store ``scale`` as the model's depth_scale: in the sidecar of an .onnx/.engine, in a .pt checkpoint."""
    import dataclasses

    from spidepth_ros.runtime.metadata import read_sidecar, sidecar_path, write_sidecar

    if model.suffix in (".onnx", ".engine"):
        write_sidecar(model, dataclasses.replace(read_sidecar(model), depth_scale=scale))
        return sidecar_path(model)
    if model.suffix == ".pt":
        from spidepth_ros.checkpoint import atomic_torch_save, safe_torch_load

        data = safe_torch_load(model)
        data["depth_scale"] = scale
        atomic_torch_save(data, model)
        return model
    raise ValueError(f"cannot store a scale in {model}: export it to ONNX (spidepth-export) or pass depth_scale "
                     "to the node")


def main(argv: Optional[list[str]] = None) -> int:
    from spidepth_ros.runtime import create_estimator

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="our .pt, an official weights folder, or an .onnx with sidecar")
    p.add_argument("--bags", nargs="+", required=True, type=Path)
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--depth-topic", default="/camera/depth")
    p.add_argument("--backend", default="auto", help="auto | torch | onnxruntime | tensorrt")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"),
                   help="as the node's parameter: auto runs what the node would (an ONNX's INT8 version on a CPU "
                        "with integer dot products); fp32 / int8 compare the two")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--min-depth", type=float, default=1e-3)
    p.add_argument("--max-depth", type=float, default=80.0)
    p.add_argument("--scale", type=float, default=None,
                   help="fixed scale (disables median scaling); default: per-frame median scaling")
    p.add_argument("--garg-crop", action="store_true", help="apply the Eigen/Garg crop")
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--every", type=int, default=1, help="evaluate every Nth frame")
    p.add_argument("--max-offset-ms", type=float, default=0.0, help="stamp tolerance for GT matching")
    p.add_argument("--out", type=Path, default=Path("eval_results"))
    p.add_argument("--camera-height", type=float, default=None, metavar="METRES",
                   help="no depth sensor: estimate depth_scale from the camera's height above a flat floor")
    p.add_argument("--camera-info-topic", default="/camera/camera_info", help="intrinsics for --camera-height")
    p.add_argument("--write-scale", action="store_true",
                   help="with --camera-height: store the scale in the model (sidecar or .pt) for the node to use")
    p.add_argument("--node-scale", choices=("model", "camera_height"),
                   help="also score depth with the scale the node would apply (no median scaling): the model's, or "
                        "the online floor fit against --camera-height; prints frame-to-frame scale consistency")
    p.add_argument("--pose-topic", default="",
                   help="recorded camera poses for the scale consistency (same surfaces warped by the true motion)")
    args = p.parse_args(argv)
    if args.node_scale:
        if args.node_scale == "camera_height" and not args.camera_height:
            p.error("--node-scale camera_height needs --camera-height METRES")
        settings = EvalSettings(args.min_depth, args.max_depth, crop=GARG_CROP if args.garg_crop else None)
        with create_estimator(args.model, backend=args.backend, precision=args.precision, log=print) as estimator:
            result = evaluate_node_scale(estimator, args.bags, args.image_topic, args.depth_topic,
                                         args.camera_info_topic, settings,
                                         args.camera_height if args.node_scale == "camera_height" else None,
                                         args.pose_topic, args.max_frames, progress=not args.no_progress)
        print(format_node_scale(result))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "node_scale.json").write_text(json.dumps(result, indent=2))
        return 0
    if args.camera_height is not None:
        estimator = create_estimator(args.model, backend=args.backend, precision=args.precision, log=print)
        with estimator:
            scale, found, tried = estimate_scale_from_height(estimator, args.bags, args.image_topic,
                                                             args.camera_info_topic, args.camera_height,
                                                             args.max_frames, args.every,
                                                             progress=not args.no_progress)
        print(f"floor found in {found} of {tried} frames; camera height {args.camera_height} m -> depth_scale "
              f"{scale:.4f} (the model's own: {estimator.metadata.depth_scale:.4f})")
        if args.write_scale:
            print(f"wrote depth_scale {scale:.4f} to {write_depth_scale(Path(args.model), scale)}")
        return 0
    settings = EvalSettings(args.min_depth, args.max_depth, median_scaling=args.scale is None,
                            fixed_scale=args.scale or 1.0, crop=GARG_CROP if args.garg_crop else None)
    estimator = create_estimator(args.model, backend=args.backend, precision=args.precision, log=print)
    with estimator:
        print(f"model {args.model} on {estimator.describe()}")
        rows = evaluate_bags(lambda rgb: estimator.infer(rgb).depth, args.bags, args.image_topic, args.depth_topic,
                             settings, args.max_frames, args.every, int(args.max_offset_ms * 1e6),
                             progress=not args.no_progress)
    if not rows:
        print(f"no frame of {args.image_topic} had ground truth on {args.depth_topic}")
        return 1
    summary = write_results(rows, args.out)
    print(format_summary(summary))
    print(f"per-frame CSV and summary in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
