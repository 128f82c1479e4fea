"""Two cameras in one depth_node against two single-camera depth_nodes on the same machine, in one run:
total depth images per second and resident memory.

    python bench/multi_camera.py [--seconds 20] [--rate 60] [--width 320 --height 96]

Both cameras publish frames (rgb8 + camera_info, reliable) at ``--rate`` each, faster than the machine can
infer, so each node runs flat out and keeps the newest frame per camera. The one-node setup runs the small
preset exported with ``--dynamic-batch`` (the two cameras' frames go through ONNX Runtime as one batch); the
two-node setup runs the same model, one camera each. Depth images received over the last ``--seconds`` (after a
warm-up) give the rate; VmRSS of the node processes at the end gives the memory.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, random_small_onnx, rss_mb  # noqa: E402

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
CAMERAS = ("cam_a", "cam_b")


def node_process(onnx: Path, namespace: str, cameras: list[str]) -> subprocess.Popen:
    qos = []
    for cam in cameras:
        prefix = f"/{namespace}/{cam}" if cam else f"/{namespace}"
        qos += ["-p", f"qos_overrides.{prefix}/image.subscription.reliability:=reliable",
                "-p", f"qos_overrides.{prefix}/camera_info.subscription.reliability:=reliable"]
    cams = "[" + ",".join(f'"{c}"' for c in cameras) + "]"
    return subprocess.Popen([sys.executable, "-m", "spidepth_ros.ros.depth_node", "--ros-args",
                             "-r", f"__ns:=/{namespace}", "-p", f"model_path:={onnx}", "-p", "backend:=onnxruntime",
                             "-p", "lazy:=false", "-p", f"cameras:={cams}", *qos],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(feeder, topics: list[str], procs: list, seconds: float, rate: float, width: int, height: int) -> tuple:
    """Publish to ``topics`` (camera prefixes) and return (depth images/s over the window, RSS MB of procs)."""
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    pubs = [(feeder.create_publisher(Image, f"{t}/image", qos), feeder.create_publisher(CameraInfo,
                                                                                      f"{t}/camera_info", qos))
            for t in topics]
    counts = {t: 0 for t in topics}
    subs = [feeder.create_subscription(Image, f"{t}/depth/image",
                                       lambda m, t=t: counts.__setitem__(t, counts[t] + 1), 10) for t in topics]
    deadline = time.monotonic() + 120
    while any(p.get_subscription_count() == 0 for p, _ in pubs) and time.monotonic() < deadline:
        rclpy.spin_once(feeder, timeout_sec=0.1)
    rgb = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8).tobytes()
    k = [200.0, 0, width / 2, 0, 200.0, height / 2, 0, 0, 1]
    warmup, start_counts, t_start = time.monotonic() + 5.0, None, None
    i = 0
    end = warmup + seconds
    while time.monotonic() < end:
        header = Header(stamp=Time(sec=1000 + i // 1000, nanosec=(i % 1000) * 1_000_000), frame_id="cam")
        for pub, pub_info in pubs:
            pub_info.publish(CameraInfo(header=header, width=width, height=height, k=k, p=k[:3] + [0.0] + k[3:6] +
                                        [0.0] + k[6:] + [0.0]))
            pub.publish(Image(header=header, height=height, width=width, encoding="rgb8", step=width * 3, data=rgb))
        i += 1
        next_t = time.monotonic() + 1.0 / rate
        while time.monotonic() < next_t:
            rclpy.spin_once(feeder, timeout_sec=max(0.0, next_t - time.monotonic()))
        if start_counts is None and time.monotonic() >= warmup:
            start_counts, t_start = dict(counts), time.monotonic()
    elapsed = time.monotonic() - t_start
    fps = sum(counts[t] - start_counts[t] for t in topics) / elapsed
    memory = sum(rss_mb(p.pid) for p in procs)
    for s in subs:
        feeder.destroy_subscription(s)
    return fps, memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=60.0, help="frames per second published per camera")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=96)
    args = ap.parse_args()

    import rclpy

    onnx = random_small_onnx(tempfile.mkdtemp(), dynamic_batch=True)
    rclpy.init()
    feeder = rclpy.create_node("multi_camera_bench")
    try:
        one = node_process(onnx, "one", list(CAMERAS))
        fps_one, mem_one = run(feeder, [f"/one/{c}" for c in CAMERAS], [one], args.seconds, args.rate,
                               args.width, args.height)
        one.terminate()
        one.wait(timeout=20)
        two = [node_process(onnx, f"two_{c}", [""]) for c in CAMERAS]
        fps_two, mem_two = run(feeder, [f"/two_{c}" for c in CAMERAS], two, args.seconds, args.rate,
                               args.width, args.height)
        for p in two:
            p.terminate()
            p.wait(timeout=20)
    finally:
        feeder.destroy_node()
        rclpy.shutdown()
    print(f"# {machine()}; small_r18_96x320 (dynamic batch), two cameras {args.width}x{args.height} at "
          f"{args.rate:g} Hz each, {args.seconds:g} s after a 5 s warm-up, ONNX Runtime on the CPU")
    print("| setup | depth images/s (both cameras) | VmRSS MB (all node processes) |")
    print("|---|---|---|")
    print(f"| one node, cameras [cam_a, cam_b] | {fps_one:.1f} | {mem_one:.0f} |")
    print(f"| two nodes, one camera each | {fps_two:.1f} | {mem_two:.0f} |")
    print(f"one node / two nodes: {fps_one / fps_two:.2f}x the frames per second, {mem_one / mem_two:.2f}x the memory")


if __name__ == "__main__":
    main()
