"""ONNX Runtime backend (CPU, or CUDA when the provider is present)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable, DepthEstimator
from .metadata import MetadataError, check_model_hash, model_sha256, read_sidecar


class OnnxRuntimeDepthEstimator(DepthEstimator):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", crop: str = "none", threads: int = 0,
                 verify_hash: bool = True) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("the onnxruntime backend needs onnxruntime: pip install onnxruntime "
                                     "(or onnxruntime-gpu)") from exc
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        meta = read_sidecar(self.path)
        if verify_hash:
            check_model_hash(meta, self.path, model_sha256(self.path))
        super().__init__(meta, crop)
        self.device_name = device
        self.threads = threads
        self.session = None

    def providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.device_name.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailable(f"device cuda requested but onnxruntime has only {available}; "
                                         "pip install onnxruntime-gpu or use device cpu")
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _start(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3          # ORT's per-initializer clean-up notices are not the user's business
        if self.threads:
            opts.intra_op_num_threads = self.threads
        model = str(self.path)
        if self.metadata.precision == "int8" and not self.device_name.startswith("cuda"):
            import onnx

            from ..quantize import adapt_for_onnxruntime_cpu

            # the symmetric Q/DQ model TensorRT builds, with the uint8 activations the CPU kernels want
            model = adapt_for_onnxruntime_cpu(onnx.load(model)).SerializeToString()
        self.session = ort.InferenceSession(model, opts, providers=self.providers())
        inputs = self.session.get_inputs()
        meta = self.metadata
        if len(inputs) != 1 or inputs[0].name != meta.input_name:
            raise MetadataError(f"{self.path} inputs {[i.name for i in inputs]} do not match the sidecar's "
                                f"{meta.input_name!r}")
        shape = inputs[0].shape
        if list(shape[1:]) != [3, meta.input_height, meta.input_width]:
            raise MetadataError(f"{self.path} takes input {shape} but its sidecar says 3x{meta.input_height}x"
                                f"{meta.input_width}: the sidecar belongs to another model")
        outputs = [o.name for o in self.session.get_outputs()]
        if meta.output_name not in outputs:
            raise MetadataError(f"{self.path} has outputs {outputs}, sidecar expects {meta.output_name!r}")

    def _stop(self) -> None:
        self.session = None

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        return self.session.run([self.metadata.output_name], {self.metadata.input_name: tensor})[0]

    @property
    def max_batch(self) -> int:
        # an export with --dynamic-batch takes any batch; its sidecar's max_batch bounds what TensorRT profiles,
        # ONNX Runtime is bounded only by memory: take the cameras of one robot together
        return 16 if self.metadata.dynamic_batch else 1

    def _run_batch(self, tensor: np.ndarray) -> np.ndarray:
        return self._run(tensor)

    def describe(self) -> str:
        providers = self.session.get_providers() if self.session else self.providers()
        return f"onnxruntime ({providers[0]}, {self.metadata.precision})"
