"""Resident memory of depth_node on the ONNX Runtime path after N frames, beside two smaller processes that do
part of its work, all fed the same frames over DDS in one run:

    python bench/node_memory.py [--frames 100] [--width 640 --height 480]

1. ``depth_node`` (python -m spidepth_ros.ros.depth_node, backend onnxruntime, small preset);
2. a bare ONNX Runtime process: the same model, N inferences on a tensor, no ROS;
3. a minimal rclpy + OpenCV + ONNX Runtime process: subscribes to the same images, resizes with OpenCV, runs
   the model and publishes a 32FC1 image (what any Python depth node must at least hold in memory).

VmRSS is read from /proc/<pid>/status once the process has handled the N frames. The ratios say how much of the
node's memory is its own and how much any rclpy + ONNX Runtime process pays.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, random_small_onnx, rss_mb  # noqa: E402

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

BARE_ORT = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 96, 320)).astype(np.float32)
    for _ in range(int(sys.argv[2])):
        session.run(["depth"], {"image": x})
    print("DONE", flush=True)
    sys.stdin.read()          # hold still while the parent reads VmRSS
""")

MINIMAL_NODE = textwrap.dedent("""
    import sys, cv2, numpy as np, onnxruntime as ort, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("minimal_depth", namespace="/minimal")
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    pub = node.create_publisher(Image, "depth/image", 5)
    count = [0]
    def on_image(msg):
        rgb = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width * 3]
        rgb = rgb.reshape(msg.height, msg.width, 3)
        x = cv2.resize(rgb, (320, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        d = session.run(["depth"], {"image": np.ascontiguousarray(x.transpose(2, 0, 1)[None])})[0][0, 0]
        pub.publish(Image(header=msg.header, height=d.shape[0], width=d.shape[1], encoding="32FC1",
                          step=d.shape[1] * 4, data=d.tobytes()))
        count[0] += 1
    node.create_subscription(Image, "image", on_image, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    while rclpy.ok():
        rclpy.spin_once(node, timeout_sec=0.1)
""")


def feed(context_node, namespace: str, frames: int, width: int, height: int, timeout: float = 120.0) -> int:
    """Publish ``frames`` rgb8 images + camera_info under ``namespace`` (reliable) and count depth replies."""
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = context_node.create_publisher(Image, f"/{namespace}/image", qos)
    pub_info = context_node.create_publisher(CameraInfo, f"/{namespace}/camera_info", qos)
    got = []
    sub = context_node.create_subscription(Image, f"/{namespace}/depth/image", got.append, 10)
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(context_node, timeout_sec=0.1)
    rgb = (np.random.default_rng(1).random((height, width, 3)) * 255).astype(np.uint8).tobytes()
    for i in range(frames):
        header = Header(stamp=Time(sec=1000 + i), frame_id="cam")
        pub_info.publish(CameraInfo(header=header, width=width, height=height,
                                    k=[500.0, 0, width / 2, 0, 500.0, height / 2, 0, 0, 1],
                                    p=[500.0, 0, width / 2, 0, 0, 500.0, height / 2, 0, 0, 0, 1, 0]))
        pub.publish(Image(header=header, height=height, width=width, encoding="rgb8", step=width * 3, data=rgb))
        wait_until = time.monotonic() + 5.0
        while len(got) <= i and time.monotonic() < wait_until:         # one frame at a time: none replaced
            rclpy.spin_once(context_node, timeout_sec=0.05)
    context_node.destroy_subscription(sub)
    return len(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args()

    import rclpy

    onnx_path = random_small_onnx(tempfile.mkdtemp())
    rclpy.init()
    feeder = rclpy.create_node("memory_bench_feeder")
    rows = []
    try:
        node = subprocess.Popen(
            [sys.executable, "-m", "spidepth_ros.ros.depth_node", "--ros-args", "-r", "__ns:=/membench",
             "-p", f"model_path:={onnx_path}", "-p", "backend:=onnxruntime", "-p", "lazy:=false",
             "-p", "qos_overrides./membench/image.subscription.reliability:=reliable",
             "-p", "qos_overrides./membench/camera_info.subscription.reliability:=reliable"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = feed(feeder, "membench", args.frames, args.width, args.height)
        rows.append(("depth_node (ONNX Runtime path)", done, rss_mb(node.pid)))
        node.terminate()
        node.wait(timeout=20)

        minimal = subprocess.Popen([sys.executable, "-c", MINIMAL_NODE, str(onnx_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = feed(feeder, "minimal", args.frames, args.width, args.height)
        rows.append(("minimal rclpy + OpenCV + ONNX Runtime node", done, rss_mb(minimal.pid)))
        minimal.terminate()
        minimal.wait(timeout=20)

        bare = subprocess.Popen([sys.executable, "-c", BARE_ORT, str(onnx_path), str(args.frames)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert bare.stdout.readline().strip() == "DONE"
        rows.append(("bare ONNX Runtime process (no ROS)", args.frames, rss_mb(bare.pid)))
        bare.stdin.close()
        bare.wait(timeout=20)
    finally:
        feeder.destroy_node()
        rclpy.shutdown()

    print(f"# {machine()}; small_r18_96x320, {args.width}x{args.height} rgb8 frames over reliable DDS")
    node_mb = rows[0][2]
    print("| process | frames handled | VmRSS MB | depth_node / this |")
    print("|---|---|---|---|")
    for name, frames, mb in rows:
        print(f"| {name} | {frames} | {mb:.0f} | {node_mb / mb:.2f}x |")


if __name__ == "__main__":
    main()
