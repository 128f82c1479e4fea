"""TensorRT backend and engine builder (no torch: TensorRT's Python API + cuda-python for memory/streams).

Engines are specific to the GPU and the TensorRT version, so every engine is stored with a sidecar that
records its **cache key**: the sha256 of the ONNX *and its external-data file* + input size + precision +
batch profile + TensorRT version + device index, GPU name and compute capability. :func:`engine_for_onnx` reuses
a cached engine only when every field matches and rebuilds otherwise; :class:`TensorRTDepthEstimator` refuses a
foreign ``.engine`` instead of producing garbage.

Precision across TensorRT versions (the 10 -> 11 API change):
  * TensorRT 10: FP16 via ``BuilderFlag.FP16`` on the FP32 ONNX (weakly typed network); INT8 by explicit
    quantization: the symmetric Q/DQ ONNX (``spidepth-export --precision int8``) with ``BuilderFlag.INT8``;
  * TensorRT >= 11: the FP16/INT8 builder flags are gone; FP16 comes from an FP16 ONNX built as a
    **strongly typed** network (``spidepth-export --precision fp16`` writes ``*.fp16.onnx`` for this), INT8
    from the same Q/DQ ONNX, also strongly typed (the Q/DQ nodes give the types).

Adapted weights (``depth_node`` with ``adapt: true``) reach a running engine by **refitting**: an engine built with
``BuilderFlag.REFIT`` (``refittable=True``; the node asks for it when it adapts) takes new weights for the same
network from the adapted ONNX through ``OnnxParserRefitter`` in seconds, where a rebuild takes minutes
(:meth:`TensorRTDepthEstimator.with_weights_of` refits a second instance of the engine while the first one keeps
inferring). An engine built without the flag is rebuilt from the new ONNX instead.

Large models (cvnxt_h: 2.9 GB of weights) are exported as ``model.onnx`` + one ``model.onnx.data``; the parser
reads them with ``parse_from_file`` so that the external data resolves beside the ONNX.

Every TensorRT name this module uses is listed in :data:`TENSORRT_API` with the major versions whose code path
uses it; ``test/test_tensorrt_api.py`` checks the list against this file's source and against the real bindings
wheels of TensorRT 10 and 11, so API drift is caught where no GPU exists.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..files import atomic_write_bytes
from .base import BackendUnavailable, DepthEstimator
from .metadata import MetadataError, ModelMetadata, model_sha256, read_sidecar, sidecar_path

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MIB = 1024
ALL_MAJORS = (10, 11)
#: TensorRT attribute -> majors whose code path below uses it (FP16 builder flag: 10 only; gone in 11).
TENSORRT_API: dict[str, tuple[int, ...]] = {
    # module level
    "__version__": ALL_MAJORS, "Logger": ALL_MAJORS, "WARNING": ALL_MAJORS, "Builder": ALL_MAJORS,
    "OnnxParser": ALL_MAJORS, "Runtime": ALL_MAJORS, "NetworkDefinitionCreationFlag": ALL_MAJORS,
    "STRONGLY_TYPED": (11,), "BuilderFlag": ALL_MAJORS, "FP16": (10,), "INT8": (10,), "REFIT": ALL_MAJORS,
    "MemoryPoolType": ALL_MAJORS, "Refitter": ALL_MAJORS, "OnnxParserRefitter": ALL_MAJORS,
    "WORKSPACE": ALL_MAJORS, "nptype": ALL_MAJORS, "TensorIOMode": ALL_MAJORS, "INPUT": ALL_MAJORS,
    # Builder / INetworkDefinition / OnnxParser / IBuilderConfig / IOptimizationProfile
    "create_network": ALL_MAJORS, "create_builder_config": ALL_MAJORS, "build_serialized_network": ALL_MAJORS,
    "create_optimization_profile": ALL_MAJORS, "parse_from_file": ALL_MAJORS, "num_errors": ALL_MAJORS,
    "get_error": ALL_MAJORS, "num_inputs": ALL_MAJORS, "get_input": ALL_MAJORS, "name": ALL_MAJORS,
    "shape": ALL_MAJORS, "set_memory_pool_limit": ALL_MAJORS, "set_flag": ALL_MAJORS, "set_shape": ALL_MAJORS,
    "add_optimization_profile": ALL_MAJORS,
    # IRuntime / ICudaEngine / IExecutionContext
    "deserialize_cuda_engine": ALL_MAJORS, "create_execution_context": ALL_MAJORS, "num_io_tensors": ALL_MAJORS,
    "get_tensor_name": ALL_MAJORS, "get_tensor_mode": ALL_MAJORS, "get_tensor_shape": ALL_MAJORS,
    "get_tensor_dtype": ALL_MAJORS, "set_input_shape": ALL_MAJORS, "set_tensor_address": ALL_MAJORS,
    "execute_async_v3": ALL_MAJORS,
    # IRefitter / IParserRefitter
    "refit_from_file": ALL_MAJORS, "refit_cuda_engine": ALL_MAJORS,
}
#: cuda-python runtime functions used (checked likewise where cuda-python is installed).
CUDART_API = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaGetErrorName", "cudaSetDevice", "cudaMalloc",
              "cudaFree", "cudaMallocHost", "cudaFreeHost", "cudaStreamCreate", "cudaStreamDestroy",
              "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaMemcpyKind", "cudaError_t")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (pip install tensorrt, or use the JetPack/NGC "
                                 "one)") from exc
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


def cuda_error_name(cudart, err) -> str:
    try:
        name = cudart.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # naming the error must never hide it
        return str(err)


def cuda_check(result, what: str = "CUDA call"):
    """cuda-python returns ``(err, *values)``: raise naming the error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed with {cuda_error_name(import_cudart(), err)}")
    return values[0] if len(values) == 1 else values


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def device_index(device: str) -> int:
    """``auto``/``cuda`` -> 0, ``cuda:N`` -> N; ``cpu`` is refused (TensorRT runs on a GPU)."""
    if device in ("auto", "cuda"):
        return 0
    match = re.fullmatch(r"cuda:(\d+)", device)
    if not match:
        raise BackendUnavailable(f"TensorRT runs on a GPU: device {device!r} must be auto, cuda or cuda:N")
    return int(match.group(1))


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of GPU ``device``.

    Raises :class:`BackendUnavailable` naming the real cause: no GPU, a driver too old for this CUDA runtime,
    an index past the last GPU, or any other CUDA error by name.
    """
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    name = cuda_error_name(cudart, err)
    if int(err) != 0:
        if "InsufficientDriver" in name:
            raise BackendUnavailable(f"the NVIDIA driver is too old for this CUDA runtime ({name}): update the "
                                     "driver, or install a TensorRT/cuda-python built for an older CUDA")
        if "NoDevice" in name:
            raise BackendUnavailable(f"no CUDA GPU is visible ({name}); TensorRT needs one")
        raise BackendUnavailable(f"CUDA cannot list GPUs: {name}")
    if count == 0:
        raise BackendUnavailable("no CUDA GPU is visible; TensorRT needs one")
    if not 0 <= device < count:
        raise BackendUnavailable(f"device cuda:{device} requested but only {count} GPU(s) are visible")
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return gpu.strip("\x00 "), f"{props.major}.{props.minor}"


@dataclasses.dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str            # the .onnx and its external-data file together
    input_height: int
    input_width: int
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    device_index: int = 0
    max_batch: int = 1          # optimisation profile 1..max_batch for a dynamic-batch ONNX, else 1
    refittable: bool = False    # built with BuilderFlag.REFIT: takes new weights without a rebuild

    def digest(self) -> str:
        fields = dataclasses.asdict(self)
        if not self.refittable:          # engines cached before the field existed keep their names
            del fields["refittable"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def engine_key(onnx_path: Path, meta: ModelMetadata, precision: str, trt_version: str, gpu: tuple[str, str],
               device: int = 0, refittable: bool = False) -> EngineKey:
    return EngineKey(model_sha256(onnx_path), meta.input_height, meta.input_width, precision, trt_version, *gpu,
                     device_index=device, max_batch=meta.max_batch if meta.dynamic_batch else 1,
                     refittable=refittable)


def batch_profile(meta: ModelMetadata) -> Optional[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) input shapes of the optimisation profile of a dynamic-batch model; None for a static one."""
    if not meta.dynamic_batch:
        return None
    chw = (3, meta.input_height, meta.input_width)
    return (1, *chw), (1, *chw), (meta.max_batch, *chw)


def build_engine(onnx_path: Path, precision: str = "fp16", workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 meta: Optional[ModelMetadata] = None, device: int = 0, refittable: bool = False) -> bytes:
    """Parse ONNX (external data resolved beside it) and build a serialized engine for GPU ``device``
    (``refittable``: its weights can be replaced later, :meth:`TensorRTDepthEstimator.refit`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    trt = import_tensorrt()
    select_device(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = trt_major(trt) >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): the parser finds model.onnx.data next to the file only with its path
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and not strongly_typed:
        # explicit quantization: the Q/DQ nodes of the INT8 ONNX carry the scales; TensorRT 10 still wants the
        # flag to run INT8 kernels for them (11 reads the types of a strongly typed network instead)
        config.set_flag(trt.BuilderFlag.INT8)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile_shapes = batch_profile(meta) if meta is not None else None
        if profile_shapes is None:
            raise MetadataError(f"{onnx_path} has dynamic input dimensions but its sidecar records no batch range; "
                                "re-export it with spidepth-export --dynamic-batch --max-batch N")
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            profile.set_shape(tensor.name, *profile_shapes)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(serialized)


def select_device(device: int) -> None:
    cudart = import_cudart()
    cuda_check(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")


def onnx_for_precision(onnx_path: Path, precision: str) -> Path:
    """The ONNX to build from: the INT8 Q/DQ export for INT8; TensorRT >= 11 needs the FP16 export for FP16."""
    if precision == "int8":
        from . import int8_model_for

        int8 = int8_model_for(onnx_path)
        if int8 is None:
            raise MetadataError(f"INT8 engines are built from the Q/DQ ONNX that spidepth-export --precision int8 "
                                f"--calibration-bags BAG writes; {onnx_path.name} has none")
        return int8
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
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB, log: Callable[[str], None] = print,
                    device: int = 0, refittable: bool = False) -> Path:
    """Return a cached engine for this ONNX/GPU/TensorRT/precision, building it if needed.

    The engine is written under a unique temporary name and renamed into place (then its sidecar), so two
    processes building the same engine at once never read a half-written file.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    meta = read_sidecar(onnx_path)
    source = onnx_for_precision(onnx_path, precision)
    key = engine_key(source, meta, precision, trt.__version__, gpu_identity(device), device, refittable)
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
        f"(cuda:{device}; first start only, this can take minutes)")
    data = build_engine(source, precision, workspace_mib, meta, device, refittable)
    atomic_write_bytes(engine_path, data)
    engine_meta = dataclasses.replace(meta, precision=precision, model_sha256=model_sha256(engine_path),
                                      extra={**meta.extra, "engine_key": dataclasses.asdict(key)})
    atomic_write_bytes(sidecar_path(engine_path), engine_meta.to_json().encode())
    return engine_path


def _read_engine_key(engine_path: Path) -> EngineKey:
    meta = read_sidecar(engine_path)
    try:
        return EngineKey(**meta.extra["engine_key"])
    except (KeyError, TypeError) as exc:
        raise MetadataError(f"{engine_path}'s sidecar has no engine_key; rebuild it with spidepth-export") from exc


class PinnedBuffer:
    """Page-locked host memory viewed as a numpy array (async copies need pinned memory to be asynchronous)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        cudart = import_cudart()
        self.nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        self.ptr = int(cuda_check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            import_cudart().cudaFreeHost(self.ptr)
            self.ptr = 0
            self.array = None


class TensorRTDepthEstimator(DepthEstimator):
    """Runs a serialized engine (``.engine``) or builds/caches one from an ``.onnx``, on GPU ``device``."""

    name = "tensorrt"

    def __init__(self, model_path: str | Path, precision: str = "fp16", crop: str = "none",
                 cache_dir: Optional[str | Path] = None, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 log: Callable[[str], None] = print, device: str = "auto", refittable: bool = False) -> None:
        trt = import_tensorrt()
        self.log = log
        self.device_index = device_index(device)
        self.precision = precision
        self.crop = crop
        path = Path(model_path)
        if path.suffix == ".onnx":
            path = engine_for_onnx(path, precision, cache_dir, workspace_mib, log, self.device_index, refittable)
        key = _read_engine_key(path)
        self.refittable = key.refittable
        gpu = gpu_identity(self.device_index)
        if (key.tensorrt_version, key.gpu_name, key.compute_capability) != (trt.__version__, *gpu):
            raise MetadataError(
                f"engine {path} was built with TensorRT {key.tensorrt_version} for {key.gpu_name} (sm "
                f"{key.compute_capability}); this machine has TensorRT {trt.__version__} on {gpu[0]} (sm {gpu[1]}). "
                "Engines are not portable: pass the .onnx instead and it is rebuilt here")
        super().__init__(read_sidecar(path), crop)
        self.engine_path = path
        self._device: dict[str, int] = {}
        self._host: dict[str, PinnedBuffer] = {}
        self.stream = None
        self.context = self.engine = self.runtime = None

    def _start(self) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        select_device(self.device_index)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise MetadataError(f"TensorRT could not deserialize {self.engine_path}; rebuild it from the ONNX")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        meta = self.metadata
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in (meta.input_name, meta.output_name):
            if name not in names:
                raise MetadataError(f"engine tensors {sorted(names)} lack {name!r} named in its sidecar")
        # inputs first: a dynamic-batch engine knows its output shapes only once the input shape is set
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and \
                    -1 in tuple(self.engine.get_tensor_shape(name)):
                self.context.set_input_shape(name, (1, 3, meta.input_height, meta.input_width))
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = PinnedBuffer(shape, dtype)
            self._device[name] = int(cuda_check(cudart.cudaMalloc(self._host[name].nbytes), "cudaMalloc"))
            self.context.set_tensor_address(name, self._device[name])

    def _stop(self) -> None:
        """Frees whatever :meth:`_start` got to allocate (it may have failed half-way)."""
        cudart = import_cudart()
        for ptr in self._device.values():
            cudart.cudaFree(ptr)
        self._device.clear()
        for buf in self._host.values():
            buf.free()
        self._host.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self.runtime = None

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        cudart = import_cudart()
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        name_in, name_out = self.metadata.input_name, self.metadata.output_name
        host_in, host_out = self._host[name_in], self._host[name_out]
        np.copyto(host_in.array, tensor, casting="same_kind")
        cuda_check(cudart.cudaMemcpyAsync(self._device[name_in], host_in.ptr, host_in.nbytes, h2d, self.stream),
                   "cudaMemcpyAsync (input)")
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda_check(cudart.cudaMemcpyAsync(host_out.ptr, self._device[name_out], host_out.nbytes, d2h, self.stream),
                   "cudaMemcpyAsync (output)")
        cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out.array.astype(np.float32, copy=True)

    def refit(self, onnx_path: str | Path) -> None:
        """Replace this (started, refittable) engine's weights by those of ``onnx_path``: the same network with
        other weights, e.g. an adapted model exported from the same preset. Not while a frame runs."""
        trt = import_tensorrt()
        onnx_path = Path(onnx_path)
        if not self.refittable:
            raise MetadataError(f"engine {self.engine_path.name} was not built refittable; build it from the ONNX "
                                "with refittable=True (depth_node does when adapt is true) or load the new ONNX")
        meta = read_sidecar(onnx_path)
        if (meta.input_width, meta.input_height, meta.preset.get("name")) != \
                (self.metadata.input_width, self.metadata.input_height, self.metadata.preset.get("name")):
            raise MetadataError(f"{onnx_path.name} is {meta.preset.get('name')} at {meta.input_width}x"
                                f"{meta.input_height}; engine {self.engine_path.name} runs "
                                f"{self.metadata.preset.get('name')} at {self.metadata.input_width}x"
                                f"{self.metadata.input_height}: only the same network's weights refit")
        source = onnx_for_precision(onnx_path, self.precision)
        refitter = trt.Refitter(self.engine, self._trt_logger)
        parser = trt.OnnxParserRefitter(refitter, self._trt_logger)
        if not parser.refit_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not take the weights of {source}: {errors}")
        if not refitter.refit_cuda_engine():
            raise RuntimeError(f"TensorRT refit of {self.engine_path.name} with {source.name} failed (see the log)")
        self.metadata = dataclasses.replace(meta, precision=self.metadata.precision)

    def with_weights_of(self, model_path: str | Path) -> Optional["TensorRTDepthEstimator"]:
        """A second, started instance of this refittable engine refitted with ``model_path``'s weights (an
        ``.onnx``), while this one keeps running; None where refitting cannot serve (not refittable, not an ONNX)."""
        if not self.refittable or Path(model_path).suffix != ".onnx":
            return None
        other = TensorRTDepthEstimator(self.engine_path, self.precision, self.crop, log=self.log,
                                       device=f"cuda:{self.device_index}")
        other.start()
        try:
            other.refit(model_path)
        except Exception:
            other.stop()
            raise
        return other

    def describe(self) -> str:
        return f"tensorrt (cuda:{self.device_index}" + (", refittable)" if self.refittable else ")")
