"""``make demo``: the whole pipeline on a machine with no GPU, no camera and no downloadable weights.

1. generate (or reuse) a held-out synthetic bag with ground-truth depth (``spidepth-synth``, seed 200: never
   used in training or checkpoint selection);
2. export the committed demo weights to ONNX (+ sidecar);
3. start ``depth_node`` as its own process on ONNX Runtime;
4. play the bag into it over DDS in real time (recorded stamps, recorded rate) and collect what it publishes;
5. write ``demo_output/``: ``report.md`` + ``report.json`` (depth metrics against the ground truth, latency),
   ``montage.png`` (input | predicted depth | ground truth), ``cloud.ply`` (one coloured point cloud) and
   ``predictions.npz`` (every received depth map with its stamp, for re-checking the numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

DEMO_WEIGHTS_NAME = "demo_small.pt"


def find_demo_weights() -> Path:
    """The committed demo weights: in the source tree, else where setup.py installs them (share/spidepth_ros).

    Looked up in order: the checkout, the ament index, every AMENT_PREFIX_PATH prefix (a sourced workspace), the
    install prefix this module sits in (colcon: <prefix>/lib/pythonX/site-packages/spidepth_ros/ros), sys.prefix.
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "models" / DEMO_WEIGHTS_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("spidepth_ros")) / "models" / DEMO_WEIGHTS_NAME)
    except (ImportError, LookupError, OSError):        # OSError: no AMENT_PREFIX_PATH (nothing sourced)
        pass
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [here.parents[5], Path(sys.prefix)] if len(here.parents) > 5 else [Path(sys.prefix)]
    candidates += [prefix / "share" / "spidepth_ros" / "models" / DEMO_WEIGHTS_NAME for prefix in prefixes]
    return next((c for c in candidates if c.exists()), candidates[0])


DEMO_WEIGHTS = find_demo_weights()
DEMO_SEED = 200
NS = "/camera"


def ensure_bag(path: Path, frames: int, seed: int) -> Path:
    from ..synth import SynthConfig, write_bag

    if (path / "metadata.yaml").exists():
        return path
    write_bag(SynthConfig(frames=frames, seed=seed), path)
    return path


def read_bag(path: Path) -> tuple[list, dict, object]:
    """Frames (stamp, rgb), ground truth by stamp, and the CameraInfo calibration of the bag."""
    from ..bagio import iter_images, read_camera_info

    frames = list(iter_images([path], f"{NS}/image_raw"))
    gt = dict(iter_images([path], f"{NS}/depth", depth=True))
    return frames, gt, read_camera_info([path], f"{NS}/camera_info")


def reliable_input_args(namespace: str, image_topic: str = "image_raw") -> list[str]:
    """--ros-args that make the node's inputs reliable: the node defaults to best effort (SensorDataQoS), which
    loses large frames in transport on a busy machine; a player that counts frames must not lose any."""
    args = []
    for topic in (image_topic, "camera_info"):
        args += ["-p", f"qos_overrides.{namespace}/{topic}.subscription.reliability:=reliable"]
    return args


def start_node(model: Path, log_path: Path) -> subprocess.Popen:
    """depth_node as its own process; depth_scale comes from the model's sidecar (the checkpoint's scale)."""
    cmd = [sys.executable, "-m", "spidepth_ros.ros.depth_node", "--ros-args", "-r", f"__ns:={NS}",
           "-r", "image:=image_raw", "-p", f"model_path:={model}", "-p", "backend:=onnxruntime",
           "-p", "min_range:=0.1", "-p", "max_range:=60.0",
           "-p", "lazy:=true", "-p", "diagnostics_period:=1.0", *reliable_input_args(NS)]
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def play_and_collect(frames: list, calib, rate_scale: float = 1.0, timeout: float = 60.0) -> dict:
    """Publish frames at their recorded pace; return received depth/points/diagnostics and timings."""
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Header
    from tqdm import tqdm

    from .conversions import camera_info_msg, image_msg

    rclpy.init()
    node = Node("spidepth_demo_player", namespace=NS)
    pub_img = node.create_publisher(Image, "image_raw", 10)
    pub_info = node.create_publisher(CameraInfo, "camera_info", 10)
    got: dict = {"depth": {}, "points": {}, "recv_time": {}, "diag": []}

    def key(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def on_depth(msg):
        got["depth"][key(msg)] = msg
        got["recv_time"][key(msg)] = time.monotonic()

    node.create_subscription(Image, "depth/image", on_depth, 10)
    node.create_subscription(PointCloud2, "depth/points", lambda m: got["points"].__setitem__(key(m), m), 10)
    node.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    sent: dict = {}
    try:
        deadline = time.monotonic() + timeout
        with tqdm(total=1, desc="waiting for depth_node", bar_format="{desc}") as bar:
            while pub_img.get_subscription_count() == 0 or node.count_publishers("depth/image") == 0:
                executor.spin_once(timeout_sec=0.1)
                if time.monotonic() > deadline:
                    raise TimeoutError("depth_node did not come up within "
                                       f"{timeout:.0f} s; see demo_output/node.log")
            bar.update(1)
        t_start = time.monotonic()
        stamp0 = frames[0][0]
        for stamp, rgb in tqdm(frames, desc="playing bag into depth_node", unit="frame"):
            due = t_start + (stamp - stamp0) / 1e9 / rate_scale
            while time.monotonic() < due:
                executor.spin_once(timeout_sec=max(0.0, min(0.005, due - time.monotonic())))
            header = Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                            frame_id="camera_optical_frame")
            pub_info.publish(camera_info_msg(header, calib.intrinsics))
            pub_img.publish(image_msg(header, rgb, "rgb8"))
            sent[stamp] = time.monotonic()
        end = time.monotonic() + 5.0
        while time.monotonic() < end and (frames[-1][0] not in got["depth"] or not got["diag"]):
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):
            executor.spin_once(timeout_sec=0.05)
        got["sent_time"] = sent
        got["play_seconds"] = time.monotonic() - t_start
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return got


def depth_array(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width).copy()


def write_ply(path: Path, cloud_msg) -> int:
    """Binary little-endian PLY of the valid points (x, y, z float, r, g, b uchar). Returns the point count."""
    raw = np.frombuffer(bytes(cloud_msg.data), np.uint8).reshape(-1, cloud_msg.point_step)
    xyz = raw[:, :12].copy().view("<f4").reshape(-1, 3)
    rgb = raw[:, 16:19][:, ::-1] if cloud_msg.point_step >= 20 else np.full((len(raw), 3), 200, np.uint8)
    valid = np.all(np.isfinite(xyz), axis=1)
    rec = np.zeros(int(valid.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                                            ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz[valid].T
    rec["red"], rec["green"], rec["blue"] = rgb[valid].T
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(rec)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "end_header\n")
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(rec.tobytes())
    return len(rec)


def montage(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """input | predicted depth | ground truth, one row per frame, common colour scale per row."""
    import cv2

    from ..colorize import colorize_depth

    tiles = []
    for rgb, pred, gt in rows:
        h, w = rgb.shape[:2]
        pred_up = cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)
        lo, hi = float(np.nanmin(gt)), float(np.nanpercentile(gt, 95))
        tiles.append(np.concatenate([rgb[..., ::-1], colorize_depth(pred_up, lo, hi), colorize_depth(gt, lo, hi)], 1))
    image = np.concatenate(tiles, 0)
    labels = ("input", "predicted depth (depth_node)", "ground truth")
    for i, text in enumerate(labels):
        cv2.putText(image, text, (i * rows[0][0].shape[1] + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def evaluate(received: dict, gt: dict, min_depth: float, max_depth: float) -> dict:
    from ..metrics import EvalSettings, evaluate_frame, summarize

    fixed, median = [], []
    for stamp, msg in received.items():
        if stamp not in gt:
            continue
        pred = depth_array(msg)
        pred = np.where(np.isfinite(pred), pred, np.nan)
        r = evaluate_frame(gt[stamp], pred, EvalSettings(min_depth, max_depth, median_scaling=False))
        m = evaluate_frame(gt[stamp], pred, EvalSettings(min_depth, max_depth, median_scaling=True))
        if r is not None:
            fixed.append(r)
            median.append(m)
    return {"fixed_scale": summarize(fixed), "median_scaled": summarize(median)}


def run_demo(out: Path, frames: int = 80, seed: int = DEMO_SEED, weights: Path = DEMO_WEIGHTS,
             bag: Optional[Path] = None, rate_scale: float = 1.0) -> dict:
    from ..export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    if not weights.exists():
        raise FileNotFoundError(f"demo weights {weights} are missing; `make demo-weights` re-creates them")
    bag = ensure_bag(bag or out / f"heldout_seed{seed}_{frames}f", frames, seed)
    onnx_path, meta = export_onnx(weights, out / "model" / "demo_small.onnx")
    depth_scale = meta.depth_scale       # carried from the checkpoint into the sidecar; the node applies it
    frames_list, gt, calib = read_bag(bag)
    proc = start_node(onnx_path, out / "node.log")
    try:
        got = play_and_collect(frames_list, calib, rate_scale)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    received = got["depth"]
    metrics = evaluate(received, gt, 0.1, 40.0)
    latencies = [1e3 * (got["recv_time"][s] - got["sent_time"][s]) for s in received if s in got["sent_time"]]
    diag = {}
    if got["diag"]:
        diag = {kv.key: kv.value for kv in got["diag"][-1].status[0].values}
    stamps = sorted(received)
    np.savez_compressed(out / "predictions.npz", stamps=np.array(stamps, np.int64),
                        depth=np.stack([depth_array(received[s]) for s in stamps]) if stamps else np.zeros((0,)))
    rgb_by_stamp = dict(frames_list)
    picks = [stamps[int(i)] for i in np.linspace(0, len(stamps) - 1, min(4, len(stamps)))] if stamps else []
    if picks:
        montage([(rgb_by_stamp[s], depth_array(received[s]), gt[s]) for s in picks], out / "montage.png")
    ply_points = 0
    cloud_stamp = next((s for s in reversed(stamps) if s in got["points"]), None)
    if cloud_stamp is not None:
        ply_points = write_ply(out / "cloud.ply", got["points"][cloud_stamp])
    report = {
        "bag": str(bag), "frames_played": len(frames_list), "frames_with_depth": len(received),
        "frames_with_cloud": len(got["points"]), "model": str(weights), "onnx": str(onnx_path),
        "preset": meta.preset["name"], "depth_scale": depth_scale, "play_seconds": got["play_seconds"],
        "metrics": metrics,
        "latency_ms": {"end_to_end_p50": float(np.percentile(latencies, 50)) if latencies else None,
                       "end_to_end_p95": float(np.percentile(latencies, 95)) if latencies else None,
                       "node_diagnostics": diag},
        "cloud_ply_points": ply_points, "machine": f"{os.cpu_count()} CPU cores, {sys.platform}",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_report(report))
    return report


def render_report(r: dict) -> str:
    def row(name, s):
        if not s:
            return f"| {name} | (no frames) |"
        return (f"| {name} | {s['abs_rel']:.3f} | {s['sq_rel']:.3f} | {s['rmse']:.3f} | {s['rmse_log']:.3f} | "
                f"{s['a1']:.3f} | {s['a2']:.3f} | {s['a3']:.3f} | {s['frames']} |")

    lat = r["latency_ms"]
    d = lat["node_diagnostics"]
    return f"""# spidepth_ros demo report

Generated by `make demo` in this run: the depth node ({r['preset']}, ONNX Runtime on the CPU, depth_scale
{r['depth_scale']:.4f}) received a held-out synthetic bag over DDS in real time.

- bag: `{r['bag']}` ({r['frames_played']} frames played in {r['play_seconds']:.1f} s)
- depth images received: {r['frames_with_depth']}; point clouds received: {r['frames_with_cloud']}
  (the node keeps only the newest frame, so frames arriving during inference are skipped by design)

## Depth against ground truth (0.1-40 m)

| scaling | AbsRel | SqRel | RMSE (m) | RMSElog | d<1.25 | d<1.25^2 | d<1.25^3 | frames |
|---|---|---|---|---|---|---|---|---|
{row("fixed depth_scale (as published)", r['metrics']['fixed_scale'])}
{row("per-frame median scaling", r['metrics']['median_scaled'])}

## Latency

- end to end (publish -> depth received, same machine): p50 {lat['end_to_end_p50'] or float('nan'):.1f} ms,
  p95 {lat['end_to_end_p95'] or float('nan'):.1f} ms
- node diagnostics: {', '.join(f'{k} {v}' for k, v in d.items()) or 'none received'}

## Files

- `montage.png`: input | predicted depth | ground truth
- `cloud.ply`: {r['cloud_ply_points']} coloured points of the last frame, camera optical frame (metres)
- `predictions.npz`: every received depth map with its stamp; `node.log`: the node's own log

Machine: {r['machine']}. The demo weights know only synthetic scenes.
"""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("demo_output"))
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--seed", type=int, default=DEMO_SEED)
    ap.add_argument("--weights", type=Path, default=DEMO_WEIGHTS)
    args = ap.parse_args(argv)
    report = run_demo(args.out, args.frames, args.seed, args.weights)
    print((args.out / "report.md").read_text())
    fixed = report["metrics"]["fixed_scale"]
    if not fixed:
        print("no depth frames were received: see demo_output/node.log")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
