"""Runtimes behind one interface: ONNX Runtime vs torch parity, sidecar contract, preprocessing geometry,
TensorRT (where TensorRT and a GPU exist) and CUDA parity (where a GPU exists)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from spidepth_ros.geometry import PinholeIntrinsics
from spidepth_ros.runtime import MetadataError, create_estimator, read_sidecar
from spidepth_ros.runtime.metadata import ModelMetadata
from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator
from spidepth_ros.runtime.preprocess import Preprocessor, depth_to_input_resolution
from spidepth_ros.runtime.torch_backend import TorchDepthEstimator


def max_rel(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_onnxruntime_matches_torch_small(small_checkpoint, small_onnx, rng):
    rgb = (rng.random((120, 400, 3)) * 255).astype(np.uint8)
    with OnnxRuntimeDepthEstimator(small_onnx) as ort_est, TorchDepthEstimator(small_checkpoint) as torch_est:
        a, b = ort_est.infer(rgb), torch_est.infer(rgb)
    assert a.depth.shape == (48, 160)
    assert max_rel(a.depth, b.depth) <= 1e-4


def test_onnxruntime_matches_torch_resnet50(tmp_path, rng):
    from spidepth_ros.checkpoint import save_official_folder
    from spidepth_ros.export import export_onnx
    from spidepth_ros.models import build_depth_net
    from spidepth_ros.presets import get_preset

    torch.manual_seed(2)
    folder = save_official_folder(tmp_path / "r50", build_depth_net(get_preset("resnet50_192x640")).eval())
    onnx_path, meta = export_onnx(folder, tmp_path / "r50.onnx")
    assert (meta.input_height, meta.input_width, meta.output_height, meta.output_width) == (192, 640, 96, 320)
    x = rng.random((1, 3, 192, 640)).astype(np.float32)
    with OnnxRuntimeDepthEstimator(onnx_path) as o, TorchDepthEstimator(folder) as t:
        assert max_rel(o.infer_tensor(x), t.infer_tensor(x)) <= 1e-4


def test_sidecar_round_trip_and_contents(small_onnx):
    meta = read_sidecar(small_onnx)
    assert meta == ModelMetadata.from_json(meta.to_json())
    data = json.loads(small_onnx.with_name(small_onnx.name + ".json").read_text())
    assert data["input_name"] == "image" and data["output_name"] == "depth"
    assert (data["input_height"], data["input_width"], data["output_height"], data["output_width"]) == (96, 320, 48, 160)
    assert data["channel_order"] == "RGB" and data["input_range"] == [0.0, 1.0]
    assert (data["min_depth"], data["max_depth"]) == (0.001, 40.0)
    assert len(data["checkpoint_sha256"]) == 64 and len(data["model_sha256"]) == 64
    assert "CameraInfo P" in data["intrinsics_convention"]


def test_model_sidecar_mismatch_is_refused(small_onnx, tmp_path):
    copy = tmp_path / "other.onnx"
    shutil.copy(small_onnx, copy)
    meta = read_sidecar(small_onnx)
    # a sidecar that claims another input size
    from dataclasses import replace

    from spidepth_ros.runtime.metadata import write_sidecar

    write_sidecar(copy, replace(meta, input_height=192, input_width=640, model_sha256=""))
    with pytest.raises(MetadataError, match="belongs to another model"):
        OnnxRuntimeDepthEstimator(copy).start()
    # a model replaced behind its sidecar's back
    write_sidecar(copy, replace(meta, model_sha256="0" * 64))
    with pytest.raises(MetadataError, match="does not match its sidecar"):
        OnnxRuntimeDepthEstimator(copy)
    (tmp_path / "other.onnx.json").unlink()
    with pytest.raises(MetadataError, match="has no sidecar"):
        OnnxRuntimeDepthEstimator(copy)


def test_auto_backend_choice(small_checkpoint, small_onnx):
    from spidepth_ros.runtime import _tensorrt_usable

    est = create_estimator(small_onnx)
    assert est.name == ("tensorrt" if _tensorrt_usable() else "onnxruntime")
    assert create_estimator(small_checkpoint).name == "torch"
    with pytest.raises(ValueError, match="needs an .onnx"):
        create_estimator(small_checkpoint, backend="onnxruntime")


def test_not_started_is_an_error(small_onnx):
    est = OnnxRuntimeDepthEstimator(small_onnx)
    with pytest.raises(RuntimeError, match="not started"):
        est.infer(np.zeros((96, 320, 3), np.uint8))
    est.start()
    est.stop()
    assert not est.started


def test_preprocess_center_crop_intrinsics_and_input_resolution():
    pre = Preprocessor(320, 96, "center")
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[144:336] = 255                        # exactly the centred 640x192 band
    prepared = pre.prepare(rgb)
    assert prepared.tensor.shape == (1, 3, 96, 320) and float(prepared.tensor.min()) == 1.0
    cam = PinholeIntrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    out = pre.output_intrinsics(cam, 160, 48)
    # pixel centres kept: c' = (c - offset + 0.5) * s - 0.5
    assert (out.fx, out.cx, out.cy) == pytest.approx((500 * 0.25, 320 * 0.25 - 0.5, (240 - 144) * 0.25 - 0.5))
    depth = np.full((48, 160), 3.0, np.float32)
    full = depth_to_input_resolution(depth, prepared)
    assert full.shape == (480, 640) and np.isnan(full[0, 0]) and full[240, 320] == 3.0


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@requires_cuda
def test_torch_cuda_matches_cpu(small_checkpoint, rng):
    x = rng.random((1, 3, 96, 320)).astype(np.float32)
    with TorchDepthEstimator(small_checkpoint, "cpu") as cpu, TorchDepthEstimator(small_checkpoint, "cuda") as gpu:
        assert max_rel(gpu.infer_tensor(x), cpu.infer_tensor(x)) <= 1e-3
    with TorchDepthEstimator(small_checkpoint, "cuda", half=True) as half, \
            TorchDepthEstimator(small_checkpoint, "cpu") as cpu:
        assert max_rel(half.infer_tensor(x), cpu.infer_tensor(x)) <= 2e-2


def _have_tensorrt() -> bool:
    try:
        from spidepth_ros.runtime.tensorrt_backend import gpu_identity, import_tensorrt

        import_tensorrt()
        gpu_identity()
        return True
    except Exception:
        return False


requires_tensorrt = pytest.mark.skipif(not _have_tensorrt(), reason="TensorRT and a CUDA GPU are needed")


@requires_tensorrt
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 3e-2)])
def test_tensorrt_engine_build_cache_and_parity(small_checkpoint, tmp_path, precision, tol, rng):
    from spidepth_ros.export import export_onnx
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator, engine_for_onnx

    onnx_path, _ = export_onnx(small_checkpoint, tmp_path / "m.onnx")
    export_onnx(small_checkpoint, tmp_path / "m.fp16.onnx", fp16=True)
    engine = engine_for_onnx(onnx_path, precision, tmp_path / "cache")
    mtime = engine.stat().st_mtime_ns
    assert engine_for_onnx(onnx_path, precision, tmp_path / "cache") == engine     # cache hit
    assert engine.stat().st_mtime_ns == mtime
    key = read_sidecar(engine).extra["engine_key"]
    assert key["precision"] == precision and key["input_height"] == 96 and key["gpu_name"]
    x = rng.random((1, 3, 96, 320)).astype(np.float32)
    with TensorRTDepthEstimator(engine) as trt_est, OnnxRuntimeDepthEstimator(onnx_path) as ort_est:
        assert max_rel(trt_est.infer_tensor(x), ort_est.infer_tensor(x)) <= tol


@requires_tensorrt
def test_tensorrt_int8_engine_from_the_qdq_export(small_checkpoint, tmp_path):
    """TensorRT builds the same Q/DQ ONNX that ONNX Runtime runs (explicit quantization), keyed by precision, and
    its depth stays within the INT8 deviation of FP32 on a frame."""
    from spidepth_ros.export import main as export_main
    from spidepth_ros.quantize import depth_deviation
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator, engine_for_onnx
    from spidepth_ros.synth import SynthConfig, write_bag

    bag = write_bag(SynthConfig(width=320, height=96, frames=24, seed=5), tmp_path / "bag", progress=False)
    assert export_main([str(small_checkpoint), "-o", str(tmp_path / "m.onnx"), "--precision", "int8",
                        "--calibration-bags", str(bag), "--calibration-frames", "12", "--no-progress"]) == 0
    engine = engine_for_onnx(tmp_path / "m.onnx", "int8", tmp_path / "cache")
    key = read_sidecar(engine).extra["engine_key"]
    assert key["precision"] == "int8" and key["onnx_sha256"] == read_sidecar(tmp_path / "m.int8.onnx").model_sha256
    x = np.random.default_rng(0).random((1, 3, 96, 320)).astype(np.float32)
    with TensorRTDepthEstimator(engine) as trt_est, OnnxRuntimeDepthEstimator(tmp_path / "m.onnx") as fp32:
        assert depth_deviation(fp32.infer_tensor(x), trt_est.infer_tensor(x)) < 0.05


@requires_tensorrt
def test_tensorrt_refit_takes_adapted_weights_without_a_rebuild(small_checkpoint, tmp_path, rng):
    """A refittable engine built from one model, refitted with another model's weights (same preset: what
    adaptation produces), computes that other model (parity with ONNX Runtime on it), while the first instance
    still computes the first model; no engine file is built for the second; an engine built without the flag
    offers no refit."""
    import torch

    from spidepth_ros.checkpoint import load_weights, save_checkpoint
    from spidepth_ros.export import export_onnx
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator

    loaded = load_weights(small_checkpoint)
    net, _ = loaded.build()
    with torch.no_grad():
        for p in net.depth_decoder.parameters():
            p.mul_(1.5)                                      # other weights, the same network
    other_ckpt = save_checkpoint(tmp_path / "other.pt", loaded.preset, net)
    first, _ = export_onnx(small_checkpoint, tmp_path / "m.onnx")
    second, _ = export_onnx(other_ckpt, tmp_path / "other.onnx")
    x = rng.random((1, 3, 96, 320)).astype(np.float32)
    cache = tmp_path / "cache"
    with TensorRTDepthEstimator(first, "fp32", cache_dir=cache, refittable=True) as running, \
            OnnxRuntimeDepthEstimator(first) as ort_first, OnnxRuntimeDepthEstimator(second) as ort_second:
        engines = sorted(cache.glob("*.engine"))
        refitted = running.with_weights_of(second)
        try:
            assert sorted(cache.glob("*.engine")) == engines             # refitted, not built
            assert max_rel(refitted.infer_tensor(x), ort_second.infer_tensor(x)) <= 1e-3
            assert max_rel(running.infer_tensor(x), ort_first.infer_tensor(x)) <= 1e-3
            assert max_rel(ort_first.infer_tensor(x), ort_second.infer_tensor(x)) > 1e-2     # they differ
        finally:
            refitted.stop()
    with TensorRTDepthEstimator(first, "fp32", cache_dir=cache) as fixed:
        assert fixed.with_weights_of(second) is None


def test_backends_without_a_fast_weight_swap_say_so(small_checkpoint, small_onnx):
    """ONNX Runtime and torch have no refit: with_weights_of answers None and the node loads the model."""
    from spidepth_ros.runtime.torch_backend import TorchDepthEstimator

    with OnnxRuntimeDepthEstimator(small_onnx) as ort, TorchDepthEstimator(small_checkpoint, "cpu") as pt:
        assert ort.with_weights_of(small_onnx) is None and pt.with_weights_of(small_checkpoint) is None


@requires_tensorrt
def test_foreign_engine_is_refused(small_checkpoint, tmp_path):
    from dataclasses import replace

    from spidepth_ros.export import export_onnx
    from spidepth_ros.runtime.metadata import write_sidecar
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator, engine_for_onnx

    onnx_path, _ = export_onnx(small_checkpoint, tmp_path / "m.onnx")
    engine = engine_for_onnx(onnx_path, "fp32", tmp_path)
    meta = read_sidecar(engine)
    key = dict(meta.extra["engine_key"], tensorrt_version="9.0.0")
    write_sidecar(engine, replace(meta, extra={**meta.extra, "engine_key": key}))
    with pytest.raises(MetadataError, match="not portable"):
        TensorRTDepthEstimator(engine)


def test_tensorrt_missing_is_a_clear_error(small_onnx):
    if _have_tensorrt():
        pytest.skip("TensorRT is available here")
    from spidepth_ros.runtime import BackendUnavailable
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator

    with pytest.raises(BackendUnavailable, match="not installed|needs one"):
        TensorRTDepthEstimator(small_onnx)
    # asked for by name, the error says how to run without it
    from spidepth_ros.runtime import create_estimator

    with pytest.raises(BackendUnavailable, match="set backend to auto .* or onnxruntime"):
        create_estimator(small_onnx, "tensorrt", "cuda")


def test_external_data_export_is_one_data_file_and_hashed(small_checkpoint, small_onnx, tmp_path, rng):
    """Large models keep their weights in ONE <name>.onnx.data beside the ONNX (not a file per tensor); ONNX Runtime
    runs it to the same numbers, and the sidecar's hash covers the weights, so a swapped .data is refused."""
    from spidepth_ros.export import export_onnx

    onnx_path, meta = export_onnx(small_checkpoint, tmp_path / "ext" / "m.onnx", external_data=True)
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.json"]
    assert meta.external_data == "m.onnx.data"
    assert onnx_path.stat().st_size < 200_000 < (tmp_path / "ext" / "m.onnx.data").stat().st_size
    x = rng.random((1, 3, 96, 320)).astype(np.float32)
    with OnnxRuntimeDepthEstimator(onnx_path) as ext, OnnxRuntimeDepthEstimator(small_onnx) as single:
        np.testing.assert_array_equal(ext.infer_tensor(x), single.infer_tensor(x))
    data = bytearray((tmp_path / "ext" / "m.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "ext" / "m.onnx.data").write_bytes(bytes(data))
    with pytest.raises(MetadataError, match="does not match its sidecar"):
        OnnxRuntimeDepthEstimator(onnx_path)


def test_dynamic_batch_export_records_its_profile(small_checkpoint, tmp_path, rng):
    import onnxruntime as ort

    from spidepth_ros.export import export_onnx
    from spidepth_ros.runtime.tensorrt_backend import batch_profile

    onnx_path, meta = export_onnx(small_checkpoint, tmp_path / "dyn.onnx", dynamic_batch=True, max_batch=4)
    assert read_sidecar(onnx_path).max_batch == 4 and meta.dynamic_batch
    assert batch_profile(meta) == ((1, 3, 96, 320), (1, 3, 96, 320), (4, 3, 96, 320))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = rng.random((3, 3, 96, 320)).astype(np.float32)
    out = session.run(["depth"], {"image": x})[0]
    assert out.shape == (3, 1, 48, 160)
    np.testing.assert_allclose(out[1:2], session.run(["depth"], {"image": x[1:2]})[0], rtol=1e-5)
    with pytest.raises(ValueError, match="only with dynamic_batch"):
        export_onnx(small_checkpoint, tmp_path / "bad.onnx", max_batch=4)


class FakeCudart:
    """cuda-python's runtime as a machine without a usable GPU answers (no GPU can run here)."""

    def __init__(self, error_name: str, code: int = 35, count: int = 0) -> None:
        self.error_name, self.code, self.count = error_name, code, count

    def cudaGetDeviceCount(self):
        return self.code, self.count

    def cudaGetErrorName(self, err):
        return 0, self.error_name.encode()


@pytest.mark.parametrize("error,code,count,match", [
    ("cudaErrorInsufficientDriver", 35, 0, "driver is too old"),
    ("cudaErrorNoDevice", 100, 0, "no CUDA GPU"),
    ("cudaErrorUnknown", 999, 0, "cudaErrorUnknown"),
    ("cudaSuccess", 0, 1, "only 1 GPU"),
])
def test_gpu_errors_are_named(monkeypatch, error, code, count, match):
    from spidepth_ros.runtime import BackendUnavailable
    from spidepth_ros.runtime import tensorrt_backend as tb

    monkeypatch.setattr(tb, "import_cudart", lambda: FakeCudart(error, code, count))
    with pytest.raises(BackendUnavailable, match=match):
        tb.gpu_identity(2 if code == 0 else 0)


def test_auto_falls_back_to_onnxruntime_with_the_reason(monkeypatch, small_onnx):
    """A broken TensorRT install (libnvinfer missing: OSError, not BackendUnavailable) must not crash auto."""
    from spidepth_ros.runtime import choose_backend
    from spidepth_ros.runtime import tensorrt_backend as tb

    def broken():
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(tb, "import_tensorrt", broken)
    logged = []
    assert choose_backend(small_onnx, "auto", "auto", logged.append) == "onnxruntime"
    assert "libnvinfer.so.10" in logged[0] and "running on ONNX Runtime instead" in logged[0]
    # the fallback line states what happens; it gives no advice to do what it is already doing
    assert "use backend" not in logged[0] and "instead)" not in logged[0]
    assert choose_backend(small_onnx, "auto", "cpu", logged.append) == "onnxruntime"
    if not _have_tensorrt():                 # the real reason here: TensorRT is not installed
        monkeypatch.undo()
        logged.clear()
        assert choose_backend(small_onnx, "auto", "auto", logged.append) == "onnxruntime"
        assert "not installed" in logged[0] and "use backend" not in logged[0], logged[0]


def test_device_index_parsing():
    from spidepth_ros.runtime import BackendUnavailable
    from spidepth_ros.runtime.tensorrt_backend import device_index

    assert [device_index(d) for d in ("auto", "cuda", "cuda:0", "cuda:3")] == [0, 0, 0, 3]
    with pytest.raises(BackendUnavailable, match="runs on a GPU"):
        device_index("cpu")


OFFICIAL_PRESETS = ("resnet50_192x640", "resnet50_320x1024", "cvnxt_l_320x1024", "cvnxt_h_320x1024")


@requires_tensorrt
@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_tensorrt_matches_onnxruntime_on_official_presets(preset, tmp_path, rng):
    """Each official preset (random weights in the official layout; cvnxt_h through external data): FP32 engine
    within 1e-3 max relative of ONNX Runtime, FP16 engine's AbsRel drift within 1 %."""
    from spidepth_ros.checkpoint import save_official_folder
    from spidepth_ros.export import export_onnx
    from spidepth_ros.models import build_depth_net
    from spidepth_ros.presets import get_preset
    from spidepth_ros.runtime.tensorrt_backend import TensorRTDepthEstimator

    torch.manual_seed(3)
    p = get_preset(preset)
    folder = save_official_folder(tmp_path / preset, build_depth_net(p).eval())
    onnx_path, meta = export_onnx(folder, tmp_path / f"{preset}.onnx", preset=preset)
    export_onnx(folder, tmp_path / f"{preset}.fp16.onnx", preset=preset, fp16=True)
    if preset == "cvnxt_h_320x1024":
        assert meta.external_data
    x = rng.random((1, 3, p.height, p.width)).astype(np.float32)
    import onnxruntime as ort

    device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    with OnnxRuntimeDepthEstimator(onnx_path, device=device) as ort_est:
        ref = ort_est.infer_tensor(x)
    with TensorRTDepthEstimator(onnx_path, "fp32", cache_dir=tmp_path / "cache") as est:
        assert max_rel(est.infer_tensor(x), ref) <= 1e-3
    with TensorRTDepthEstimator(onnx_path, "fp16", cache_dir=tmp_path / "cache") as est:
        assert float(np.mean(np.abs(est.infer_tensor(x) - ref) / ref)) <= 0.01
