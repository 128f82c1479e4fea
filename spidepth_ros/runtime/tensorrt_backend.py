"""TensorRT backend and engine builder (no torch: TensorRT's Python API + cuda-python for memory/streams).

Engines are specific to the GPU and the TensorRT version, so every engine is stored with a sidecar that
records its **cache key**: ONNX sha256 + input size + precision + TensorRT version + GPU name + compute
capability. :func:`engine_for_onnx` reuses a cached engine only when every field matches and rebuilds
otherwise; :class:`TensorRTDepthEstimator` refuses a foreign ``.engine`` instead of producing garbage.

Precision across TensorRT versions (the 10 -> 11 API change):
  * TensorRT 10: FP16 via ``BuilderFlag.FP16`` on the FP32 ONNX (weakly typed network);
  * TensorRT >= 11: the FP16/INT8 builder flags are gone; FP16 comes from an FP16 ONNX built as a
    **strongly typed** network (``spidepth-export --precision fp16`` writes ``*.fp16.onnx`` for this).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import file_sha256
from .base import BackendUnavailable, DepthEstimator
from .metadata import MetadataError, ModelMetadata, read_sidecar, sidecar_path

PRECISIONS = ("fp32", "fp16")
DEFAULT_WORKSPACE_MIB = 1024


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (pip install tensorrt, or use the JetPack/NGC one); "
                                 "use backend onnxruntime or torch instead") from exc
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise BackendUnavailable("the TensorRT backend needs cuda-python for device memory: "
                                     "pip install cuda-python") from exc
    return cudart


def cuda_check(result):
    """cuda-python returns ``(err, *values)``: raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed with {err}")
    return values[0] if len(values) == 1 else values


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor'); raises BackendUnavailable without a GPU."""
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise BackendUnavailable("no CUDA GPU is visible; TensorRT needs one (use backend onnxruntime)")
    props = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


@dataclasses.dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    input_height: int
    input_width: int
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def engine_key(onnx_path: Path, meta: ModelMetadata, precision: str, trt_version: str, gpu: tuple[str, str]
               ) -> EngineKey:
    return EngineKey(file_sha256(onnx_path), meta.input_height, meta.input_width, precision, trt_version, *gpu)


def build_engine(onnx_path: Path, precision: str = "fp16", workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> bytes:
    """Parse ONNX and build a serialized engine, branching on the TensorRT major version."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    trt = import_tensorrt()
    gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = trt_major(trt)
    strongly_typed = major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(serialized)


def onnx_for_precision(onnx_path: Path, precision: str) -> Path:
    """The ONNX to build from: TensorRT >= 11 needs the FP16 export for FP16 engines."""
    trt = import_tensorrt()
    if precision == "fp16" and trt_major(trt) >= 11:
        fp16 = onnx_path.with_name(onnx_path.name.replace(".onnx", ".fp16.onnx"))
        if not fp16.exists():
            raise MetadataError(f"TensorRT {trt.__version__} builds FP16 engines only from an FP16 ONNX "
                                f"(strong typing); export one with: spidepth-export ... --precision fp16 "
                                f"(expected {fp16})")
        return fp16
    return onnx_path


def engine_for_onnx(onnx_path: str | Path, precision: str = "fp16", cache_dir: Optional[str | Path] = None,
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB, log=print) -> Path:
    """Return a cached engine for this ONNX/GPU/TensorRT/precision, building it if needed."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    meta = read_sidecar(onnx_path)
    source = onnx_for_precision(onnx_path, precision)
    key = engine_key(source, meta, precision, trt.__version__, gpu_identity())
    cache = Path(cache_dir) if cache_dir else onnx_path.parent
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / f"{onnx_path.name.removesuffix('.onnx')}-{precision}-{key.digest()}.engine"
    if engine_path.exists():
        try:
            if _read_engine_key(engine_path) == key:
                return engine_path
        except MetadataError:
            pass
        log(f"cached engine {engine_path} does not match this GPU/TensorRT/model: rebuilding")
    log(f"building TensorRT {trt.__version__} {precision} engine for {source.name} on {key.gpu_name} "
        f"(first start only; this can take minutes)")
    data = build_engine(source, precision, workspace_mib)
    tmp = engine_path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(engine_path)
    engine_meta = dataclasses.replace(meta, precision=precision, model_sha256=file_sha256(engine_path),
                                      extra={**meta.extra, "engine_key": dataclasses.asdict(key)})
    sidecar_path(engine_path).write_text(engine_meta.to_json())
    return engine_path


def _read_engine_key(engine_path: Path) -> EngineKey:
    meta = read_sidecar(engine_path)
    try:
        return EngineKey(**meta.extra["engine_key"])
    except (KeyError, TypeError) as exc:
        raise MetadataError(f"{engine_path}'s sidecar has no engine_key; rebuild it with spidepth-export") from exc


class TensorRTDepthEstimator(DepthEstimator):
    """Runs a serialized engine (``.engine``) or builds/caches one from an ``.onnx``."""

    name = "tensorrt"

    def __init__(self, model_path: str | Path, precision: str = "fp16", crop: str = "none",
                 cache_dir: Optional[str | Path] = None, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 log=print) -> None:
        trt = import_tensorrt()
        self.log = log
        path = Path(model_path)
        if path.suffix == ".onnx":
            path = engine_for_onnx(path, precision, cache_dir, workspace_mib, log)
        key = _read_engine_key(path)
        gpu = gpu_identity()
        if (key.tensorrt_version, key.gpu_name, key.compute_capability) != (trt.__version__, *gpu):
            raise MetadataError(
                f"engine {path} was built with TensorRT {key.tensorrt_version} for {key.gpu_name} (sm "
                f"{key.compute_capability}); this machine has TensorRT {trt.__version__} on {gpu[0]} (sm {gpu[1]}). "
                "Engines are not portable: pass the .onnx instead and it is rebuilt here")
        super().__init__(read_sidecar(path), crop)
        self.engine_path = path
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}

    def _start(self) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise MetadataError(f"TensorRT could not deserialize {self.engine_path}; rebuild it from the ONNX")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreate())
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            host = np.empty(shape, dtype)
            device_ptr = cuda_check(cudart.cudaMalloc(host.nbytes))
            self.context.set_tensor_address(name, int(device_ptr))
            self._buffers[name] = (int(device_ptr), host)
        meta = self.metadata
        for name in (meta.input_name, meta.output_name):
            if name not in self._buffers:
                raise MetadataError(f"engine tensors {sorted(self._buffers)} lack {name!r} named in its sidecar")

    def _stop(self) -> None:
        cudart = import_cudart()
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self.runtime = None

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        cudart = import_cudart()
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        in_ptr, in_host = self._buffers[self.metadata.input_name]
        out_ptr, out_host = self._buffers[self.metadata.output_name]
        np.copyto(in_host, tensor, casting="same_kind")
        cuda_check(cudart.cudaMemcpyAsync(in_ptr, in_host.ctypes.data, in_host.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda_check(cudart.cudaMemcpyAsync(out_host.ctypes.data, out_ptr, out_host.nbytes, d2h, self.stream))
        cuda_check(cudart.cudaStreamSynchronize(self.stream))
        return out_host.astype(np.float32, copy=True)
