"""Inference latency (p50/p95) per backend and the ratio to torch eager, measured side by side in one run.

    python bench/inference.py [--presets small_r18_96x320 resnet50_192x640] [--repeats 30]
    SPIDEPTH_OFFICIAL_REPO=/path/to/SPIdepth python bench/inference.py --presets resnet50_192x640

Random-init weights (latency does not depend on the values). TensorRT and CUDA rows appear where they exist.
Where SPIDEPTH_OFFICIAL_REPO points at a checkout of the official code, two more rows run the same weights
through it: the official PyTorch modules (eager) and the official model exported naively to ONNX Runtime.
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


def estimators(ckpt: Path, onnx: Path):
    yield "torch eager (cpu)", TorchDepthEstimator(ckpt, "cpu")
    yield "onnxruntime (cpu)", OnnxRuntimeDepthEstimator(onnx, "cpu")
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
    except Exception as exc:
        print(f"  (tensorrt skipped: {type(exc).__name__}: {str(exc)[:80]})")


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
    args = ap.parse_args()
    print(f"machine: {machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for name in args.presets:
        p = get_preset(name)
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            ckpt = save_checkpoint(Path(tmp) / "m.pt", p, build_depth_net(p).eval())
            onnx, _ = export_onnx(ckpt, Path(tmp) / "m.onnx")
            x = np.random.default_rng(0).random((1, 3, p.height, p.width)).astype(np.float32)
            rows = []
            for label, est in estimators(ckpt, onnx):
                with est:
                    rows.append((label, p50_p95(time_ms(lambda: est.infer_tensor(x), args.repeats))))
            if p.official:
                rows += official_rows(p, ckpt, Path(tmp), x, args.repeats)
        base = rows[0][1][0]
        print(f"\n{name} ({p.width}x{p.height})")
        print(f"  {'backend':26s} {'p50 ms':>8s} {'p95 ms':>8s} {'speed-up vs torch eager (p50)':>30s}")
        for label, (p50, p95) in rows:
            print(f"  {label:26s} {p50:8.1f} {p95:8.1f} {base / p50:30.2f}x")


if __name__ == "__main__":
    main()
