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


def _tensorrt_usable() -> bool:
    try:
        from .tensorrt_backend import gpu_identity, import_tensorrt

        import_tensorrt()
        gpu_identity()
        return True
    except BackendUnavailable:
        return False


def _onnxruntime_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_backend(model: str | Path, backend: str = "auto") -> str:
    """Resolve ``auto`` to a concrete backend for this model file and machine."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    path = Path(model)
    if path.suffix == ".engine":
        return "tensorrt"
    if path.suffix == ".onnx":
        return "tensorrt" if _tensorrt_usable() else "onnxruntime"
    return "torch"


def create_estimator(model: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp16",
                     crop: str = "none", cache_dir: Optional[str] = None, threads: int = 0,
                     log: Callable[[str], None] = _log.info) -> DepthEstimator:
    """Build (not start) the estimator for ``model``; logs the backend it chose and why."""
    chosen = choose_backend(model, backend)
    path = Path(model)
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTDepthEstimator

        est: DepthEstimator = TensorRTDepthEstimator(path, precision, crop, cache_dir, log=log)
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
