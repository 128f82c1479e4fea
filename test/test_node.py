"""The depth node over real DDS: outputs checked against an independent ONNX Runtime session, the
back-projection formula and depth_image_proc's byte layout; bad input never kills it."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from conftest import requires_ros2
from rosutil import Spinner, wait_for

pytestmark = requires_ros2

W, H = 400, 120
FX, FY, CX, CY = 200.0, 210.0, 199.5, 59.5
DEPTH_SCALE = 2.5


def make_rgb(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize((rng.random((12, 40, 3)) * 255).astype(np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    return base


class Harness:
    """Publishes camera frames and records what the node publishes, keyed by stamp (nanoseconds)."""

    def __init__(self, context) -> None:
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        self.node = Node("spidepth_test_harness", context=context)
        self.pub_image = self.node.create_publisher(Image, "image", 10)
        self.pub_compressed = self.node.create_publisher(CompressedImage, "image/compressed", 10)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.depth, self.info, self.points, self.colored = {}, {}, {}, {}
        for topic, typ, store in (("depth/image", Image, self.depth), ("depth/camera_info", CameraInfo, self.info),
                                  ("depth/points", PointCloud2, self.points), ("depth/colored", Image, self.colored)):
            self.node.create_subscription(typ, topic, lambda m, s=store: s.__setitem__(self.key(m), m), 10)
        self._sensor_qos = qos_profile_sensor_data

    @staticmethod
    def key(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def header(self, stamp_ns: int, frame_id: str = "cam_optical"):
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                      frame_id=frame_id)

    def camera_info(self, stamp_ns: int, fx=FX, fy=FY, cx=CX, cy=CY, d=None):
        from sensor_msgs.msg import CameraInfo

        k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return CameraInfo(header=self.header(stamp_ns), width=W, height=H, distortion_model="plumb_bob",
                          d=d or [0.0] * 5, k=k, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=p)

    def image(self, stamp_ns: int, encoding: str, data: bytes, step: int, height=H, width=W, bigendian=0):
        from sensor_msgs.msg import Image

        return Image(header=self.header(stamp_ns), height=height, width=width, encoding=encoding,
                     is_bigendian=bigendian, step=step, data=data)


def encode_for_test(rgb: np.ndarray, encoding: str) -> tuple[bytes, int, int, np.ndarray]:
    """Independent encoder: (data, step, is_bigendian, RGB the node should see)."""
    h, w = rgb.shape[:2]
    if encoding == "rgb8":
        return rgb.tobytes(), w * 3, 0, rgb
    if encoding == "bgr8_padded":   # 6 bytes of junk at the end of every row
        rows = np.concatenate([rgb[..., ::-1], np.full((h, 2, 3), 77, np.uint8)], axis=1).reshape(h, -1)
        return rows.tobytes(), w * 3 + 6, 0, rgb
    if encoding == "rgba8":
        return np.dstack([rgb, np.full((h, w), 9, np.uint8)]).tobytes(), w * 4, 0, rgb
    if encoding == "mono16_be":
        grey = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
        return (grey.astype(np.uint16) * 257).astype(">u2").tobytes(), w * 2, 1, np.dstack([grey] * 3)
    raise AssertionError(encoding)


@pytest.fixture(scope="module")
def node_setup(ros_context, small_onnx):
    from rclpy.parameter import Parameter

    from spidepth_ros.ros.depth_node import DepthNode

    overrides = [Parameter("model_path", value=str(small_onnx)), Parameter("backend", value="onnxruntime"),
                 Parameter("depth_scale", value=DEPTH_SCALE), Parameter("min_range", value=0.5),
                 Parameter("max_range", value=60.0), Parameter("diagnostics_period", value=0.5)]
    node = DepthNode(context=ros_context, parameter_overrides=overrides)
    node.configure()
    node.activate()
    harness = Harness(ros_context)
    spinner = Spinner(ros_context, node, harness.node)
    assert wait_for(lambda: node._pubs["depth"].get_subscription_count() > 0 and
                    harness.pub_image.get_subscription_count() > 0, 20)
    yield node, harness
    spinner.stop()
    node.destroy_node()
    harness.node.destroy_node()


@pytest.fixture(scope="module")
def reference(small_onnx):
    from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator

    est = OnnxRuntimeDepthEstimator(small_onnx).start()
    yield est
    est.stop()


def expected_depth(reference, rgb: np.ndarray) -> np.ndarray:
    d = reference.infer(rgb).depth * DEPTH_SCALE
    d[(d < 0.5) | (d > 60.0)] = np.nan
    return d


def send(harness, stamp: int, msg, with_info: bool = True, compressed: bool = False) -> None:
    if with_info:
        harness.pub_info.publish(harness.camera_info(stamp))
        time.sleep(0.05)
    (harness.pub_compressed if compressed else harness.pub_image).publish(msg)


def cloud_array(msg) -> np.ndarray:
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": ["<f4"] * len(msg.fields),
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8_padded", "rgba8", "mono16_be"])
def test_outputs_match_independent_computation(node_setup, reference, encoding):
    node, harness = node_setup
    stamp = 10_000_000_000 + hash(encoding) % 1000 * 1000
    rgb = make_rgb(abs(hash(encoding)) % 100)
    data, step, big, seen = encode_for_test(rgb, encoding)
    enc = encoding.split("_")[0]
    send(harness, stamp, harness.image(stamp, enc, data, step, bigendian=big))
    assert wait_for(lambda: stamp in harness.depth and stamp in harness.points and stamp in harness.info)

    # depth: 32FC1 metres, NaN invalid, same values as an independent ONNX Runtime session
    dmsg = harness.depth[stamp]
    assert (dmsg.encoding, dmsg.width, dmsg.height, dmsg.header.frame_id) == ("32FC1", 160, 48, "cam_optical")
    depth = np.frombuffer(bytes(dmsg.data), "<f4").reshape(48, 160)
    np.testing.assert_allclose(depth, expected_depth(reference, seen), rtol=1e-5, equal_nan=True)

    # camera_info scaled to the published 160x48 (resize factor 0.4 in both axes)
    info = harness.info[stamp]
    assert (info.width, info.height) == (160, 48)
    np.testing.assert_allclose([info.p[0], info.p[5], info.p[2], info.p[6]],
                               [FX * 0.4, FY * 0.4, CX * 0.4, CY * 0.4], rtol=1e-9)
    assert list(info.d) == [0.0] * 5

    # cloud: depth_image_proc xyzrgb layout and the back-projection formula
    pmsg = harness.points[stamp]
    assert [(f.name, f.offset, f.datatype, f.count) for f in pmsg.fields] == \
        [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 16, 7, 1)]
    assert (pmsg.point_step, pmsg.row_step, pmsg.height, pmsg.width, pmsg.is_dense, pmsg.is_bigendian) == \
        (32, 32 * 160, 48, 160, False, False)
    pts = cloud_array(pmsg)
    u, v = np.meshgrid(np.arange(160), np.arange(48))
    fx, fy, cx, cy = FX * 0.4, FY * 0.4, CX * 0.4, CY * 0.4
    np.testing.assert_allclose(pts["z"], depth, equal_nan=True)
    np.testing.assert_allclose(pts["x"], (u - cx) * depth / fx, rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(pts["y"], (v - cy) * depth / fy, rtol=1e-5, atol=1e-6, equal_nan=True)
    # colour: the network-size image (area resize of the input) area-averaged to the published size
    net_size = cv2.resize(seen, (320, 96), interpolation=cv2.INTER_AREA)
    small = cv2.resize(net_size, (160, 48), interpolation=cv2.INTER_AREA).astype(np.uint32)
    packed = np.frombuffer(bytes(pmsg.data), np.uint8).reshape(48, 160, 32)[..., 16:20]
    np.testing.assert_array_equal(packed[..., 0], small[..., 2])   # little-endian 0x00RRGGBB: b, g, r, 0
    np.testing.assert_array_equal(packed[..., 1], small[..., 1])
    np.testing.assert_array_equal(packed[..., 2], small[..., 0])
    assert not packed[..., 3].any()


def test_compressed_input(ros_context, small_onnx, reference):
    from rclpy.parameter import Parameter

    from spidepth_ros.ros.depth_node import DepthNode

    node = DepthNode("depth_node_compressed", context=ros_context, parameter_overrides=[
        Parameter("model_path", value=str(small_onnx)), Parameter("input_transport", value="compressed"),
        Parameter("min_range", value=0.0), Parameter("max_range", value=1000.0)])
    node.configure()
    node.activate()
    harness = Harness(ros_context)
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: harness.pub_compressed.get_subscription_count() > 0 and
                        node._pubs["depth"].get_subscription_count() > 0)
        from sensor_msgs.msg import CompressedImage

        rgb = make_rgb(5)
        ok, png = cv2.imencode(".png", rgb[..., ::-1])
        stamp = 20_000_000_000
        send(harness, stamp, CompressedImage(header=harness.header(stamp), format="rgb8; png compressed bgr8",
                                             data=png.tobytes()), compressed=True)
        assert wait_for(lambda: stamp in harness.depth)
        depth = np.frombuffer(bytes(harness.depth[stamp].data), "<f4").reshape(48, 160)
        np.testing.assert_allclose(depth, reference.infer(rgb).depth, rtol=1e-5)
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_bad_messages_are_dropped_and_node_survives(node_setup, reference):
    node, harness = node_setup
    bad_before = node.stats.bad
    rgb = make_rgb(3)
    bad = [
        harness.image(30_000_000_001, "rgb8", rgb.tobytes()[:1000], W * 3),          # data shorter than step*h
        harness.image(30_000_000_002, "rgb8", rgb.tobytes(), W * 2),                 # step smaller than a row
        harness.image(30_000_000_003, "rgb8", b"", 0, height=0, width=0),             # empty
        harness.image(30_000_000_004, "weird42", rgb.tobytes(), W * 3),              # unknown encoding
    ]
    for msg in bad:
        harness.pub_image.publish(msg)
        time.sleep(0.3)
    assert wait_for(lambda: node.stats.bad - bad_before >= 4, 10)
    assert not any(30_000_000_001 <= k <= 30_000_000_004 for k in harness.depth)

    # NaN and zero intrinsics: depth still published, no cloud
    for i, (fx, cx) in enumerate(((float("nan"), CX), (0.0, 0.0))):
        stamp = 31_000_000_000 + i
        harness.pub_info.publish(harness.camera_info(stamp, fx=fx, cx=cx))
        time.sleep(0.1)
        harness.pub_image.publish(harness.image(stamp, "rgb8", rgb.tobytes(), W * 3))
        assert wait_for(lambda: stamp in harness.depth)
        time.sleep(0.3)
        assert stamp not in harness.points and stamp not in harness.info

    # still alive and correct afterwards
    stamp = 32_000_000_000
    send(harness, stamp, harness.image(stamp, "rgb8", rgb.tobytes(), W * 3))
    assert wait_for(lambda: stamp in harness.points)
    depth = np.frombuffer(bytes(harness.depth[stamp].data), "<f4").reshape(48, 160)
    np.testing.assert_allclose(depth, expected_depth(reference, rgb), rtol=1e-5, equal_nan=True)


def test_burst_latest_wins(node_setup):
    node, harness = node_setup
    received0, processed0, dropped0 = node.stats.received, node.stats.processed, node.stats.dropped
    rgb = make_rgb(7)
    harness.pub_info.publish(harness.camera_info(40_000_000_000))
    stamps = [40_000_000_000 + i for i in range(40)]
    for s in stamps:
        harness.pub_image.publish(harness.image(s, "rgb8", rgb.tobytes(), W * 3))
    assert wait_for(lambda: stamps[-1] in harness.depth, 20), "the newest frame of a burst must be processed"
    time.sleep(0.5)
    received = node.stats.received - received0
    processed = node.stats.processed - processed0
    dropped = node.stats.dropped - dropped0
    # inference (tens of ms) is slower than the burst: frames were replaced in the one-slot mailbox
    assert dropped > 0 and processed < received <= len(stamps)
    assert processed + dropped == received
    assert node._mailbox is None or isinstance(node._mailbox, tuple)   # one slot, never a queue


def test_missing_camera_info_publishes_depth_only(ros_context, small_onnx):
    from rclpy.parameter import Parameter

    from spidepth_ros.ros.depth_node import DepthNode

    node = DepthNode("depth_node_noinfo", context=ros_context, namespace="noinfo", parameter_overrides=[
        Parameter("model_path", value=str(small_onnx))])
    node.configure()
    node.activate()
    from rclpy.node import Node
    from sensor_msgs.msg import Image, PointCloud2

    peer = Node("noinfo_peer", namespace="noinfo", context=ros_context)
    got_depth, got_points = [], []
    pub = peer.create_publisher(Image, "image", 10)
    peer.create_subscription(Image, "depth/image", got_depth.append, 10)
    peer.create_subscription(PointCloud2, "depth/points", got_points.append, 10)
    spinner = Spinner(ros_context, node, peer)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0 and node._pubs["points"].get_subscription_count() > 0)
        rgb = make_rgb(9)
        for i in range(3):
            pub.publish(Image(height=H, width=W, encoding="rgb8", step=W * 3, data=rgb.tobytes()))
            time.sleep(0.3)
        assert wait_for(lambda: len(got_depth) >= 2)
        time.sleep(0.3)
        assert got_points == []
        assert "no_info" in node._warned_once
    finally:
        spinner.stop()
        node.destroy_node()
        peer.destroy_node()


def test_diagnostics_report_counts(node_setup):
    from diagnostic_msgs.msg import DiagnosticArray

    node, harness = node_setup
    got = []
    sub = harness.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    try:
        assert wait_for(lambda: len(got) > 0, 10)
        values = {kv.key: kv.value for kv in got[-1].status[0].values}
        assert int(values["processed"]) >= 1 and "latency_p50_ms" in values
    finally:
        harness.node.destroy_subscription(sub)


def test_debug_level_logs_per_frame_timings(node_setup, capfd):
    """At debug level the node logs one line per frame with its stamp, input size and step timings."""
    from rclpy.logging import LoggingSeverity

    node, harness = node_setup
    logger = node.get_logger()
    logger.set_level(LoggingSeverity.DEBUG)
    try:
        stamp = 71_000_000_123
        send(harness, stamp, harness.image(stamp, "rgb8", make_rgb(11).tobytes(), W * 3))
        assert wait_for(lambda: stamp in harness.depth, 20)
        time.sleep(0.2)
    finally:
        logger.set_level(LoggingSeverity.INFO)
    line = next(x for x in capfd.readouterr().err.splitlines() if "frame 71.000000123" in x)
    assert f"{W}x{H}:" in line and "inference" in line and "preprocess" in line
    stamp2 = 72_000_000_000
    send(harness, stamp2, harness.image(stamp2, "rgb8", make_rgb(12).tobytes(), W * 3))
    assert wait_for(lambda: stamp2 in harness.depth, 20)
    time.sleep(0.2)
    assert "frame 72.000000000" not in capfd.readouterr().err        # info level: no per-frame line
