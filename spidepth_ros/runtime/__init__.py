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
            log(f"TensorRT not used ({reason}): falling back to ONNX Runtime")
            return "onnxruntime"
        return "tensorrt"
    return "torch"


def create_estimator(model: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp16",
                     crop: str = "none", cache_dir: Optional[str] = None, threads: int = 0,
                     log: Callable[[str], None] = _log.info) -> DepthEstimator:
    """Build (not start) the estimator for ``model``; logs the backend it chose and why."""
    chosen = choose_backend(model, backend, device, log)
    path = Path(model)
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTDepthEstimator

        est: DepthEstimator = TensorRTDepthEstimator(path, precision, crop, cache_dir, log=log, device=device)
    elif chosen == "onnxruntime":
        if path.suffix != ".onnx":
            raise ValueError(f"backend onnxruntime needs an .onnx file, got {path}; export one with spidepth-export")
        from .onnxruntime_backend import OnnxRuntimeDepthEstimator

        dev = device if device != "auto" else ("cuda" if _onnxruntime_cuda() else "cpu")
        est = OnnxRuntimeDepthEstimator(path, dev, crop, threads)
    else:
        if path.suffix in (".onnx", ".engine"):
            raise ValueError(f"backend torch needs a checkpoint (.pt or an official folder), got {path}")
        from .torch_backend import TorchDepthEstimator

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        est = TorchDepthEstimator(path, device, half=precision == "fp16" and device.startswith("cuda"), crop=crop)
    log(f"inference backend: {chosen} (requested {backend}) for {path.name}")
    return est


__all__ = ["BACKENDS", "BackendUnavailable", "DepthEstimator", "DepthResult", "MetadataError", "ModelMetadata",
           "Preprocessor", "choose_backend", "create_estimator", "read_sidecar", "sidecar_path", "write_sidecar"]
