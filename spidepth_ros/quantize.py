"""INT8 models calibrated on the robot's own recordings: one Q/DQ ONNX for ONNX Runtime (CPU) and TensorRT.

``spidepth-export --precision int8 --calibration-bags BAG ...`` calls :func:`export_int8`:

1. **Frames** (:func:`select_calibration_frames`): ``4 x N`` candidates evenly spaced in time over all bags are
   decoded, then ``N`` are kept by farthest-point sampling on a small thumbnail, so the set spans the recording's
   places and lighting, not its first seconds. They are preprocessed exactly as the node does
   (:class:`~spidepth_ros.runtime.preprocess.Preprocessor`, the same crop mode).
2. **Quantization** (ONNX Runtime static quantization, percentile ranges): Q/DQ format, INT8 weights per channel, INT8
   activations, both **symmetric** (zero point 0): the only INT8 TensorRT accepts (explicit quantization).
3. **What stays float is decided by measurement** (:data:`FLOAT_CANDIDATES`): each candidate set of float nodes,
   smallest first, is quantized and its depth compared with the FP32 model's on calibration frames it was not
   calibrated on (median-scaled mean relative deviation). The first set within ``max_deviation`` wins; every
   measurement, the calibration frames' hash and count and the excluded nodes go into the sidecar.

ONNX Runtime on the CPU runs symmetric INT8 activations slowly (its fast x86/ARM kernels take uint8
activations with int8 weights, "U8S8"); :func:`adapt_for_onnxruntime_cpu` rewrites the model in memory at load:
every activation zero point 0 (int8) becomes 128 (uint8), which is exact, and a ``Q -> DQ -> Relu -> Q`` chain
becomes one ``Q`` with zero point 0 on the Relu's output scale, which equals the on-disk model for every
activation inside the calibrated range (one rounding fewer).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .bagio import IMAGE_TYPES, decode_image_msg, open_reader
from .files import file_sha256, plain_open_mode
from .runtime.metadata import ModelMetadata, read_sidecar, write_sidecar
from .runtime.preprocess import Preprocessor

DEFAULT_CALIBRATION_FRAMES = 64
#: Candidates decoded per calibration frame kept (evenly spaced in time; content sampling picks among them).
CANDIDATES_PER_FRAME = 4
#: Share of the selected frames held out of calibration to measure the INT8 model's deviation from FP32.
HELD_OUT_SHARE = 0.25
#: Largest median-scaled mean relative deviation of INT8 depth from FP32 depth accepted for a float-node set
#: (measured on the demo weights: 1.4 % deviation left held-out AbsRel unchanged, docs/benchmarks.md).
DEFAULT_MAX_DEVIATION = 0.02
#: Activation ranges cover this percentile of the calibration values (the rest saturate). Measured on the demo
#: weights against MinMax: depth deviation from FP32 1.41 % -> 0.94 % with the same float nodes (99.999: 1.13 %).
CALIBRATION_PERCENTILE = 99.99
#: Side of the grey thumbnail that describes a frame's content for farthest-point sampling.
THUMBNAIL = (16, 12)


class CalibrationError(ValueError):
    """INT8 calibration cannot run; the message names the bag, topic or frame and what to do."""


@dataclass(frozen=True)
class FloatCandidate:
    """A set of nodes kept in float, tried in order until the INT8 model is accurate enough."""

    name: str
    description: str
    keeps: Callable[[object], bool]      # onnx NodeProto -> stays float


def _in_head(node) -> bool:
    return node.name.startswith("/depth_decoder/")


FLOAT_CANDIDATES: tuple[FloatCandidate, ...] = (
    FloatCandidate("none", "every quantizable node in INT8", lambda n: False),
    FloatCandidate("attention", "the Self Query Layer's matrix products and softmaxes (MatMul, Gemm, Softmax)",
                   lambda n: _in_head(n) and n.op_type in ("MatMul", "Gemm", "Softmax", "Einsum")),
    FloatCandidate("head", "the whole Self Query Layer depth head", _in_head),
    FloatCandidate("head+ends", "the depth head, the decoder's last conv and the encoder's first conv",
                   lambda n: _in_head(n) or n.name.startswith("/encoder/decoder/final_conv")
                   or n.name in ("/encoder/encoder/conv1/Conv", "/encoder/encoder/stem/stem.0/Conv")),
)


@dataclass
class CalibrationFrames:
    """RGB frames chosen for calibration, with where they came from."""

    images: list            # [H, W, 3] uint8 RGB each
    stamps_ns: list         # header stamps
    source: str             # bags and topic, for the sidecar
    available: int          # frames the topic holds in all bags

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for image in self.images:
            digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()


def select_calibration_frames(bags: Sequence[str | Path], topic: str, count: int = DEFAULT_CALIBRATION_FRAMES,
                              progress: bool = True) -> CalibrationFrames:
    """``count`` frames of ``topic`` spread over the bags' time and content (see the module docstring).

    Raises :class:`CalibrationError` (or :class:`~spidepth_ros.bagio.BagError`) naming the bag and the problem:
    a bag that does not open, a topic it lacks, no frames, fewer frames than ``count``, a frame that cannot be
    decoded.
    """
    from tqdm import tqdm

    if count < 2:
        raise CalibrationError(f"--calibration-frames {count}: calibration needs at least 2 frames")
    paths = [Path(b) for b in bags]
    with open_reader(paths) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            available = sorted({f"{c.topic} [{c.msgtype}]" for c in reader.connections})
            raise CalibrationError(f"no topic {topic!r} in {[str(p) for p in paths]}; they have {available}: pass "
                                   "--calibration-topic")
        wrong = [c.msgtype for c in conns if c.msgtype not in IMAGE_TYPES]
        if wrong:
            raise CalibrationError(f"topic {topic!r} has type {wrong[0]}, not an image; pass the colour image "
                                   "topic as --calibration-topic")
        total = sum(c.msgcount for c in conns)
        if total == 0:
            raise CalibrationError(f"topic {topic!r} has no messages in {[str(p) for p in paths]}: the bag is "
                                   "empty; record the camera while the robot moves")
        if total < count:
            raise CalibrationError(f"topic {topic!r} has {total} frames in {[str(p) for p in paths]}, fewer than "
                                   f"the {count} asked for: pass --calibration-frames {total} or more bags")
        n_candidates = min(total, count * CANDIDATES_PER_FRAME)
        wanted = set(np.unique(np.linspace(0, total - 1, n_candidates).round().astype(int)).tolist())
        images, stamps = [], []
        bar = tqdm(total=len(wanted), desc="calibration frames", unit="frame", disable=not progress)
        for index, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
            if index not in wanted:
                continue
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                images.append(decode_image_msg(msg, conn.msgtype))
            except Exception as exc:  # a corrupt message must name itself, not stop with a traceback
                raise CalibrationError(f"frame {index} of {topic!r} in {[str(p) for p in paths]} cannot be decoded "
                                       f"({type(exc).__name__}: {exc}); fix or trim the recording") from None
            stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
            bar.update()
        bar.close()
    keep = farthest_point_order(np.stack([thumbnail(im) for im in images]), count)
    keep.sort()                           # time order, for people reading the sidecar
    return CalibrationFrames([images[i] for i in keep], [stamps[i] for i in keep],
                             f"{', '.join(str(p) for p in paths)} topic {topic}", total)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A frame's content in a few numbers: a grey ``THUMBNAIL`` image, zero mean and unit norm (so lighting
    changes count less than layout), plus its mean brightness."""
    import cv2

    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), THUMBNAIL, interpolation=cv2.INTER_AREA)
    v = grey.astype(np.float64).ravel() / 255.0
    mean = v.mean()
    v = v - mean
    return np.append(v / (np.linalg.norm(v) + 1e-9), mean)


def farthest_point_order(features: np.ndarray, count: int) -> list:
    """Indices of ``count`` rows of ``[N, D]`` ``features``, each the farthest from those already chosen
    (starting from the row nearest the mean): a spread of contents, deterministic."""
    n = len(features)
    if count >= n:
        return list(range(n))
    first = int(np.argmin(np.linalg.norm(features - features.mean(0), axis=1)))
    chosen = [first]
    dist = np.linalg.norm(features - features[first], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def depth_deviation(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Median-scaled mean relative deviation of ``candidate`` depth from ``reference`` (the AbsRel of one model
    against the other: what median-scaled AbsRel against ground truth can move by)."""
    ref, cand = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    ok = np.isfinite(ref) & np.isfinite(cand) & (ref > 0) & (cand > 0)
    if not ok.any():
        return float("inf")
    scaled = cand[ok] * np.median(ref[ok]) / np.median(cand[ok])
    return float(np.mean(np.abs(scaled - ref[ok]) / ref[ok]))


def quantize_qdq(fp32_onnx: Path, tensors: Sequence[np.ndarray], out: Path, input_name: str,
                 float_nodes: Sequence[str]) -> None:
    """ONNX Runtime static quantization of ``fp32_onnx`` to symmetric INT8 Q/DQ at ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tensors)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with contextlib.redirect_stdout(io.StringIO()):        # its histogram notices are not for the user
        quantize_static(str(fp32_onnx), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=list(float_nodes),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "CalibPercentile": CALIBRATION_PERCENTILE},
                        calibration_providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Int8Result:
    path: Path
    metadata: ModelMetadata
    deviations: dict            # candidate name -> measured deviation from FP32 (the ones tried)
    chosen: str


def export_int8(fp32_onnx: str | Path, frames: CalibrationFrames, out: Optional[str | Path] = None,
                crop: str = "none", max_deviation: float = DEFAULT_MAX_DEVIATION,
                log: Callable[[str], None] = print) -> Int8Result:
    """Calibrate and write ``<model>.int8.onnx`` (+ sidecar) from an exported FP32 ONNX and chosen frames.

    Everything is written under temporary names and renamed into place at the end, so a failure leaves nothing
    half-written beside the model. The FP32 model's sidecar then names the INT8 file (``extra.int8_model``).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_onnx = Path(fp32_onnx)
    meta = read_sidecar(fp32_onnx)
    if meta.external_data:
        raise CalibrationError(f"{fp32_onnx} keeps its weights in {meta.external_data}: INT8 export supports "
                               "single-file models (all presets but cvnxt_h_320x1024)")
    out = Path(out) if out else fp32_onnx.with_name(fp32_onnx.name.replace(".onnx", ".int8.onnx"))
    pre = Preprocessor(meta.input_width, meta.input_height, crop)
    tensors = [pre.prepare(im).tensor.copy() for im in frames.images]
    # every k-th frame is held out (the frames are in time order and spread over the recording)
    step = max(2, int(round(1 / HELD_OUT_SHARE)))
    held_out = tensors[step // 2::step]
    calib = [t for i, t in enumerate(tensors) if i % step != step // 2]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(str(fp32_onnx), options, providers=["CPUExecutionProvider"])
    reference = [fp32.run([meta.output_name], {meta.input_name: t})[0] for t in held_out]

    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        prepared = work / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        graph_nodes = list(onnx.load(str(prepared)).graph.node)
        deviations, chosen, chosen_path, float_nodes = {}, None, None, []
        for candidate in FLOAT_CANDIDATES:
            nodes = [n.name for n in graph_nodes if candidate.keeps(n)]
            if candidate.name != "none" and not nodes:
                continue                                    # this architecture has no such nodes
            path = work / f"{candidate.name}.onnx"
            quantize_qdq(prepared, calib, path, meta.input_name, nodes)
            session = ort.InferenceSession(adapt_for_onnxruntime_cpu(onnx.load(str(path))).SerializeToString(),
                                           options, providers=["CPUExecutionProvider"])
            deviation = float(np.mean([depth_deviation(r, session.run([meta.output_name], {meta.input_name: t})[0])
                                       for r, t in zip(reference, held_out)]))
            deviations[candidate.name] = round(deviation, 6)
            log(f"int8 with float {candidate.name!r} ({len(nodes)} nodes): depth deviates {100 * deviation:.2f} % "
                f"from FP32 on {len(held_out)} held-out calibration frames")
            if chosen is None or deviation < deviations[chosen]:
                chosen, chosen_path, float_nodes = candidate.name, path, nodes
            if deviation <= max_deviation:        # (then it is also the best so far: earlier ones were above)
                break
        else:
            log(f"no float-node set reached {100 * max_deviation:.1f} %: keeping the best, {chosen!r} "
                f"({100 * deviations[chosen]:.2f} %)")
        int8_meta = dataclasses.replace(
            meta, precision="int8", model_sha256=file_sha256(chosen_path), external_data="",
            extra={**meta.extra, "int8": {
                "format": "QDQ, INT8 weights per channel and INT8 activations, both symmetric (TensorRT explicit "
                          "quantization); ONNX Runtime CPU runs it with uint8 activations (adapted at load)",
                "calibration_method": f"percentile {CALIBRATION_PERCENTILE} (onnxruntime.quantization)",
                "calibration_source": frames.source, "calibration_frames": len(calib),
                "held_out_frames": len(held_out), "frames_available": frames.available,
                "calibration_frames_sha256": frames.sha256(), "crop": crop,
                "float_nodes_choice": chosen, "float_nodes": float_nodes,
                "deviation_from_fp32": deviations, "max_deviation": max_deviation,
                "fp32_model": fp32_onnx.name, "fp32_model_sha256": meta.model_sha256}})
        mode = plain_open_mode(out)
        os.chmod(chosen_path, mode)
        write_sidecar(out, int8_meta)                       # sidecar first: a model never lacks its sidecar
        os.replace(chosen_path, out)
        write_sidecar(fp32_onnx, dataclasses.replace(meta, extra={**meta.extra, "int8_model": out.name}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Int8Result(out, int8_meta, deviations, chosen)


# --- ONNX Runtime on the CPU -----------------------------------------------------------------------------------

def adapt_for_onnxruntime_cpu(model):
    """The symmetric INT8 Q/DQ ``model`` (onnx ModelProto, changed in place and returned) as ONNX Runtime's CPU
    kernels run fastest: uint8 activations ("U8S8"); see the module docstring for what is exact."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # 1. activation zero points (those of QuantizeLinear nodes, shared with their DequantizeLinear): int8 0 ->
    #    uint8 128 represents the same values
    for name in {n.input[2] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}:
        zp = numpy_helper.to_array(inits[name])
        if zp.dtype == np.int8:
            inits[name].CopyFrom(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), name))
    # 2. Q_a -> DQ_a -> Relu -> Q_b  =>  Q_b with zero point 0 fed by Q_a's input
    dropped = set()
    for relu in graph.node:
        if relu.op_type != "Relu":
            continue
        dq_a = producer.get(relu.input[0])
        q_a = producer.get(dq_a.input[0]) if dq_a is not None and dq_a.op_type == "DequantizeLinear" else None
        after = consumers.get(relu.output[0], [])
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear" \
                or len(consumers.get(q_a.output[0], [])) != 1 or len(consumers.get(dq_a.output[0], [])) != 1:
            continue
        q_b = after[0]
        zero = f"{q_b.input[2]}__relu_u8"
        if zero not in inits:
            inits[zero] = numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(inits[q_b.input[2]])), zero)
            graph.initializer.append(inits[zero])
        for dq in consumers.get(q_b.output[0], []):
            if dq.op_type == "DequantizeLinear":
                dq.input[2] = zero
        q_b.input[0], q_b.input[2] = q_a.input[0], zero
        dropped |= {id(q_a), id(dq_a), id(relu)}
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


def int8_dot_product_support() -> tuple[bool, str]:
    """(whether this CPU has integer dot-product instructions, which ones): what makes INT8 pay on a CPU."""
    machine = platform.machine().lower()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False, "unknown CPU (no /proc/cpuinfo)"
    flags = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[1].split())
    if machine in ("x86_64", "amd64"):
        found = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in flags]
    else:
        found = [f for f in ("asimddp", "i8mm") if f in flags]
    return bool(found), ", ".join(found) if found else f"no integer dot product ({machine})"
