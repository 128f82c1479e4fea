"""The depth node's own per-frame work next to inference, and cloud building next to a plain copy of its bytes.

    python bench/node.py [--preset small_r18_96x320] [--width 640 --height 480] [--camera-height 1.5]

Measured in one run on the same frames (a synthetic street, so a floor is there to fit): message decode
(sensor_msgs/Image rgb8 with row padding), pre-processing, inference, post-processing (units, range), the cloud
filters (flying pixels at the default edge_filter, the height band), the per-frame floor fit of scale_source
camera_height, cloud building, colourising and output message construction (32FC1 Image, CameraInfo,
PointCloud2), all without DDS.
"""
from __future__ import annotations

import argparse
import sys
import time
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_ms  # noqa: E402

from spidepth_ros.checkpoint import save_checkpoint  # noqa: E402
from spidepth_ros.cloud import CloudBuilder  # noqa: E402
from spidepth_ros.encodings import decode_color_image  # noqa: E402
from spidepth_ros.export import export_onnx  # noqa: E402
from spidepth_ros.geometry import PinholeIntrinsics  # noqa: E402
from spidepth_ros.models import build_depth_net  # noqa: E402
from spidepth_ros.pipeline import DepthPipeline  # noqa: E402
from spidepth_ros.presets import get_preset  # noqa: E402
from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small_r18_96x320")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--camera-height", type=float, default=1.5,
                    help="metres: time scale_source camera_height's floor fit (0: scale_source model)")
    args = ap.parse_args()
    p = get_preset(args.preset)
    w, h = args.width, args.height
    rng = np.random.default_rng(0)
    from spidepth_ros.synth import SynthConfig, render_sequence

    rgb = next(iter(render_sequence(SynthConfig(width=w, height=h, frames=1, seed=3)))).rgb
    step = w * 3 + 64
    padded = np.zeros((h, step), np.uint8)
    padded[:, : w * 3] = rgb.reshape(h, -1)
    data = padded.tobytes()
    cam = PinholeIntrinsics(w * 0.8, w * 0.8, (w - 1) / 2, (h - 1) / 2, w, h)
    print(f"machine: {machine()}; preset {p.name}, camera {w}x{h} rgb8 (padded rows)")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ckpt = save_checkpoint(Path(tmp) / "m.pt", p, build_depth_net(p).eval())
        onnx, _ = export_onnx(ckpt, Path(tmp) / "m.onnx")
        from spidepth_ros.metric_scale import CameraHeightScale
        from spidepth_ros.pipeline import CloudOptions
        from spidepth_ros.ros.params import PARAMETERS

        edge = next(x.default for x in PARAMETERS if x.name == "edge_filter")
        options = CloudOptions(edge_filter=edge, min_height=0.05, max_height=2.0)
        with OnnxRuntimeDepthEstimator(onnx) as est:
            pipe = DepthPipeline(est)
            tracker = CameraHeightScale(args.camera_height) if args.camera_height > 0 else None
            timings = []
            for i in range(args.repeats):
                result = pipe.infer([rgb])[0]
                intr = pipe.depth_intrinsics(result, cam)
                t0 = time.perf_counter()
                scale, floor = 1.0, None
                if tracker is not None:
                    report = tracker.update(result.depth, intr, float(i))
                    scale, floor = report.scale, report.floor
                fit_ms = (time.perf_counter() - t0) * 1e3
                out = pipe.finish(result, rgb, intr, scale, 0.1, 80.0, True, options, True, floor)
                timings.append({**out.timings_ms, "floor fit": fit_ms})
            decode = time_ms(lambda: decode_color_image(h, w, "rgb8", 0, step, data), args.repeats)
            build_msgs = None
            try:
                from std_msgs.msg import Header

                from spidepth_ros.ros.conversions import camera_info_msg, cloud_msg, image_msg

                header = Header(frame_id="cam")

                def build():
                    image_msg(header, out.depth, "32FC1")
                    camera_info_msg(header, out.intrinsics)
                    cloud_msg(header, out.cloud)
                    image_msg(header, out.colored, "bgr8")

                build_msgs = time_ms(build, args.repeats)
            except ImportError:
                print("(rclpy messages not importable: message construction not measured)")
    med = {k: float(np.median([t[k] for t in timings[3:]])) for k in timings[0]}
    own = {"decode Image": float(np.median(decode)), "preprocess": med["preprocess"],
           "postprocess": med["postprocess"], f"cloud filters (edge {edge:g}, height band)": med["filters"],
           "floor fit (camera_height)": med["floor fit"], "cloud": med["cloud"], "colourise": med["colorize"]}
    if build_msgs is not None:
        own["build messages"] = float(np.median(build_msgs))
    total_own = sum(own.values())
    fit = own["floor fit (camera_height)"]
    print(f"\ninference (onnxruntime): {med['inference']:.2f} ms (median)")
    for k, v in own.items():
        print(f"  {k:38s} {v:7.3f} ms  ({100 * v / med['inference']:5.1f}% of inference)")
    print(f"node's own work, scale_source model (the default): {total_own - fit:.2f} ms = "
          f"{100 * (total_own - fit) / med['inference']:.1f}% of inference (target < 10%)")
    print(f"node's own work, scale_source camera_height: {total_own:.2f} ms = "
          f"{100 * total_own / med['inference']:.1f}% of inference")

    # cloud building vs a plain copy of the same number of bytes
    depth = out.depth
    intr = out.intrinsics
    builder = CloudBuilder()
    small_rgb = rng.integers(0, 255, depth.shape + (3,), dtype=np.uint8)
    cloud = builder.build(depth, intr, 1, small_rgb)
    nbytes = cloud.data.nbytes
    src = np.frombuffer(np.random.default_rng(1).bytes(nbytes), np.uint8)
    t_cloud = float(np.median(time_ms(lambda: builder.build(depth, intr, 1, small_rgb).tobytes(), 200)))
    t_copy = float(np.median(time_ms(lambda: src.copy().tobytes(), 200)))
    print(f"\ncloud {cloud.width}x{cloud.height} xyzrgb ({nbytes} bytes): build+serialise {t_cloud:.3f} ms, "
          f"plain copy+serialise of the same bytes {t_copy:.3f} ms, ratio {t_cloud / t_copy:.2f}x (target <= 3x)")
    big = np.full((h, w), 5.0, np.float32)
    big_cloud = builder.build(big, cam, 1, rgb)
    src_big = np.frombuffer(np.random.default_rng(2).bytes(big_cloud.data.nbytes), np.uint8)
    t_big = float(np.median(time_ms(lambda: builder.build(big, cam, 1, rgb).tobytes(), 30)))
    t_big_copy = float(np.median(time_ms(lambda: src_big.copy().tobytes(), 30)))
    print(f"cloud {w}x{h} xyzrgb (input resolution): build+serialise {t_big:.2f} ms, copy {t_big_copy:.2f} ms, "
          f"ratio {t_big / t_big_copy:.2f}x")


if __name__ == "__main__":
    main()
