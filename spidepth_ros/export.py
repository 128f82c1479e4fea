"""``spidepth-export``: checkpoint (official folder or ours) -> ONNX (+ sidecar) -> optional TensorRT engine.

    spidepth-export /path/to/kitti_weights --preset cvnxt_h_320x1024 -o models/spidepth.onnx
    spidepth-export runs/mine/best.pt -o models/mine.onnx --engine --precision fp16   # on the robot
    spidepth-export runs/mine/best.pt -o models/mine.onnx --precision int8 --calibration-bags run1 run2

The ONNX has a static input ``image`` [1, 3, H, W] (RGB, [0, 1]) and output ``depth`` [1, 1, H/2, W/2]
(``--dynamic-batch`` makes dim 0 symbolic). A JSON sidecar (``<file>.onnx.json``) records the contract.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .bagio import BagError
from .checkpoint import CheckpointError, file_sha256, load_weights
from .quantize import DEFAULT_CALIBRATION_FRAMES, DEFAULT_MAX_DEVIATION, CalibrationError, export_int8, \
    select_calibration_frames
from .runtime.metadata import MetadataError, ModelMetadata, model_sha256, write_sidecar
from .runtime.preprocess import CROP_MODES

DEFAULT_OPSET = 17
#: Above this many bytes of weights the ONNX keeps them in one external ``<name>.onnx.data`` file (protobuf
#: cannot hold 2 GiB; cvnxt_h_320x1024 has 2.9 GB). torch writes one file per tensor then; we gather them.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def _write_onnx(exported: Path, out: Path, external: Optional[bool]) -> bool:
    """Move torch's export to ``out``: as one file, or as ``out`` + one ``out.name + '.data'`` when the weights
    are large (or ``external`` asks for it). Returns whether external data was written."""
    import onnx

    folder = exported.parent
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    spread = any(f.name != exported.name for f in folder.iterdir())     # torch wrote per-tensor files
    use_external = external if external is not None else (spread or total > EXTERNAL_DATA_THRESHOLD)
    data = out.with_name(out.name + ".data")
    data.unlink(missing_ok=True)
    if not use_external and not spread:
        exported.replace(out)
        return False
    model = onnx.load(str(exported), load_external_data=True)
    onnx.save_model(model, str(out), save_as_external_data=use_external, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return use_external


def export_onnx(weights_path: str | Path, out: str | Path, preset: Optional[str] = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, fp16: bool = False, height: Optional[int] = None,
                width: Optional[int] = None, external_data: Optional[bool] = None,
                max_batch: int = 1) -> tuple[Path, ModelMetadata]:
    """Export the depth network; returns the ONNX path and its metadata (sidecar already written).

    ``external_data``: None = automatic (weights above :data:`EXTERNAL_DATA_THRESHOLD` go to one
    ``<out>.data`` file), True/False forces it. ``max_batch`` bounds the TensorRT profile of a dynamic batch.
    """
    import tempfile

    import torch

    if max_batch < 1 or (max_batch > 1 and not dynamic_batch):
        raise ValueError("max_batch must be >= 1, and above 1 only with dynamic_batch")

    weights = load_weights(weights_path, preset)
    if height or width:
        weights.preset = weights.preset.replace(height=height or weights.preset.height,
                                                width=width or weights.preset.width)
    model, _ = weights.build()
    p = weights.preset
    model.check_input_size(p.height, p.width)
    net: torch.nn.Module = model
    if fp16:
        class Fp16(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner.half()

            def forward(self, x):
                return self.inner(x.half()).float()

        net = Fp16(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.rand(1, 3, p.height, p.width)
    axes = {"image": {0: "batch"}, "depth": {0: "batch"}} if dynamic_batch else None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        exported = Path(tmp) / out.name
        with torch.no_grad():
            torch.onnx.export(net, (dummy,), str(exported), input_names=["image"], output_names=["depth"],
                              opset_version=opset, dynamic_axes=axes, dynamo=False)
        external = _write_onnx(exported, out, external_data)
    src = Path(weights_path)
    ckpt_sha = file_sha256(src) if src.is_file() else file_sha256(src / "encoder.pth") if (src / "encoder.pth").exists() \
        else file_sha256(src.parent / "encoder.pth")
    meta = ModelMetadata.from_preset(p, opset=opset, dynamic_batch=dynamic_batch,
                                     precision="fp16" if fp16 else "fp32", checkpoint_sha256=ckpt_sha,
                                     model_sha256=model_sha256(out), max_batch=max_batch,
                                     external_data=f"{out.name}.data" if external else "",
                                     depth_scale=float(weights.extra.get("depth_scale") or 1.0),
                                     extra={"source": str(src)})
    write_sidecar(out, meta)
    return out, meta


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="official folder (encoder.pth + depth.pth) or our .pt checkpoint")
    ap.add_argument("-o", "--output", required=True, help="ONNX file to write")
    ap.add_argument("--preset", help="preset name (default: detected from tensor shapes)")
    ap.add_argument("--height", type=int, help="override the input height (must suit the Self Query Layer)")
    ap.add_argument("--width", type=int, help="override the input width")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--dynamic-batch", action="store_true",
                    help="symbolic batch dimension; TensorRT engines get a profile of batch 1..--max-batch")
    ap.add_argument("--max-batch", type=int, default=1, help="largest batch of a --dynamic-batch engine")
    ap.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                    help="keep weights in one <output>.data file (auto: above 1 GiB, e.g. cvnxt_h_320x1024)")
    ap.add_argument("--engine", action="store_true", help="also build a TensorRT engine (needs TensorRT + GPU)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                    help="engine precision; fp16 also writes <output>.fp16.onnx (TensorRT >= 11), int8 writes the "
                         "calibrated Q/DQ <output>.int8.onnx that ONNX Runtime and TensorRT both run")
    ap.add_argument("--calibration-bags", nargs="+", default=[], metavar="BAG",
                    help="rosbag2 recordings (mcap or sqlite3) whose frames calibrate INT8")
    ap.add_argument("--calibration-topic", default="/camera/image_raw",
                    help="colour image topic (Image or CompressedImage) in the calibration bags")
    ap.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES,
                    help="frames chosen across the bags, spread in time and content")
    ap.add_argument("--crop", choices=CROP_MODES, default="none",
                    help="the node's crop mode: calibration frames are preprocessed exactly as the node will")
    ap.add_argument("--max-int8-deviation", type=float, default=DEFAULT_MAX_DEVIATION,
                    help="largest median-scaled relative deviation of INT8 depth from FP32 accepted when deciding "
                         "which nodes stay float")
    ap.add_argument("--workspace-mib", type=int, default=1024)
    ap.add_argument("--cache-dir", help="where engines are cached (default: beside the ONNX)")
    ap.add_argument("--device-index", type=int, default=0, help="GPU to build the engine for (cuda:N)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (CalibrationError, BagError, CheckpointError, MetadataError) as exc:
        print(f"spidepth-export: error: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    frames = None
    if args.precision == "int8":
        if not args.calibration_bags:
            raise CalibrationError("--precision int8 needs --calibration-bags: recordings of the robot's own camera "
                                   "calibrate the INT8 ranges")
        from .bagio import check_bag_path

        for bag in args.calibration_bags:
            check_bag_path(bag)
        # every frame is read and checked before anything is written: a bad bag leaves nothing behind
        frames = select_calibration_frames(args.calibration_bags, args.calibration_topic, args.calibration_frames,
                                           progress=not args.no_progress)
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    onnx_path, meta = export_onnx(args.weights, args.output, args.preset, args.opset, args.dynamic_batch,
                                  height=args.height, width=args.width, external_data=external,
                                  max_batch=args.max_batch)
    print(f"wrote {onnx_path} ({meta.input_width}x{meta.input_height}, preset {meta.preset['name']}) and "
          f"{onnx_path.name}.json")
    if args.precision == "fp16":
        fp16_path = onnx_path.with_name(onnx_path.name.replace(".onnx", ".fp16.onnx"))
        export_onnx(args.weights, fp16_path, args.preset, args.opset, args.dynamic_batch, fp16=True,
                    height=args.height, width=args.width, external_data=external, max_batch=args.max_batch)
        print(f"wrote {fp16_path} (FP16 graph for strongly typed TensorRT >= 11 builds)")
    if frames is not None:
        result = export_int8(onnx_path, frames, crop=args.crop, max_deviation=args.max_int8_deviation)
        info = result.metadata.extra["int8"]
        print(f"wrote {result.path} (INT8 Q/DQ, {info['calibration_frames']} calibration frames of "
              f"{frames.available}; float nodes: {result.chosen} ({len(info['float_nodes'])}); depth deviates "
              f"{100 * result.deviations[result.chosen]:.2f} % from FP32 on {info['held_out_frames']} held-out "
              "frames)")
    if args.engine:
        from .runtime.tensorrt_backend import engine_for_onnx

        engine = engine_for_onnx(onnx_path, args.precision, args.cache_dir, args.workspace_mib,
                                 device=args.device_index)
        print(f"engine ready: {engine}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
