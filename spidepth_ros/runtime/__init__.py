"""Inference runtimes behind one interface (:class:`DepthEstimator`).

``create_estimator(model, backend="auto")`` picks by file type and availability:
``.engine`` -> TensorRT; ``.onnx`` -> TensorRT if TensorRT and a GPU exist, else ONNX Runtime (CUDA provider
when present, else CPU); a checkpoint (our ``.pt`` or an official folder) -> torch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from .base import BackendUnavailable, DepthEstimator, DepthResult
from .metadata import MetadataError, ModelMetadata, read_sidecar, sidecar_path, write_sidecar
from .preprocess import Preprocessor

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
#: ``precision`` values: auto = fp16 on TensorRT and torch CUDA, INT8 on ONNX Runtime's CPU when the model has an
#: INT8 version and the CPU has integer dot-product instructions, else fp32.
PRECISIONS = ("auto", "fp32", "fp16", "int8")
_log = logging.getLogger("spidepth_ros.runtime")


def tensorrt_unusable_reason(device: str = "auto") -> str:
    """Why TensorRT cannot run here ("" when it can). Never raises: ``auto`` must fall back, not crash."""
    try:
        from .tensorrt_backend import device_index, gpu_identity, import_cudart, import_tensorrt

        import_tensorrt()
        import_cudart()
        gpu_identity(device_index(device))
        return ""
    except BackendUnavailable as exc:
        return str(exc)
    except Exception as exc:  # a broken TensorRT/CUDA install (OSError from a missing libnvinfer, ...)
        return f"{type(exc).__name__}: {exc}"


def _tensorrt_usable(device: str = "auto") -> bool:
    return not tensorrt_unusable_reason(device)


def _onnxruntime_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(model: str | Path, backend: str = "auto", device: str = "auto",
                   log: Callable[[str], None] = _log.info) -> str:
    """Resolve ``auto`` to a concrete backend for this model file and machine (a fallback is logged with why)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    path = Path(model)
    if path.suffix == ".engine":
        return "tensorrt"
    if path.suffix == ".onnx":
        if device == "cpu":
            return "onnxruntime"
        reason = tensorrt_unusable_reason(device)
        if reason:
            log(f"TensorRT not used ({reason}): running on ONNX Runtime instead")
            return "onnxruntime"
        return "tensorrt"
    return "torch"


#: File types a model may have (an official weights folder is a directory).
MODEL_SUFFIXES = (".engine", ".onnx", ".pt", ".pth")


def check_model_file(model: str | Path) -> None:
    """Refuse a model that cannot load, with the checks that need no backend and read the file at most once:
    it exists, is not empty, is of a known type; an ``.onnx``/``.engine`` has a readable sidecar, and an
    ``.onnx`` matches the hash its sidecar records; a PyTorch file is a torch.save archive; a folder holds the
    official ``encoder.pth`` and ``depth.pth``. Raises ``FileNotFoundError`` or ``ValueError`` (MetadataError)
    naming the problem. The node runs this before it answers a ``model_path`` change."""
    from .metadata import check_model_hash, model_sha256

    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        missing = [name for name in ("encoder.pth", "depth.pth") if not (path / name).is_file()]
        if missing:
            raise MetadataError(f"{path} is a folder without {' and '.join(missing)}: an official SPIdepth weights "
                                "folder holds encoder.pth and depth.pth")
        return
    if path.suffix not in MODEL_SUFFIXES:
        raise MetadataError(f"{path} is not a model: use a .engine, .onnx (with its .onnx.json), .pt checkpoint "
                            "or an official weights folder")
    if path.stat().st_size == 0:
        raise MetadataError(f"{path} is empty (0 bytes): re-export or copy it again")
    if path.suffix in (".onnx", ".engine"):
        meta = read_sidecar(path)
        if path.suffix == ".onnx":
            check_model_hash(meta, path, model_sha256(path))
    else:
        import zipfile

        with open(path, "rb") as f:
            legacy = f.read(1) == b"\x80"                 # torch.save before 1.6: a pickle stream
        if not (legacy or zipfile.is_zipfile(path)):
            raise MetadataError(f"{path} is not a PyTorch file (torch.save writes a zip archive); export or "
                                "download it again")


def int8_model_for(onnx_path: Path) -> Optional[Path]:
    """The INT8 version of an exported ONNX (its sidecar names it; ``spidepth-export --precision int8``), or None.
    An ONNX that is itself INT8 is its own."""
    meta = read_sidecar(onnx_path)
    if meta.precision == "int8":
        return onnx_path
    name = meta.extra.get("int8_model") if isinstance(meta.extra, dict) else None
    candidate = onnx_path.with_name(name) if name else None
    return candidate if candidate is not None and candidate.is_file() else None


def onnxruntime_model_for(onnx_path: Path, precision: str, device: str,
                          log: Callable[[str], None] = _log.info) -> Path:
    """Which ONNX file ONNX Runtime runs for ``precision`` (auto/fp32/fp16/int8) on ``device`` (cpu/cuda)."""
    from ..quantize import int8_dot_product_support

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist")
    int8 = int8_model_for(onnx_path)
    if precision == "int8":
        if int8 is None:
            raise MetadataError(f"precision int8 asked for but {onnx_path.name} has no INT8 version: export one with "
                                "spidepth-export ... --precision int8 --calibration-bags BAG")
        return int8
    if precision == "auto" and int8 is not None and not device.startswith("cuda"):
        fast, which = int8_dot_product_support()
        if fast:
            log(f"precision auto: running the INT8 model {int8.name} (this CPU has {which})")
            return int8
        log(f"precision auto: {int8.name} exists but this CPU has {which}, where INT8 does not pay: running FP32")
    if onnx_path == int8 and precision in ("fp32", "fp16"):
        raise MetadataError(f"{onnx_path.name} is an INT8 model; for precision {precision} give its FP32 ONNX "
                            f"({read_sidecar(onnx_path).extra.get('int8', {}).get('fp32_model', 'model.onnx')})")
    return onnx_path


def create_estimator(model: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
                     crop: str = "none", cache_dir: Optional[str] = None, threads: int = 0,
                     log: Callable[[str], None] = _log.info, refittable: bool = False) -> DepthEstimator:
    """Build (not start) the estimator for ``model``; logs the backend it chose and why. ``refittable``: a
    TensorRT engine built from an ONNX can later take new weights without a rebuild (adaptation)."""
    chosen = choose_backend(model, backend, device, log)
    path = Path(model)
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTDepthEstimator

        trt_precision = precision if precision != "auto" else \
            "int8" if path.suffix == ".onnx" and read_sidecar(path).precision == "int8" else "fp16"
        try:
            est: DepthEstimator = TensorRTDepthEstimator(path, trt_precision, crop, cache_dir, log=log,
                                                         device=device, refittable=refittable)
        except BackendUnavailable as exc:       # asked for by name: say how to run without it
            raise BackendUnavailable(f"{exc}; or set backend to auto (falls back to ONNX Runtime) or onnxruntime"
                                     ) from exc
    elif chosen == "onnxruntime":
        if path.suffix != ".onnx":
            raise ValueError(f"backend onnxruntime needs an .onnx file, got {path}; export one with spidepth-export")
        from .onnxruntime_backend import OnnxRuntimeDepthEstimator

        dev = device if device != "auto" else ("cuda" if _onnxruntime_cuda() else "cpu")
        est = OnnxRuntimeDepthEstimator(onnxruntime_model_for(path, precision, dev, log), dev, crop, threads)
    else:
        if path.suffix in (".onnx", ".engine"):
            raise ValueError(f"backend torch needs a checkpoint (.pt or an official folder), got {path}")
        from .torch_backend import TorchDepthEstimator

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision == "int8":
            raise ValueError("precision int8 runs on ONNX Runtime or TensorRT: export an INT8 ONNX with "
                             "spidepth-export --precision int8 --calibration-bags BAG")
        est = TorchDepthEstimator(path, device, half=precision in ("fp16", "auto") and device.startswith("cuda"),
                                  crop=crop)
    log(f"inference backend: {chosen} (requested {backend}) for {path.name}")
    return est


__all__ = ["BACKENDS", "BackendUnavailable", "DepthEstimator", "DepthResult", "MODEL_SUFFIXES", "MetadataError",
           "ModelMetadata", "PRECISIONS", "Preprocessor", "check_model_file", "choose_backend", "create_estimator",
           "int8_model_for", "onnxruntime_model_for", "read_sidecar", "sidecar_path", "write_sidecar"]
