"""Inference latency (p50/p95) per backend and the ratio to torch eager, measured side by side in one run.

    python bench/inference.py [--presets small_r18_96x320 resnet50_192x640] [--repeats 30]
    python bench/inference.py --presets small_r18_96x320 --checkpoint models/demo_small.pt   # trained weights
    SPIDEPTH_OFFICIAL_REPO=/path/to/SPIdepth python bench/inference.py --presets resnet50_192x640

Random-init weights (latency does not depend on the values) unless ``--checkpoint`` gives weights of a preset.
INT8 rows: the model is calibrated (``spidepth-export --precision int8``) on a synthetic drive rendered at the
preset's size (seed 7) and its depth is compared with FP32's on other frames (seed 100, with ground truth):
median-scaled AbsRel of both on the same frames and the relative drift. (AbsRel of random weights means nothing;
the drift of trained weights is the number to read.) TensorRT and CUDA rows appear where they exist. Where
SPIDEPTH_OFFICIAL_REPO points at a checkout of the official code, two more rows run the same weights through it:
the official PyTorch modules (eager) and the official model exported naively to ONNX Runtime.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, p50_p95, time_ms  # noqa: E402

from spidepth_ros.checkpoint import save_checkpoint  # noqa: E402
from spidepth_ros.export import export_onnx  # noqa: E402
from spidepth_ros.models import build_depth_net  # noqa: E402
from spidepth_ros.presets import get_preset  # noqa: E402
from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator  # noqa: E402
from spidepth_ros.runtime.torch_backend import TorchDepthEstimator  # noqa: E402


def estimators(ckpt: Path, onnx: Path, int8: Path):
    yield "torch eager (cpu)", TorchDepthEstimator(ckpt, "cpu")
    yield "onnxruntime (cpu)", OnnxRuntimeDepthEstimator(onnx, "cpu")
    yield "onnxruntime int8 (cpu)", OnnxRuntimeDepthEstimator(int8, "cpu")
    if torch.cuda.is_available():
        yield "torch eager (cuda fp32)", TorchDepthEstimator(ckpt, "cuda")
        yield "torch eager (cuda fp16)", TorchDepthEstimator(ckpt, "cuda", half=True)
        try:
            yield "onnxruntime (cuda)", OnnxRuntimeDepthEstimator(onnx, "cuda")
        except Exception as exc:  # provider missing
            print(f"  (onnxruntime cuda skipped: {exc})")
    try:
        from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator

        yield "tensorrt fp16", TensorRTDepthEstimator(onnx, "fp16")
        yield "tensorrt int8", TensorRTDepthEstimator(onnx, "int8")
    except Exception as exc:
        print(f"  (tensorrt skipped: {type(exc).__name__}: {str(exc)[:80]})")


def synthetic_bag(folder: Path, seed: int, frames: int, width: int, height: int) -> Path:
    from spidepth_ros.synth import SynthConfig, write_bag

    return write_bag(SynthConfig(width=width, height=height, frames=frames, seed=seed), folder / f"synth_{seed}",
                     progress=False)


def int8_model(onnx: Path, preset, tmp: Path, frames: int) -> Path:
    from spidepth_ros.quantize import export_int8, select_calibration_frames

    calib = synthetic_bag(tmp, 7, max(frames, 40), preset.width, preset.height)
    chosen = select_calibration_frames([calib], "/camera/image_raw", frames, progress=False)
    result = export_int8(onnx, chosen, log=lambda line: print(f"  {line}"))
    return result.path


def absrel_fp32_int8(onnx: Path, int8: Path, preset, tmp: Path, frames: int) -> tuple[float, float, int]:
    """Median-scaled AbsRel of the FP32 and INT8 models on the same held-out synthetic frames."""
    from spidepth_ros.metrics import EvalSettings
    from spidepth_ros.training.evaluate import evaluate_bags

    bag = synthetic_bag(tmp, 100, frames, preset.width, preset.height)
    out = []
    for model in (onnx, int8):
        with OnnxRuntimeDepthEstimator(model, "cpu") as est:
            rows = evaluate_bags(lambda rgb: est.infer(rgb).depth, [bag], "/camera/image_raw", "/camera/depth",
                                 EvalSettings(), progress=False)
        out.append(float(np.mean([r["abs_rel"] for r in rows])))
    return out[0], out[1], len(rows)


def official_rows(preset, ckpt: Path, tmp: Path, x: np.ndarray, repeats: int) -> list:
    """Official eager and official-naive-ONNX Runtime latencies on our checkpoint's weights (if a checkout exists)."""
    from spidepth_ros.checkpoint import load_weights
    from spidepth_ros.tools.official import build_official, official_depth, official_repo

    repo = official_repo()
    if repo is None:
        return []
    import onnxruntime as ort

    enc, dec = build_official(preset, repo)
    weights = load_weights(ckpt)
    enc.load_state_dict(weights.encoder)
    dec.load_state_dict(weights.depth_head)

    class Official(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.dec = enc, dec

        def forward(self, image):
            return official_depth(self.enc, self.dec, image)

    model = Official().eval()
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        eager = p50_p95(time_ms(lambda: model(xt), repeats))
    naive = tmp / "official.onnx"
    with torch.no_grad():      # what a user gets from torch.onnx.export with the defaults
        torch.onnx.export(model, (xt,), str(naive), input_names=["image"], output_names=["depth"], dynamo=False)
    session = ort.InferenceSession(str(naive), providers=["CPUExecutionProvider"])
    onnx_naive = p50_p95(time_ms(lambda: session.run(None, {"image": x}), repeats))
    return [("official eager (cpu)", eager), ("official naive onnx (cpu)", onnx_naive)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="*", default=["small_r18_96x320", "resnet50_192x640"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--checkpoint", type=Path, help="trained weights (our .pt) for the preset they belong to")
    ap.add_argument("--int8-frames", type=int, default=32, help="calibration frames for the INT8 rows")
    ap.add_argument("--eval-frames", type=int, default=40, help="held-out frames for the AbsRel drift")
    args = ap.parse_args()
    from spidepth_ros.checkpoint import load_weights
    from spidepth_ros.quantize import int8_dot_product_support

    trained = load_weights(args.checkpoint).preset.name if args.checkpoint else None
    print(f"machine: {machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads); integer dot "
          f"product: {int8_dot_product_support()[1]}")
    for name in args.presets:
        p = get_preset(name)
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            ckpt = args.checkpoint if trained == name else \
                save_checkpoint(Path(tmp) / "m.pt", p, build_depth_net(p).eval())
            onnx, _ = export_onnx(ckpt, Path(tmp) / "m.onnx")
            int8 = int8_model(onnx, p, Path(tmp), args.int8_frames)
            x = np.random.default_rng(0).random((1, 3, p.height, p.width)).astype(np.float32)
            rows = []
            for label, est in estimators(ckpt, onnx, int8):
                with est:
                    rows.append((label, p50_p95(time_ms(lambda: est.infer_tensor(x), args.repeats))))
            if p.official:
                rows += official_rows(p, ckpt, Path(tmp), x, args.repeats)
            fp32_absrel, int8_absrel, n_eval = absrel_fp32_int8(onnx, int8, p, Path(tmp), args.eval_frames)
        base = rows[0][1][0]
        by_label = {label: p50 for label, (p50, _) in rows}
        print(f"\n{name} ({p.width}x{p.height}, {'weights ' + str(ckpt) if trained == name else 'random weights'})")
        print(f"  {'backend':26s} {'p50 ms':>8s} {'p95 ms':>8s} {'speed-up vs torch eager (p50)':>30s}")
        for label, (p50, p95) in rows:
            print(f"  {label:26s} {p50:8.1f} {p95:8.1f} {base / p50:30.2f}x")
        speedup = by_label["onnxruntime (cpu)"] / by_label["onnxruntime int8 (cpu)"]
        print(f"  onnxruntime int8 vs fp32 (p50): {speedup:.2f}x "
              f"faster; median-scaled AbsRel on {n_eval} held-out synthetic frames: fp32 {fp32_absrel:.4f}, int8 "
              f"{int8_absrel:.4f} ({100 * (int8_absrel - fp32_absrel) / fp32_absrel:+.2f} % relative)")


if __name__ == "__main__":
    main()
