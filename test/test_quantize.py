"""INT8 export calibrated on bags: frame choice, the ONNX Runtime CPU adaptation against the quantization formula,
the exported model and its sidecar, precision choice in the runtimes, and refusals that leave nothing behind."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from spidepth_ros.bagio import BagWriter
from spidepth_ros.geometry import PinholeIntrinsics
from spidepth_ros.quantize import adapt_for_onnxruntime_cpu, depth_deviation, farthest_point_order, \
    int8_dot_product_support, select_calibration_frames

TOPIC = "/camera/image_raw"
INTR = PinholeIntrinsics(200.0, 200.0, 159.5, 47.5, 320, 96)


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory) -> Path:
    from spidepth_ros.synth import SynthConfig, write_bag

    out = tmp_path_factory.mktemp("int8") / "drive"
    return write_bag(SynthConfig(width=320, height=96, frames=40, seed=5), out, progress=False)


def write_frames(path: Path, frames, compressed_data=None) -> Path:
    """A bag with ``frames`` (RGB arrays) on TOPIC; ``compressed_data`` replaces the images by raw PNG bytes."""
    with BagWriter(path) as w:
        for i, rgb in enumerate(frames):
            w.write(TOPIC, w.image_msg(1_000_000_000 + i * 100_000_000, "cam", rgb, "rgb8"),
                    1_000_000_000 + i * 100_000_000)
        for i, data in enumerate(compressed_data or []):
            msg = w.typestore.types["sensor_msgs/msg/CompressedImage"](
                header=w.header(5_000_000_000 + i, "cam"), format="png", data=np.frombuffer(data, np.uint8))
            w.write(f"{TOPIC}/compressed", msg, 5_000_000_000 + i)
    return path


# --- the ONNX Runtime CPU form ------------------------------------------------------------------------------------

def qdq_chain_model(s_a: float, s_b: float):
    """x -> Q_a -> DQ_a -> Relu -> Q_b -> DQ_b -> y, and x -> Q_a -> DQ_a -> z (int8, zero points 0)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(s_a), "s_a"), numpy_helper.from_array(np.int8(0), "zp_a"),
             numpy_helper.from_array(np.float32(s_b), "s_b"), numpy_helper.from_array(np.int8(0), "zp_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_a", "zp_a"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_a", "zp_a"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s_b", "zp_b"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s_b", "zp_b"], ["y"]),
             helper.make_node("QuantizeLinear", ["x", "s_a", "zp_a"], ["xq2"]),
             helper.make_node("DequantizeLinear", ["xq2", "s_a", "zp_a"], ["z"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_cpu_form_matches_the_quantization_formula(rng):
    """Zero points int8 0 -> uint8 128 give the same values; Q->DQ->Relu->Q becomes one uint8 Q of the Relu's
    output scale: exactly round(relu(x)/s_b) on [0, 255], and within one step s_b of the on-disk chain inside
    the calibrated ranges (|x| <= 127 s_a, relu(x) <= 127 s_b; calibration sets the scales so that they hold)."""
    import copy

    s_a, s_b = 0.02, 0.013
    model = qdq_chain_model(s_a, s_b)
    x = (rng.standard_normal(1000) * 1.2).astype(np.float32)
    y, z = run(model, x)
    adapted = adapt_for_onnxruntime_cpu(copy.deepcopy(model))
    y2, z2 = run(adapted, x)
    # the formula ONNX defines (round half to even, saturate)
    qa = np.clip(np.rint(x / np.float32(s_a)), -128, 127)
    np.testing.assert_array_equal(z, (qa * np.float32(s_a)).astype(np.float32))
    np.testing.assert_array_equal(z2, z)                                     # zero point change: exact
    want = np.clip(np.rint(np.maximum(x, 0) / np.float32(s_b)), 0, 255) * np.float32(s_b)
    np.testing.assert_allclose(y2, want, rtol=0, atol=1e-7)
    inside = (np.abs(x) <= 127 * s_a) & (x <= 127 * s_b)
    assert inside.mean() > 0.7
    assert np.max(np.abs(y2 - y)[inside]) <= s_b + 1e-7
    assert np.mean(y2[inside] == y[inside]) > 0.5
    ops = [n.op_type for n in adapted.graph.node]
    assert ops.count("Relu") == 0 and ops.count("QuantizeLinear") == 2
    assert all(i.data_type != 3 for i in adapted.graph.initializer)          # no int8 zero point left


def test_farthest_point_order_spreads_over_content():
    """90 near-identical frames then 10 of another scene: the first 10 frames hold none of the second scene;
    farthest-point order picks it at once."""
    a = np.tile([1.0, 0.0, 0.0], (90, 1)) + np.random.default_rng(0).normal(0, 0.01, (90, 3))
    b = np.tile([0.0, 1.0, 0.0], (10, 1)) + np.random.default_rng(1).normal(0, 0.01, (10, 3))
    order = farthest_point_order(np.vstack([a, b]), 10)
    assert len(set(order)) == 10 and any(i >= 90 for i in order[:2])     # the other scene comes first or second


def test_calibration_frames_span_the_recording(tmp_path):
    """From a recording whose last fifth is another place, the chosen frames cover its whole time span and include
    the other place."""
    rng = np.random.default_rng(3)
    grey = np.full((96, 320, 3), 100, np.uint8)
    frames = [np.clip(grey + rng.integers(-3, 4, grey.shape), 0, 255).astype(np.uint8) for _ in range(80)]
    frames += [(rng.random((96, 320, 3)) * 255).astype(np.uint8) for _ in range(20)]
    chosen = select_calibration_frames([write_frames(tmp_path / "b", frames)], TOPIC, 10, progress=False)
    assert len(chosen.images) == 10 and chosen.available == 100
    stamps = (np.array(chosen.stamps_ns) - 1_000_000_000) // 100_000_000
    assert stamps.min() <= 10 and stamps.max() >= 90 and (stamps >= 80).sum() >= 2
    assert list(stamps) == sorted(stamps)


def test_depth_deviation_is_median_scaled_absrel():
    ref = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert depth_deviation(ref, ref * 3.0) == pytest.approx(0.0)            # a scale is not a deviation
    # medians agree (4), so no rescaling: one pixel 10 % off out of five
    assert depth_deviation(ref, np.array([1.0, 2.0, 4.0, 8.8, 16.0])) == pytest.approx(0.1 / 5, rel=1e-9)


# --- the exported model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_export(small_checkpoint, synth_bag, tmp_path_factory):
    from spidepth_ros.export import main as export_main

    out = tmp_path_factory.mktemp("int8model") / "m.onnx"
    old = os.umask(0o022)
    try:
        assert export_main([str(small_checkpoint), "-o", str(out), "--precision", "int8", "--calibration-bags",
                            str(synth_bag), "--calibration-topic", TOPIC, "--calibration-frames", "16",
                            "--no-progress"]) == 0
    finally:
        os.umask(old)
    return out


def test_int8_export_writes_a_calibrated_qdq_model_and_says_how(int8_export, synth_bag):
    import onnx

    fp32_meta = json.loads(Path(f"{int8_export}.json").read_text())
    int8_path = int8_export.with_name("m.int8.onnx")
    assert fp32_meta["extra"]["int8_model"] == "m.int8.onnx" and fp32_meta["precision"] == "fp32"
    meta = json.loads(Path(f"{int8_path}.json").read_text())
    info = meta["extra"]["int8"]
    assert meta["precision"] == "int8" and info["calibration_frames"] + info["held_out_frames"] == 16
    assert info["frames_available"] == 40 and len(info["calibration_frames_sha256"]) == 64
    assert info["float_nodes_choice"] in info["deviation_from_fp32"] and str(synth_bag) in info["calibration_source"]
    assert set(info["deviation_from_fp32"]) <= {"none", "attention", "head", "head+ends"}
    from spidepth_ros.files import file_sha256

    assert meta["model_sha256"] == file_sha256(int8_path)
    model = onnx.load(str(int8_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    from onnx import numpy_helper

    # symmetric INT8 everywhere (TensorRT's explicit quantization takes nothing else); biases are int32
    assert zero_points and not any(numpy_helper.to_array(z).any() for z in zero_points)
    activation_zps = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert {numpy_helper.to_array(z).dtype for z in zero_points if z.name in activation_zps} == {np.dtype(np.int8)}
    float_nodes = set(info["float_nodes"])
    assert not any(n.op_type == "QLinearConv" for n in model.graph.node)
    if float_nodes:
        kept = [n for n in model.graph.node if n.name in float_nodes and n.op_type in ("MatMul", "Softmax", "Gemm")]
        assert kept, "nodes recorded as float are in the graph"
    # beside the model: exactly the files it announced, with the mode open() gives
    names = sorted(p.name for p in int8_export.parent.iterdir())
    assert names == ["m.int8.onnx", "m.int8.onnx.json", "m.onnx", "m.onnx.json"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in int8_export.parent.iterdir())


def test_int8_depth_stays_close_to_fp32_on_other_frames(int8_export, synth_bag):
    """On frames of the bag the calibration did not pick, INT8 depth deviates little from FP32 (median-scaled)."""
    from spidepth_ros.bagio import iter_images
    from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator

    picked = set(select_calibration_frames([synth_bag], TOPIC, 16, progress=False).stamps_ns)
    others = [rgb for stamp, rgb in iter_images([synth_bag], TOPIC) if stamp not in picked][:8]
    assert len(others) == 8
    with OnnxRuntimeDepthEstimator(int8_export) as fp32, \
            OnnxRuntimeDepthEstimator(int8_export.with_name("m.int8.onnx")) as int8:
        assert "int8" in int8.describe()
        deviations = [depth_deviation(fp32.infer(rgb).depth, int8.infer(rgb).depth) for rgb in others]
        assert np.mean(deviations) < 0.03, deviations
        # and it is a different computation (a model that ignored the INT8 file would deviate by 0)
        assert np.mean(deviations) > 1e-5


def test_precision_choice_for_onnxruntime(int8_export, small_onnx):
    from spidepth_ros.runtime import MetadataError, create_estimator

    logged = []
    fast, which = int8_dot_product_support()
    auto = create_estimator(int8_export, "onnxruntime", "cpu", "auto", log=logged.append)
    assert auto.metadata.precision == ("int8" if fast else "fp32")
    assert any(("running the INT8 model" if fast else "does not pay") in line and which in line for line in logged)
    assert create_estimator(int8_export, "onnxruntime", "cpu", "int8").metadata.precision == "int8"
    assert create_estimator(int8_export, "onnxruntime", "cpu", "fp32").metadata.precision == "fp32"
    with pytest.raises(MetadataError, match="no INT8 version.*--precision int8 --calibration-bags"):
        create_estimator(small_onnx, "onnxruntime", "cpu", "int8")
    assert create_estimator(small_onnx, "onnxruntime", "cpu", "auto").metadata.precision == "fp32"


def test_dot_product_detection_reads_this_cpu():
    flags = Path("/proc/cpuinfo").read_text().split()
    fast, which = int8_dot_product_support()
    assert fast == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"))


# --- refusals ------------------------------------------------------------------------------------------------------

def bad_bags(tmp_path: Path) -> dict:
    import cv2

    rgb = (np.random.default_rng(0).random((96, 320, 3)) * 255).astype(np.uint8)
    png = cv2.imencode(".png", rgb)[1].tobytes()
    bags = {"corrupt": write_frames(tmp_path / "corrupt", [], [png, png[: len(png) // 3]] + [png] * 8)}
    with BagWriter(tmp_path / "empty") as w:
        w._conn(TOPIC, "sensor_msgs/msg/Image")                        # the topic exists, with no message
    bags["empty"] = tmp_path / "empty"
    bags["few"] = write_frames(tmp_path / "few", [rgb] * 5)
    with BagWriter(tmp_path / "no_image") as w:
        w.write("/camera/camera_info", w.camera_info_msg(1, "cam", INTR), 1)
    bags["no_image"] = tmp_path / "no_image"
    bags["missing"] = tmp_path / "does_not_exist"
    return bags


@pytest.mark.parametrize("case,topic,needle", [
    ("corrupt", f"{TOPIC}/compressed", "frame 1 of"), ("empty", TOPIC, "has no messages"),
    ("few", TOPIC, "has 5 frames"), ("no_image", TOPIC, "no topic '/camera/image_raw'"),
    ("missing", TOPIC, "does not exist")])
def test_bad_calibration_bags_end_with_one_line_and_leave_nothing(small_checkpoint, tmp_path, capsys, case, topic,
                                                                  needle):
    from spidepth_ros.export import main as export_main

    bag = bad_bags(tmp_path / "bags")[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = export_main([str(small_checkpoint), "-o", str(out_dir / "m.onnx"), "--precision", "int8",
                        "--calibration-bags", str(bag), "--calibration-topic", topic, "--calibration-frames", "8",
                        "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("spidepth-export: error:") and needle in err[0], err
    assert str(bag) in err[0] or case == "few"
    assert list(out_dir.iterdir()) == []


def test_int8_without_calibration_bags_is_refused(small_checkpoint, tmp_path, capsys):
    from spidepth_ros.export import main as export_main

    assert export_main([str(small_checkpoint), "-o", str(tmp_path / "m.onnx"), "--precision", "int8"]) == 1
    assert "needs --calibration-bags" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_node_runs_the_int8_model_when_asked(ros_context, int8_export):
    """depth_node with precision int8 (and auto on a CPU with integer dot products) publishes the INT8 model's
    depth over DDS, and its diagnostics say which precision runs."""
    pytest.importorskip("rclpy")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from rosutil import Spinner, wait_for
    from test_node import Harness, depth_of, make_rgb, start_node

    from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator

    fast, _ = int8_dot_product_support()
    for i, precision in enumerate(("int8", "auto")):
        ns = f"int8_{precision}"
        node = start_node(ros_context, int8_export, "depth_node", namespace=ns, precision=precision,
                          min_range=0.0, max_range=1e4)
        harness = Harness(ros_context, namespace=ns)
        spinner = Spinner(ros_context, node, harness.node)
        try:
            want = "int8" if precision == "int8" or fast else "fp32"
            assert node.pipeline.estimator.metadata.precision == want
            assert want in node.diagnostic_status().hardware_id
            assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
            rgb = make_rgb(40 + i)
            stamp = 110_000_000_000 + i
            harness.send(stamp, harness.rgb_image(stamp, rgb))
            assert wait_for(lambda: stamp in harness.depth)
            model = int8_export.with_name("m.int8.onnx") if want == "int8" else int8_export
            with OnnxRuntimeDepthEstimator(model) as est:
                expected = est.infer(rgb).depth * est.metadata.depth_scale
            np.testing.assert_allclose(depth_of(harness.depth[stamp]), expected, rtol=1e-5)
        finally:
            spinner.stop()
            node.destroy_node()
            harness.node.destroy_node()
