"""PyTorch eager backend (CPU, or CUDA with optional half precision). Loads checkpoints directly."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .base import BackendUnavailable, DepthEstimator
from .metadata import ModelMetadata


class TorchDepthEstimator(DepthEstimator):
    name = "torch"

    def __init__(self, weights_path: str | Path, device: str = "cpu", half: bool = False, crop: str = "none",
                 preset: Optional[str] = None) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("the torch backend needs PyTorch: pip install torch") from exc
        from ..checkpoint import file_sha256, load_weights

        self.weights = load_weights(weights_path, preset)
        path = Path(weights_path)
        sha = file_sha256(path) if path.is_file() else ""
        scale = self.weights.extra.get("depth_scale") or 1.0
        super().__init__(ModelMetadata.from_preset(self.weights.preset, checkpoint_sha256=sha,
                                                   precision="fp16" if half else "fp32",
                                                   depth_scale=float(scale)), crop)
        self.device_name = device
        self.half = half
        self.model = None

    def _start(self) -> None:
        import torch

        if self.device_name.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("device cuda requested but torch sees no CUDA GPU; use device cpu")
        self.device = torch.device(self.device_name)
        model, _ = self.weights.build()
        model = model.to(self.device).eval()
        self.dtype = torch.float16 if (self.half and self.device.type == "cuda") else torch.float32
        self.model = model.to(self.dtype)

    def _stop(self) -> None:
        self.model = None

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(tensor).to(self.device, self.dtype)
            return self.model(x).float().cpu().numpy()

    @property
    def max_batch(self) -> int:
        return 16                     # eager modules take any batch; several cameras run as one

    def _run_batch(self, tensor: np.ndarray) -> np.ndarray:
        return self._run(tensor)

    def describe(self) -> str:
        return f"torch ({self.device_name}{', fp16' if self.half else ''})"
