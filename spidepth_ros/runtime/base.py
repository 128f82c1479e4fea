"""One interface for every inference backend.

A backend is created (cheap), then started (loads the model, allocates buffers), used through
:meth:`DepthEstimator.infer`, and stopped (frees everything) — the lifecycle the ROS node maps onto
configure/cleanup. Outputs are fresh arrays the caller owns (backends may reuse their internal buffers).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .metadata import MetadataError, ModelMetadata
from .preprocess import PreparedImage, Preprocessor, depth_to_input_resolution


class BackendUnavailable(RuntimeError):
    """The backend's library or device is missing; the message says what to install or choose instead."""


@dataclass
class DepthResult:
    depth: np.ndarray            # [h, w] float32, model units (see metadata.output_description)
    prepared: PreparedImage      # crop/size information for intrinsics
    inference_ms: float          # network time only
    preprocess_ms: float


class DepthEstimator(abc.ABC):
    """Base class: subclasses implement ``_start``, ``_stop`` and ``_run``."""

    name = "base"

    def __init__(self, metadata: ModelMetadata, crop: str = "none") -> None:
        self.metadata = metadata
        self.preprocessor = Preprocessor(metadata.input_width, metadata.input_height, crop)
        self._started = False
        self._input = np.empty((1, 3, metadata.input_height, metadata.input_width), np.float32)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> "DepthEstimator":
        """Load the model and check, with one inference on a grey image, that it returns the promised shape.

        Raises :class:`MetadataError` naming both shapes if the model disagrees with its metadata (a wrong
        model must fail here, at start-up, not drop every frame later).
        """
        if not self._started:
            try:
                self._start()
            except BaseException:
                self._stop()              # free what a half-finished start allocated (device buffers, sessions)
                raise
            self._started = True
            try:
                self.check_output_shape()
            except BaseException:
                self.stop()
                raise
        return self

    def check_output_shape(self) -> None:
        meta = self.metadata
        expected = (1, 1, meta.output_height, meta.output_width)
        probe = np.full((1, 3, meta.input_height, meta.input_width), 0.5, np.float32)
        out = np.asarray(self.infer_tensor(probe))
        if tuple(out.shape) != expected:
            raise MetadataError(f"{self.name} model returns depth of shape {tuple(out.shape)} for input "
                                f"{probe.shape}, but its metadata promises {expected}: the model and its sidecar "
                                "do not belong together; re-export it with spidepth-export")

    def stop(self) -> None:
        if self._started:
            self._stop()
            self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def __enter__(self) -> "DepthEstimator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # inference -----------------------------------------------------------------------------------------
    def infer_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """``[1, 3, H, W]`` float32 -> ``[1, 1, H/2, W/2]`` float32 depth (model units)."""
        if not self._started:
            raise RuntimeError(f"{self.name} backend is not started; call start() (or use it as a context "
                               "manager) first")
        expected = (1, 3, self.metadata.input_height, self.metadata.input_width)
        if tensor.shape != expected or tensor.dtype != np.float32:
            raise ValueError(f"input tensor must be float32 {expected}, got {tensor.dtype} {tensor.shape}")
        return self._run(tensor)

    def infer(self, rgb: np.ndarray, resolution: str = "network") -> DepthResult:
        """``[H, W, 3]`` uint8 RGB -> depth at the network output size (``"network"``) or the input size."""
        t0 = time.perf_counter()
        prepared = self.preprocessor.prepare(rgb, out=self._input)
        t1 = time.perf_counter()
        depth = self.infer_tensor(prepared.tensor)[0, 0]
        t2 = time.perf_counter()
        if resolution == "input":
            depth = depth_to_input_resolution(depth, prepared)
        elif resolution != "network":
            raise ValueError("resolution must be 'network' or 'input'")
        return DepthResult(np.array(depth, dtype=np.float32, copy=True), prepared, (t2 - t1) * 1e3, (t1 - t0) * 1e3)

    @property
    def max_batch(self) -> int:
        """Frames one call of :meth:`_run_batch` takes (1 unless the model has a dynamic batch dimension)."""
        return 1

    def infer_batch(self, rgbs: list, resolution: str = "network") -> list[DepthResult]:
        """Several ``[H, W, 3]`` uint8 RGB frames (cameras of one robot) -> one :class:`DepthResult` each.

        Backends whose model takes a batch (:attr:`max_batch` > 1) run the frames together; the result equals
        :meth:`infer` frame by frame (tested), with each frame's ``inference_ms`` its share of the batch.
        """
        if len(rgbs) <= 1 or self.max_batch <= 1:
            return [self.infer(rgb, resolution) for rgb in rgbs]
        if resolution not in ("network", "input"):
            raise ValueError("resolution must be 'network' or 'input'")
        out: list[DepthResult] = []
        for start in range(0, len(rgbs), self.max_batch):
            chunk = rgbs[start:start + self.max_batch]
            t0 = time.perf_counter()
            prepared = [self.preprocessor.prepare(rgb) for rgb in chunk]
            tensor = np.concatenate([p.tensor for p in prepared], axis=0)
            t1 = time.perf_counter()
            depths = self._run_batch(tensor)
            t2 = time.perf_counter()
            for i, prep in enumerate(prepared):
                depth = depths[i, 0]
                if resolution == "input":
                    depth = depth_to_input_resolution(depth, prep)
                out.append(DepthResult(np.array(depth, dtype=np.float32, copy=True), prep,
                                       (t2 - t1) * 1e3 / len(chunk), (t1 - t0) * 1e3 / len(chunk)))
        return out

    def _run_batch(self, tensor: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` -> ``[N, 1, H/2, W/2]``; only backends with :attr:`max_batch` > 1 are asked."""
        raise NotImplementedError

    def with_weights_of(self, model_path) -> Optional["DepthEstimator"]:
        """A started estimator running ``model_path`` (the same network with other weights) made from this one
        faster than loading it afresh, or None where this backend has no such path (the caller loads it).
        TensorRT refits its engine instead of rebuilding it."""
        return None

    # to implement --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _start(self) -> None: ...

    @abc.abstractmethod
    def _stop(self) -> None: ...

    @abc.abstractmethod
    def _run(self, tensor: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        return self.name
