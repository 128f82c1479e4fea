"""The depth node over real DDS: outputs checked against an ONNX Runtime session fed by a hand-made tensor, the
back-projection formula and depth_image_proc's byte layout; rectification, rescaling, crops, runtime parameters,
lazy subscription, diagnostics and model hot-swap; bad input never kills it.

Every subscription of the node under test is made reliable through QoS overrides (the defaults are best effort),
so these tests count frames without losing any in transport."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from conftest import requires_ros2
from rosutil import Spinner, wait_for

pytestmark = requires_ros2

W, H = 400, 120
NET_W, NET_H, OUT_W, OUT_H = 320, 96, 160, 48
FX, FY, CX, CY = 200.0, 210.0, 199.5, 59.5
DEPTH_SCALE = 2.5
MIN_RANGE, MAX_RANGE = 0.5, 60.0



def centre_scaled(c: float, s: float) -> float:
    """A principal point after resizing by ``s`` with pixel centres at integers (where cv2.resize puts them)."""
    return (c + 0.5) * s - 0.5

def make_rgb(seed: int, width: int = W, height: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize((rng.random((12, 40, 3)) * 255).astype(np.uint8), (width, height),
                      interpolation=cv2.INTER_CUBIC)


def reliable_overrides(namespace: str = "") -> list:
    """Parameters making the node's inputs reliable (topics resolved under ``namespace``)."""
    from rclpy.parameter import Parameter

    prefix = f"/{namespace}" if namespace else ""
    return [Parameter(f"qos_overrides.{prefix}/{topic}.subscription.reliability", value="reliable")
            for topic in ("image", "image/compressed", "camera_info")]


class Harness:
    """Publishes camera frames and records what the node publishes, keyed by stamp (nanoseconds)."""

    def __init__(self, context, namespace: str = "") -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        self.node = Node("spidepth_test_harness", namespace=namespace, context=context)
        self.pub_image = self.node.create_publisher(Image, "image", 10)
        self.pub_compressed = self.node.create_publisher(CompressedImage, "image/compressed", 10)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.depth, self.info, self.points, self.colored = {}, {}, {}, {}
        for topic, typ, store in (("depth/image", Image, self.depth), ("depth/camera_info", CameraInfo, self.info),
                                  ("depth/points", PointCloud2, self.points), ("depth/colored", Image, self.colored)):
            self.node.create_subscription(typ, topic, lambda m, s=store: s.__setitem__(self.key(m), m), 10)

    @staticmethod
    def key(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    @staticmethod
    def header(stamp_ns: int, frame_id: str = "cam_optical"):
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                      frame_id=frame_id)

    def camera_info(self, stamp_ns: int, fx=FX, fy=FY, cx=CX, cy=CY, d=None, width=W, height=H, tx=0.0,
                    model="plumb_bob", k=None, p=None):
        from sensor_msgs.msg import CameraInfo

        k = k if k is not None else [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        p = p if p is not None else [fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return CameraInfo(header=self.header(stamp_ns), width=width, height=height, distortion_model=model,
                          d=d if d is not None else [0.0] * 5, k=k, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], p=p)

    def image(self, stamp_ns: int, encoding: str, data: bytes, step: int, height=H, width=W, bigendian=0,
              frame_id="cam_optical"):
        from sensor_msgs.msg import Image

        return Image(header=self.header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
                     is_bigendian=bigendian, step=step, data=data)

    def rgb_image(self, stamp_ns: int, rgb: np.ndarray, frame_id="cam_optical"):
        return self.image(stamp_ns, "rgb8", rgb.tobytes(), rgb.shape[1] * 3, rgb.shape[0], rgb.shape[1],
                          frame_id=frame_id)

    def send(self, stamp: int, msg, info=None, compressed: bool = False) -> None:
        self.pub_info.publish(info if info is not None else self.camera_info(stamp))
        time.sleep(0.05)
        (self.pub_compressed if compressed else self.pub_image).publish(msg)


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


def start_node(context, model, name: str, namespace: str = "", **params):
    from rclpy.parameter import Parameter

    from spidepth_ros.ros.depth_node import DepthNode

    overrides = [Parameter("model_path", value=str(model)), Parameter("backend", value="onnxruntime"),
                 *[Parameter(k, value=v) for k, v in params.items()], *reliable_overrides(namespace)]
    node = DepthNode(name, namespace=namespace, context=context, parameter_overrides=overrides)
    node.start_up()
    return node


@pytest.fixture(scope="module")
def node_setup(ros_context, small_onnx):
    node = start_node(ros_context, small_onnx, "depth_node", depth_scale=DEPTH_SCALE, min_range=MIN_RANGE,
                      max_range=MAX_RANGE, diagnostics_period=0.5, input_timeout=1.0)
    harness = Harness(ros_context)
    spinner = Spinner(ros_context, node, harness.node)
    assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0, 20)
    yield node, harness
    spinner.stop()
    node.destroy_node()
    harness.node.destroy_node()


class HandOracle:
    """The model run by a raw ONNX Runtime session on a tensor built by hand from the sidecar's contract
    (channel order, input range, mean/std, area resize): shares no code with the node's Preprocessor."""

    def __init__(self, onnx_path) -> None:
        import json

        import onnxruntime as ort

        self.meta = json.loads(open(f"{onnx_path}.json").read())
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def depth(self, rgb: np.ndarray, scale: float = 1.0, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray:
        m = self.meta
        assert m["channel_order"] == "RGB" and list(m["input_range"]) == [0.0, 1.0]
        img = cv2.resize(rgb, (m["input_width"], m["input_height"]), interpolation=cv2.INTER_AREA)
        x = (img.astype(np.float32) / 255.0 - np.float32(m["input_mean"])) / np.float32(m["input_std"])
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        d = self.session.run([m["output_name"]], {m["input_name"]: x})[0][0, 0] * np.float32(scale)
        d[(d < lo) | (d > hi)] = np.nan
        return d


@pytest.fixture(scope="module")
def oracle(small_onnx):
    return HandOracle(small_onnx)


def depth_of(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), "<f4").reshape(msg.height, msg.width)


def cloud_array(msg) -> np.ndarray:
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": ["<f4"] * len(msg.fields),
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width)


def test_hand_oracle_catches_a_channel_swap_and_a_missing_normalisation(oracle):
    """The oracle is sensitive to exactly the mistakes it exists to catch: each changes the depth by more than ten
    times the tolerance (rtol 1e-5) the node tests compare with."""
    rgb = make_rgb(1)
    good = oracle.depth(rgb)
    assert np.max(np.abs(oracle.depth(rgb[..., ::-1].copy()) - good)) > 1e-4 * np.nanmax(good)
    raw = cv2.resize(rgb, (NET_W, NET_H), interpolation=cv2.INTER_AREA).astype(np.float32)
    unscaled = oracle.session.run(["depth"], {"image": np.ascontiguousarray(raw.transpose(2, 0, 1)[None])})[0][0, 0]
    assert np.max(np.abs(unscaled - good)) > 1e-3 * np.nanmax(good)


@pytest.mark.parametrize("encoding,seed,stamp", [("rgb8", 11, 10_000_000_101), ("bgr8_padded", 12, 10_000_000_102),
                                                 ("rgba8", 13, 10_000_000_103), ("mono16_be", 14, 10_000_000_104)])
def test_outputs_match_independent_computation(node_setup, oracle, encoding, seed, stamp):
    node, harness = node_setup
    rgb = make_rgb(seed)
    data, step, big, seen = encode_for_test(rgb, encoding)
    harness.send(stamp, harness.image(stamp, encoding.split("_")[0], data, step, bigendian=big))
    assert wait_for(lambda: stamp in harness.depth and stamp in harness.points and stamp in harness.info)

    # depth: 32FC1 metres, NaN invalid, the hand-made oracle's values
    dmsg = harness.depth[stamp]
    assert (dmsg.encoding, dmsg.width, dmsg.height, dmsg.header.frame_id) == ("32FC1", OUT_W, OUT_H, "cam_optical")
    depth = depth_of(dmsg)
    expected = oracle.depth(seen, DEPTH_SCALE, MIN_RANGE, MAX_RANGE)
    np.testing.assert_allclose(depth, expected, rtol=1e-5, equal_nan=True)
    assert np.isfinite(depth).sum() > 0.5 * depth.size

    # camera_info scaled to the published 160x48 (resize factor 0.4 in both axes)
    info = harness.info[stamp]
    assert (info.width, info.height) == (OUT_W, OUT_H)
    np.testing.assert_allclose([info.p[0], info.p[5], info.p[2], info.p[6]],
                               [FX * 0.4, FY * 0.4, centre_scaled(CX, 0.4), centre_scaled(CY, 0.4)], rtol=1e-9)
    assert list(info.d) == [0.0] * 5

    # cloud: depth_image_proc xyzrgb layout and the back-projection formula
    pmsg = harness.points[stamp]
    assert [(f.name, f.offset, f.datatype, f.count) for f in pmsg.fields] == \
        [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 16, 7, 1)]
    assert (pmsg.point_step, pmsg.row_step, pmsg.height, pmsg.width, pmsg.is_dense, pmsg.is_bigendian) == \
        (32, 32 * OUT_W, OUT_H, OUT_W, False, False)
    pts = cloud_array(pmsg)
    u, v = np.meshgrid(np.arange(OUT_W), np.arange(OUT_H))
    fx, fy, cx, cy = FX * 0.4, FY * 0.4, centre_scaled(CX, 0.4), centre_scaled(CY, 0.4)
    np.testing.assert_allclose(pts["z"], depth, equal_nan=True)
    np.testing.assert_allclose(pts["x"], (u - cx) * depth / fx, rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(pts["y"], (v - cy) * depth / fy, rtol=1e-5, atol=1e-6, equal_nan=True)
    # colour: the network-size image (area resize of the input) area-averaged to the published size
    net_size = cv2.resize(seen, (NET_W, NET_H), interpolation=cv2.INTER_AREA)
    small = cv2.resize(net_size, (OUT_W, OUT_H), interpolation=cv2.INTER_AREA).astype(np.uint32)
    packed = np.frombuffer(bytes(pmsg.data), np.uint8).reshape(OUT_H, OUT_W, 32)[..., 16:20]
    np.testing.assert_array_equal(packed[..., 0], small[..., 2])   # little-endian 0x00RRGGBB: b, g, r, 0
    np.testing.assert_array_equal(packed[..., 1], small[..., 1])
    np.testing.assert_array_equal(packed[..., 2], small[..., 0])
    assert not packed[..., 3].any()


def test_camera_info_for_another_size_is_rescaled_and_tx_kept(node_setup):
    """A camera_info for 800x240 with 400x120 images: intrinsics scaled by 0.5 first, then by 0.4; P's Tx (a right
    stereo camera, -fx*B) scales with fx."""
    node, harness = node_setup
    stamp = 11_000_000_000
    tx = -2 * FX * 0.12          # fx of the 800-wide calibration times a 0.12 m baseline
    info = harness.camera_info(stamp, fx=2 * FX, fy=2 * FY, cx=2 * CX + 0.5, cy=2 * CY + 0.5, width=2 * W,
                               height=2 * H, tx=tx)
    harness.send(stamp, harness.rgb_image(stamp, make_rgb(21)), info=info)
    assert wait_for(lambda: stamp in harness.info)
    p = np.array(harness.info[stamp].p).reshape(3, 4)
    np.testing.assert_allclose([p[0, 0], p[1, 1], p[0, 2], p[1, 2]],
                               [FX * 0.4, FY * 0.4, centre_scaled(2 * CX + 0.5, 0.2), centre_scaled(2 * CY + 0.5, 0.2)])
    assert p[0, 3] == pytest.approx(tx * 0.5 * 0.4)
    assert -p[0, 3] / p[0, 0] == pytest.approx(0.12)       # the baseline survives


def test_frame_id_override_runtime_parameters_and_stride(node_setup, oracle):
    from rclpy.parameter import Parameter

    node, harness = node_setup
    rgb = make_rgb(31)
    # an empty frame_id stays empty without an override (never invented)
    stamp = 12_000_000_001
    harness.send(stamp, harness.rgb_image(stamp, rgb, frame_id=""))
    assert wait_for(lambda: stamp in harness.depth)
    assert harness.depth[stamp].header.frame_id == ""

    results = node.set_parameters([Parameter("depth_scale", value=5.0), Parameter("cloud_stride", value=4),
                                   Parameter("min_range", value=0.0), Parameter("max_range", value=1e4)])
    assert all(r.successful for r in results)
    refused = node.set_parameters([Parameter("max_range", value=0.0)])       # not above min_range (0.0)
    assert not refused[0].successful and "must be greater than min_range" in refused[0].reason
    assert node.get_parameter("max_range").value == 1e4
    assert not node.set_parameters([Parameter("frame_id_override", value="x")])[0].successful   # read-only
    try:
        stamp = 12_000_000_002
        harness.send(stamp, harness.rgb_image(stamp, rgb))
        assert wait_for(lambda: stamp in harness.points and stamp in harness.depth)
        depth = depth_of(harness.depth[stamp])
        np.testing.assert_allclose(depth, oracle.depth(rgb, 5.0), rtol=1e-5)
        pmsg = harness.points[stamp]
        assert (pmsg.width, pmsg.height) == (OUT_W // 4, OUT_H // 4)
        pts = cloud_array(pmsg)
        np.testing.assert_allclose(pts["z"], depth[::4, ::4])
        u = np.arange(0, OUT_W, 4)[None, :]
        np.testing.assert_allclose(pts["x"], (u - centre_scaled(CX, 0.4)) * depth[::4, ::4] / (FX * 0.4), rtol=1e-5,
                                   atol=1e-6)
    finally:
        node.set_parameters([Parameter("depth_scale", value=DEPTH_SCALE), Parameter("cloud_stride", value=1),
                             Parameter("max_range", value=MAX_RANGE), Parameter("min_range", value=MIN_RANGE)])


def test_frame_id_override_fills_an_empty_frame(ros_context, small_onnx):
    node = start_node(ros_context, small_onnx, "depth_node_frame", namespace="frame",
                      frame_id_override="cam_override")
    harness = Harness(ros_context, namespace="frame")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
        stamp = 13_000_000_000
        harness.send(stamp, harness.rgb_image(stamp, make_rgb(3), frame_id=""))
        assert wait_for(lambda: stamp in harness.depth and stamp in harness.points)
        assert harness.depth[stamp].header.frame_id == "cam_override"
        assert harness.points[stamp].header.frame_id == "cam_override"
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def distorted_info(harness, stamp, d, model="plumb_bob"):
    return harness.camera_info(stamp, d=d, model=model)


def test_rectification_off_by_default_and_on_when_asked(node_setup, oracle):
    """image_rect is the convention: a distorted camera_info does not make the node undistort unless rectify is
    on; with it on, the network sees OpenCV's undistortion of the image (float maps, independent of ours)."""
    from rclpy.parameter import Parameter

    node, harness = node_setup
    d = [-0.25, 0.08, 0.001, -0.002, 0.0]
    rgb = make_rgb(41)
    stamp = 14_000_000_001
    harness.send(stamp, harness.rgb_image(stamp, rgb), info=distorted_info(harness, stamp, d))
    assert wait_for(lambda: stamp in harness.depth)
    np.testing.assert_allclose(depth_of(harness.depth[stamp]), oracle.depth(rgb, DEPTH_SCALE, MIN_RANGE, MAX_RANGE),
                               rtol=1e-5, equal_nan=True)

    assert node.set_parameters([Parameter("rectify", value=True)])[0].successful
    try:
        stamp = 14_000_000_002
        harness.send(stamp, harness.rgb_image(stamp, rgb), info=distorted_info(harness, stamp, d))
        assert wait_for(lambda: stamp in harness.depth and stamp in harness.info)
        k = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
        maps = cv2.initUndistortRectifyMap(k, np.array(d), np.eye(3), k, (W, H), cv2.CV_32FC1)
        rectified = cv2.remap(rgb, *maps, interpolation=cv2.INTER_LINEAR)
        got = depth_of(harness.depth[stamp])
        want = oracle.depth(rectified, DEPTH_SCALE, MIN_RANGE, MAX_RANGE)
        unrectified = oracle.depth(rgb, DEPTH_SCALE, MIN_RANGE, MAX_RANGE)
        ok = np.isfinite(got) & np.isfinite(want) & np.isfinite(unrectified)
        err_rect = np.median(np.abs(got[ok] - want[ok]) / want[ok])
        err_raw = np.median(np.abs(got[ok] - unrectified[ok]) / unrectified[ok])
        assert err_rect < 0.01 and err_raw > 3 * err_rect, (err_rect, err_raw)
        assert list(harness.info[stamp].d) == [0.0] * 5
    finally:
        node.set_parameters([Parameter("rectify", value=False)])


BAD_INFOS = ["three_coefficients", "zero_k", "huge_d", "nan_fx", "nan_p"]


@pytest.mark.parametrize("case", BAD_INFOS)
def test_bad_camera_info_is_refused_and_depth_continues(node_setup, oracle, case):
    from rclpy.parameter import Parameter

    node, harness = node_setup
    assert node.set_parameters([Parameter("rectify", value=True)])[0].successful
    try:
        refused0 = node.stats.camera_info_refused
        stamp = 15_000_000_000 + BAD_INFOS.index(case)
        info = {"three_coefficients": lambda: distorted_info(harness, stamp, [-0.2, 0.05, 0.01]),
                "zero_k": lambda: harness.camera_info(stamp, d=[-0.2, 0.05, 0, 0, 0], k=[0.0] * 9),
                "huge_d": lambda: distorted_info(harness, stamp, [1e30, 0, 0, 0, 0]),
                "nan_fx": lambda: harness.camera_info(stamp, fx=float("nan")),
                # a valid K beside a NaN in P: P is what depth/camera_info and the cloud would use
                "nan_p": lambda: harness.camera_info(stamp, p=[FX, 0.0, CX, float("nan"), 0.0, FY, CY, 0.0, 0.0,
                                                               0.0, 1.0, 0.0])}[case]()
        rgb = make_rgb(51)
        harness.send(stamp, harness.rgb_image(stamp, rgb), info=info)
        assert wait_for(lambda: stamp in harness.depth)
        time.sleep(0.3)
        assert stamp not in harness.points and stamp not in harness.info
        assert node.stats.camera_info_refused > refused0
        np.testing.assert_allclose(depth_of(harness.depth[stamp]),
                                   oracle.depth(rgb, DEPTH_SCALE, MIN_RANGE, MAX_RANGE), rtol=1e-5, equal_nan=True)
        from diagnostic_msgs.msg import DiagnosticStatus

        assert node.diagnostic_status().level == DiagnosticStatus.WARN      # naming the camera_info problem
        assert "camera_info" in node.diagnostic_status().message
    finally:
        node.set_parameters([Parameter("rectify", value=False)])
    # a good camera_info brings the cloud back
    stamp = 15_100_000_000 + stamp % 10
    harness.send(stamp, harness.rgb_image(stamp, make_rgb(52)))
    assert wait_for(lambda: stamp in harness.points)


def test_compressed_input_and_its_pixel_limit(ros_context, small_onnx, oracle, capfd):
    from sensor_msgs.msg import CompressedImage

    node = start_node(ros_context, small_onnx, "depth_node_compressed", namespace="compressed",
                      input_transport="compressed", min_range=0.0, max_range=1000.0, warn_throttle=0.0)
    harness = Harness(ros_context, namespace="compressed")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: harness.pub_compressed.get_subscription_count() > 0)
        rgb = make_rgb(5)
        ok, png = cv2.imencode(".png", rgb[..., ::-1])
        stamp = 20_000_000_000
        harness.send(stamp, CompressedImage(header=harness.header(stamp), format="rgb8; png compressed bgr8",
                                            data=png.tobytes()), compressed=True)
        assert wait_for(lambda: stamp in harness.depth)
        np.testing.assert_allclose(depth_of(harness.depth[stamp]), oracle.depth(rgb), rtol=1e-5)

        # a small PNG whose header says 20000x20000: refused from the header, nothing decoded
        ok, bomb = cv2.imencode(".png", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert len(bomb) < 2_000_000
        bad0 = node.stats.bad
        stamp = 20_000_000_001
        t0 = time.monotonic()
        harness.send(stamp, CompressedImage(header=harness.header(stamp), format="png", data=bomb.tobytes()),
                     compressed=True)
        assert wait_for(lambda: node.stats.bad > bad0)
        assert stamp not in harness.depth
        stamp = 20_000_000_002
        harness.send(stamp, CompressedImage(header=harness.header(stamp), format="png", data=png.tobytes()),
                     compressed=True)
        assert wait_for(lambda: stamp in harness.depth)
        assert wait_for(lambda: node.stats.processed == 2) and time.monotonic() - t0 < 60   # counted after publish

        # under the pixel limit but 768 MB as RGB (16000x16000, a few hundred KB as PNG): refused by the default
        # max_image_bytes (8192x8192 RGB) from the header, the log naming the limit; a truncated JPEG is said to
        # be truncated, not of an unsupported format
        ok, wide = cv2.imencode(".png", np.zeros((16000, 16000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert len(wide) < 1_000_000
        ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1])
        capfd.readouterr()
        for i, (fmt, data) in enumerate((("png", wide.tobytes()), ("jpeg", jpg.tobytes()[: len(jpg) // 2]))):
            bad0 = node.stats.bad
            stamp = 20_000_000_010 + i
            harness.send(stamp, CompressedImage(header=harness.header(stamp), format=fmt, data=data),
                         compressed=True)
            assert wait_for(lambda: node.stats.bad > bad0)
            time.sleep(0.3)
            assert stamp not in harness.depth
        err = capfd.readouterr().err
        assert "16000x16000 png (1 channel, 8 bit): decoding needs 768 MB, over max_image_bytes 201 MB" in err, err
        assert "truncated JPEG" in err and "only jpeg and png" not in err, err
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_center_crop_and_input_resolution(ros_context, small_onnx, oracle):
    """crop=center on a 400x200 image (the network's 10:3 needs rows 40..159) and output_resolution=input: depth at
    400x200, NaN outside the crop, camera_info = the input's."""
    node = start_node(ros_context, small_onnx, "depth_node_crop", namespace="crop", crop="center",
                      output_resolution="input", min_range=0.0, max_range=1e4)
    harness = Harness(ros_context, namespace="crop")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
        rgb = make_rgb(61, 400, 200)
        stamp = 21_000_000_000
        harness.send(stamp, harness.rgb_image(stamp, rgb),
                     info=harness.camera_info(stamp, width=400, height=200, cy=99.5))
        assert wait_for(lambda: stamp in harness.depth and stamp in harness.info and stamp in harness.points)
        depth = depth_of(harness.depth[stamp])
        assert depth.shape == (200, 400)
        assert np.isnan(depth[:40]).all() and np.isnan(depth[160:]).all()
        expected = cv2.resize(oracle.depth(rgb[40:160]), (400, 120), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(depth[40:160], expected, rtol=1e-5)
        info = harness.info[stamp]
        assert (info.width, info.height) == (400, 200)
        np.testing.assert_allclose([info.p[0], info.p[5], info.p[2], info.p[6]], [FX, FY, CX, 99.5])
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_bad_messages_are_dropped_and_node_survives(node_setup, oracle):
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
    assert wait_for(lambda: node.stats.bad - bad_before == 4, 10)
    assert not any(30_000_000_001 <= k <= 30_000_000_004 for k in harness.depth)

    stamp = 32_000_000_000
    harness.send(stamp, harness.rgb_image(stamp, rgb))
    assert wait_for(lambda: stamp in harness.points)
    np.testing.assert_allclose(depth_of(harness.depth[stamp]), oracle.depth(rgb, DEPTH_SCALE, MIN_RANGE, MAX_RANGE),
                               rtol=1e-5, equal_nan=True)


def test_burst_latest_wins(node_setup):
    node, harness = node_setup
    received0, processed0, dropped0 = node.stats.received, node.stats.processed, node.stats.dropped
    rgb = make_rgb(7)
    harness.pub_info.publish(harness.camera_info(40_000_000_000))
    stamps = [40_000_000_000 + i for i in range(40)]
    for s in stamps:
        harness.pub_image.publish(harness.rgb_image(s, rgb))
    assert wait_for(lambda: stamps[-1] in harness.depth, 20), "the newest frame of a burst must be processed"
    time.sleep(0.5)
    received = node.stats.received - received0
    processed = node.stats.processed - processed0
    dropped = node.stats.dropped - dropped0
    # the input's history (SensorDataQoS, keep last 5) and the one-slot mailbox both keep the newest frames:
    # inference (tens of ms) is slower than the burst, so frames were replaced instead of queued
    assert 5 <= received <= len(stamps)
    assert dropped > 0 and processed + dropped == received
    assert sum(s in harness.depth for s in stamps) == processed


def test_input_gaps_are_counted_from_stamps(node_setup):
    node, harness = node_setup
    missing0 = node.stats.gaps.missing
    rgb = make_rgb(8)
    # 10 Hz stamps with frames 5, 6 and 9 never sent: 3 missing
    stamps = [50_000_000_000 + i * 100_000_000 for i in range(12) if i not in (5, 6, 9)]
    for s in stamps:
        harness.pub_image.publish(harness.rgb_image(s, rgb))
        time.sleep(0.12)
    assert wait_for(lambda: node.stats.gaps.missing - missing0 >= 3, 5)
    assert node.stats.gaps.missing - missing0 == 3


def test_missing_camera_info_publishes_depth_only(ros_context, small_onnx):
    from rclpy.node import Node
    from sensor_msgs.msg import Image, PointCloud2

    node = start_node(ros_context, small_onnx, "depth_node_noinfo", namespace="noinfo")
    peer = Node("noinfo_peer", namespace="noinfo", context=ros_context)
    got_depth, got_points = [], []
    pub = peer.create_publisher(Image, "image", 10)
    peer.create_subscription(Image, "depth/image", got_depth.append, 10)
    peer.create_subscription(PointCloud2, "depth/points", got_points.append, 10)
    spinner = Spinner(ros_context, node, peer)
    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0)
        rgb = make_rgb(9)
        for _ in range(3):
            pub.publish(Image(height=H, width=W, encoding="rgb8", step=W * 3, data=rgb.tobytes()))
            time.sleep(0.3)
        assert wait_for(lambda: len(got_depth) == 3)
        time.sleep(0.3)
        assert got_points == []          # (the warning that says why: test_no_camera_info_warning_...)
    finally:
        spinner.stop()
        node.destroy_node()
        peer.destroy_node()


def test_lazy_unsubscribes_the_input_without_listeners(ros_context, small_onnx):
    """lazy: the image is not even deserialised while nobody listens (image_pipeline's connect callbacks)."""
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    node = start_node(ros_context, small_onnx, "depth_node_lazy", namespace="lazy")
    peer = Node("lazy_peer", namespace="lazy", context=ros_context)
    pub = peer.create_publisher(Image, "image", 10)
    spinner = Spinner(ros_context, node, peer)
    try:
        time.sleep(1.5)
        assert not node.input_subscribed and pub.get_subscription_count() == 0
        for i in range(3):
            pub.publish(Image(height=H, width=W, encoding="rgb8", step=W * 3, data=make_rgb(i).tobytes()))
        time.sleep(0.3)
        assert node.stats.received == 0
        assert "idle" in node.diagnostic_status().message
        got = []
        sub = peer.create_subscription(Image, "depth/colored", got.append, 10)
        assert wait_for(lambda: node.input_subscribed and pub.get_subscription_count() == 1)
        pub.publish(Image(height=H, width=W, encoding="rgb8", step=W * 3, data=make_rgb(4).tobytes()))
        assert wait_for(lambda: len(got) == 1)
        peer.destroy_subscription(sub)
        assert wait_for(lambda: not node.input_subscribed)
    finally:
        spinner.stop()
        node.destroy_node()
        peer.destroy_node()


def test_diagnostics_report_counts_and_go_stale(node_setup):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    node, harness = node_setup
    got = []
    sub = harness.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    try:
        stamps = [60_000_000_000 + i * 200_000_000 for i in range(4)]       # 5 Hz for 0.6 s
        for stamp in stamps:
            harness.send(stamp, harness.rgb_image(stamp, make_rgb(2)))
            last_sent = time.monotonic()           # the node receives each image after this
            time.sleep(0.15)
        assert wait_for(lambda: all(s in harness.depth for s in stamps))
        assert wait_for(lambda: any(s.name.startswith("/depth_node") for m in got for s in m.status), 10)
        status = node.diagnostic_status()
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.OK and status.message == "running"
        # 3 intervals over the ~0.6-1 s from the first of them to now: between 1 and 6 Hz
        assert int(values["processed"]) == node.stats.processed and 1.0 < float(values["rate_hz"]) < 6.0
        assert values["state"] == "active" and float(values["depth_scale"]) == DEPTH_SCALE
        # input_timeout is 1 s: after 2.5 s without images the report says so, and the window rate has decayed
        time.sleep(2.5)
        status = node.diagnostic_status()
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN and status.message.startswith("no images for")
        assert float(values["seconds_since_last_image"]) >= 2.4
        assert float(values["input_rate_hz"]) < 2.0        # decaying (frames of earlier tests may still count)
        # past the rate window (which forgets old images) it still counts from the last image, not from the
        # node's activation (at least the 0.8 s of frames above earlier)
        from spidepth_ros.ros.depth_node import RATE_WINDOW_S

        time.sleep(RATE_WINDOW_S + 0.5 - 2.5)
        status = node.diagnostic_status()
        values = {kv.key: kv.value for kv in status.values}
        since = float(values["seconds_since_last_image"])
        assert RATE_WINDOW_S < since <= time.monotonic() - last_sent + 0.05, since      # printed to 0.1 s
        assert since < time.monotonic() - node._activated_at - 0.5
        assert float(values["input_rate_hz"]) == 0.0        # every image has left the window
        assert status.message == f"no images for {since:.0f} s"
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
        harness.send(stamp, harness.rgb_image(stamp, make_rgb(11)))
        assert wait_for(lambda: stamp in harness.depth, 20)
        time.sleep(0.2)
    finally:
        logger.set_level(LoggingSeverity.INFO)
    line = next(x for x in capfd.readouterr().err.splitlines() if "frame 71.000000123" in x)
    assert f"{W}x{H}:" in line and "inference" in line and "preprocess" in line
    stamp2 = 72_000_000_000
    harness.send(stamp2, harness.rgb_image(stamp2, make_rgb(12)))
    assert wait_for(lambda: stamp2 in harness.depth, 20)
    time.sleep(0.2)
    assert "frame 72.000000000" not in capfd.readouterr().err        # info level: no per-frame line


def test_wrong_shape_model_is_refused_at_configure(ros_context, wrong_shape_onnx):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from spidepth_ros.ros.depth_node import DepthNode, StartupError

    node = DepthNode("depth_node_wrong", namespace="wrong", context=ros_context,
                     parameter_overrides=[Parameter("model_path", value=str(wrong_shape_onnx)),
                                          Parameter("backend", value="onnxruntime")])
    try:
        with pytest.raises(StartupError, match=r"\(1, 1, 96, 320\).*promises \(1, 1, 48, 160\)"):
            node.start_up()
        assert node.trigger_activate() != TransitionCallbackReturn.SUCCESS      # still unconfigured
        assert node.pipeline is None and "promises" in node.diagnostic_status().message
    finally:
        node.destroy_node()


def test_model_hot_swap_loses_no_frame_and_a_bad_model_keeps_the_old(ros_context, small_onnx, second_onnx,
                                                                       wrong_shape_onnx):
    """Frames stream at 5 Hz while model_path changes: every frame gets depth, from the old model before the swap
    and the new one after; the new model's own depth_scale (3.0) applies since the parameter is 0 (the model's).
    A wrong model is refused, the parameter goes back, and the running model keeps publishing."""
    from rclpy.parameter import Parameter

    node = start_node(ros_context, small_onnx, "depth_node_swap", namespace="swap", min_range=0.0, max_range=1e4)
    harness = Harness(ros_context, namespace="swap")
    spinner = Spinner(ros_context, node, harness.node)
    first, second = HandOracle(small_onnx), HandOracle(second_onnx)
    rgb = make_rgb(71)
    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
        stamps = [80_000_000_000 + i for i in range(25)]
        for i, stamp in enumerate(stamps):
            if i == 5:
                assert node.set_parameters([Parameter("model_path", value=str(second_onnx))])[0].successful
            harness.send(stamp, harness.rgb_image(stamp, rgb))
            time.sleep(0.15)
        assert wait_for(lambda: all(s in harness.depth for s in stamps)), \
            f"{sum(s in harness.depth for s in stamps)} of {len(stamps)} frames got depth"
        assert node.stats.dropped == 0 and node.stats.bad == 0
        old, new = first.depth(rgb), second.depth(rgb, 3.0)
        which = []
        for s in stamps:
            d = depth_of(harness.depth[s])
            which.append("old" if np.allclose(d, old, rtol=1e-5) else "new" if np.allclose(d, new, rtol=1e-5)
                         else "neither")
        assert "neither" not in which and which[:5] == ["old"] * 5 and which[-1] == "new"
        assert which == sorted(which, key=lambda x: x == "new")              # old ... old new ... new
        assert node.active_model_path == str(second_onnx)

        assert node.set_parameters([Parameter("model_path", value=str(wrong_shape_onnx))])[0].successful
        assert wait_for(lambda: node.get_parameter("model_path").value == str(second_onnx), 20)
        assert node.models_refused == 1 and "promises" in node.last_model_refusal
        stamp = 81_000_000_000
        harness.send(stamp, harness.rgb_image(stamp, rgb))
        assert wait_for(lambda: stamp in harness.depth)
        np.testing.assert_allclose(depth_of(harness.depth[stamp]), new, rtol=1e-5)
        missing = node.set_parameters([Parameter("model_path", value="/no/such/model.onnx")])[0]
        assert not missing.successful and "does not exist" in missing.reason
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_hot_swap_races_leave_model_path_naming_the_running_model(ros_context, small_onnx, second_onnx,
                                                                   small_checkpoint, tmp_path):
    """model_path always ends up naming the model that runs: a second change while one loads is refused with the
    reason, a load that fails at once puts the old path back (5 of 5 times), a file that cannot be a model is
    refused before the set returns, and /diagnostics keeps only the last refusal with a count."""
    import shutil

    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.parameter import Parameter

    node = start_node(ros_context, small_onnx, "depth_node_race", namespace="race", min_range=0.0, max_range=1e4)
    harness = Harness(ros_context, namespace="race")
    spinner = Spinner(ros_context, node, harness.node)
    first, second = str(small_onnx), str(second_onnx)

    def set_model(path):
        return node.set_parameters([Parameter("model_path", value=str(path))])[0]

    def settled():
        return wait_for(lambda: not node._loading_path and node.get_parameter("model_path").value ==
                        node.active_model_path, 20)

    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
        # m2, then at once back to m1: the second change is refused while m2 loads
        assert set_model(second).successful
        back = set_model(first)
        assert not back.successful and "still loading" in back.reason and second in back.reason
        assert settled() and node.active_model_path == second == node.get_parameter("model_path").value
        rgb = make_rgb(91)
        stamp = 90_000_000_000
        harness.send(stamp, harness.rgb_image(stamp, rgb))
        assert wait_for(lambda: stamp in harness.depth)
        np.testing.assert_allclose(depth_of(harness.depth[stamp]), HandOracle(second_onnx).depth(rgb, 3.0), rtol=1e-5)

        # a checkpoint under backend onnxruntime passes the file checks and fails the instant the loader starts
        messages = []
        for attempt in range(5):
            assert set_model(small_checkpoint).successful
            assert settled(), f"attempt {attempt}: model_path {node.get_parameter('model_path').value}"
            assert node.get_parameter("model_path").value == second == node.active_model_path
            messages.append(node.diagnostic_status().message)
        status = node.diagnostic_status()
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN and values["models_refused"] == "5"
        assert "needs an .onnx file" in values["last_model_refusal"] and "refused" not in values["model"]
        assert len(messages[-1]) == len(messages[0]) and messages[-1].count("needs an .onnx") == 1    # bounded

        # refused before the answer, with the reason; nothing is loaded and the parameter keeps its value
        (tmp_path / "garbage.onnx").write_bytes(b"this is not a protobuf" * 100)
        (tmp_path / "empty.onnx").write_bytes(b"")
        (tmp_path / "notes.txt").write_text("hello")
        (tmp_path / "garbage.pt").write_bytes(b"not a zip" * 50)
        shutil.copy(f"{second}.json", tmp_path / "copied.onnx.json")
        shutil.copy(tmp_path / "garbage.onnx", tmp_path / "copied.onnx")
        for path, reason in ((tmp_path / "garbage.onnx", "has no sidecar"), (tmp_path / "empty.onnx", "empty"),
                             (tmp_path / "copied.onnx", "does not match its sidecar"),
                             (tmp_path / "notes.txt", "not a model"), (tmp_path / "garbage.pt", "not a PyTorch"),
                             (tmp_path / "missing.onnx", "does not exist")):
            result = set_model(path)
            assert not result.successful and reason in result.reason and str(path) in result.reason, result.reason
            assert node.get_parameter("model_path").value == second and not node._loading_path
        assert node.models_refused == 5
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_no_camera_info_warning_while_camera_info_follows_each_image(ros_context, small_onnx, capfd):
    """A camera whose camera_info lands just after its image (the first image often arrives first) gets no
    'no camera_info' warning; without any camera_info the warning comes once the grace period has passed."""
    from spidepth_ros.ros.depth_node import CAMERA_INFO_GRACE_S

    node = start_node(ros_context, small_onnx, "depth_node_late_info", namespace="late_info")
    harness = Harness(ros_context, namespace="late_info")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0
                        and harness.pub_info.get_subscription_count() > 0)
        stamps = [100_000_000_000 + i * 100_000_000 for i in range(3)]
        for stamp in stamps:
            harness.pub_image.publish(harness.rgb_image(stamp, make_rgb(5)))
            time.sleep(0.1)
            harness.pub_info.publish(harness.camera_info(stamp))
        assert wait_for(lambda: all(s in harness.depth for s in stamps))
        assert wait_for(lambda: stamps[-1] in harness.points or stamps[-2] in harness.points)   # info arrived
        assert stamps[0] not in harness.points      # the first image really came before any camera_info
        time.sleep(0.2)
        assert "no_info" not in node._warned_once
        assert "no camera_info" not in capfd.readouterr().err
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()
    node = start_node(ros_context, small_onnx, "depth_node_no_info", namespace="no_info")
    harness = Harness(ros_context, namespace="no_info")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert wait_for(lambda: node.input_subscribed and harness.pub_image.get_subscription_count() > 0)
        t0 = time.monotonic()
        i = 0
        while "no_info" not in node._warned_once and time.monotonic() - t0 < CAMERA_INFO_GRACE_S + 10:
            harness.pub_image.publish(harness.rgb_image(101_000_000_000 + i, make_rgb(6)))
            i += 1
            time.sleep(0.2)
        assert "no_info" in node._warned_once and time.monotonic() - t0 >= CAMERA_INFO_GRACE_S
        assert "no camera_info received in" in capfd.readouterr().err
        assert "no camera_info" in node.diagnostic_status().message
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_two_cameras_one_node_match_single_camera_inference(ros_context, small_checkpoint, tmp_path):
    """cameras: [left, right]: each camera's topics live under its namespace, each output is exactly what the
    model gives for that camera's image alone (hand oracle), frames that arrive together are inferred as one
    batch, and /diagnostics has one status per camera."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter

    from spidepth_ros.export import export_onnx

    onnx_path, _ = export_onnx(small_checkpoint, tmp_path / "dyn.onnx", dynamic_batch=True, max_batch=4)
    extra = {f"qos_overrides./multi/{cam}/{topic}.subscription.reliability": "reliable"
             for cam in ("left", "right") for topic in ("image", "camera_info")}
    node = start_node(ros_context, onnx_path, "depth_node", namespace="multi", min_range=0.0, max_range=1e4,
                      cameras=["left", "right"], diagnostics_period=0.3, **extra)
    left, right = Harness(ros_context, namespace="multi/left"), Harness(ros_context, namespace="multi/right")
    got = []
    left.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    spinner = Spinner(ros_context, node, left.node, right.node)
    oracle = HandOracle(onnx_path)
    try:
        assert [c.prefix for c in node.cameras] == ["left", "right"]
        assert wait_for(lambda: all(c.input_sub is not None for c in node.cameras) and
                        left.pub_image.get_subscription_count() > 0 and right.pub_image.get_subscription_count() > 0)
        images = {}
        for i in range(6):
            stamp = 120_000_000_000 + i * 100_000_000
            for k, harness in enumerate((left, right)):
                rgb = make_rgb(200 + 2 * i + k)
                images[(k, stamp)] = rgb
                harness.pub_info.publish(harness.camera_info(stamp))
            time.sleep(0.05)
            for k, harness in enumerate((left, right)):       # both images at once: one batch when free
                harness.pub_image.publish(harness.rgb_image(stamp, images[(k, stamp)]))
            time.sleep(0.25)
        stamps = sorted({s for _, s in images})
        assert wait_for(lambda: all(s in left.depth and s in right.depth for s in stamps[-3:]))
        for (k, stamp), rgb in images.items():
            harness = (left, right)[k]
            if stamp in harness.depth:
                np.testing.assert_allclose(depth_of(harness.depth[stamp]), oracle.depth(rgb), rtol=1e-5, atol=1e-6)
        assert left.info[stamps[-1]].header.frame_id == "cam_optical" and stamps[-1] in right.points
        assert sum(c.stats.batched for c in node.cameras) > 0, "simultaneous frames were never batched"
        assert wait_for(lambda: any(len(m.status) == 2 for m in got), 5)
        names = {st.name for m in got for st in m.status}
        assert {"/multi/depth_node: spidepth depth left", "/multi/depth_node: spidepth depth right"} <= names
        assert node.set_parameters([Parameter("cameras", value=["x"])])[0].successful is False     # read-only
    finally:
        spinner.stop()
        node.destroy_node()
        left.node.destroy_node()
        right.node.destroy_node()


def test_camera_height_from_tf_where_tf2_ros_exists(ros_context, small_onnx):
    """scale_source camera_height with base_frame: the camera's height is read from TF (a static transform
    base_footprint -> cam_optical 1.5 m up); without tf2_ros (this machine) the parameter path warns and keeps the
    model's scale."""
    from spidepth_ros.synth import CAMERA_HEIGHT, SynthConfig, render_sequence

    from rclpy.parameter import Parameter

    # started on the model's scale; scale_source switched at run time must start the TF listener too
    node = start_node(ros_context, small_onnx, "depth_node", namespace="tf_height", base_frame="base_footprint",
                      min_range=0.0, max_range=1e4)
    harness = Harness(ros_context, namespace="tf_height")
    spinner = Spinner(ros_context, node, harness.node)
    try:
        assert node.set_parameters([Parameter("scale_source", value="camera_height")])[0].successful
        try:
            import tf2_ros  # noqa: F401
        except ImportError:
            assert "no_tf" in node._warned_once and node._camera_height("cam_optical") is None
            pytest.skip("tf2_ros is not installed here: the TF path is checked where it is")
        from geometry_msgs.msg import TransformStamped
        from tf2_ros.static_transform_broadcaster import StaticTransformBroadcaster

        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = "base_footprint", "cam_optical"
        tf.transform.translation.z = CAMERA_HEIGHT
        # optical frame (z forward, y down) of a level camera: x_opt = -y_base, y_opt = -z_base, z_opt = x_base
        tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = \
            -0.5, 0.5, -0.5, 0.5
        StaticTransformBroadcaster(harness.node).sendTransform(tf)
        assert wait_for(lambda: node._camera_height("cam_optical") == pytest.approx(CAMERA_HEIGHT), 10)
        cfg = SynthConfig(width=W, height=H, frames=3, seed=9)
        for i, frame in enumerate(render_sequence(cfg)):
            stamp = 130_000_000_000 + i
            harness.send(stamp, harness.rgb_image(stamp, frame.rgb), info=harness.camera_info(
                stamp, fx=cfg.intrinsics.fx, fy=cfg.intrinsics.fy, cx=cfg.intrinsics.cx, cy=cfg.intrinsics.cy))
            assert wait_for(lambda: stamp in harness.depth)
        assert node.cameras[0].scale_report is not None and node.cameras[0].scale_report.age_s is not None
    finally:
        spinner.stop()
        node.destroy_node()
        harness.node.destroy_node()


def test_a_callback_that_raises_does_not_stop_the_executor(ros_context):
    """The node's spin loop logs a callback's exception and goes on (a save_adapted bug once took the whole
    executor thread, and with it every camera's depth): a timer that fails on its first tick keeps ticking."""
    import threading

    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from spidepth_ros.ros.depth_node import _spin

    node = Node("spin_resilience", context=ros_context)
    ticks, logged = [], []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 1:
            raise RuntimeError("first tick fails")

    class Logger:
        def error(self, message, **kwargs):
            logged.append(message)

    node.create_timer(0.05, tick)
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(executor, stop, Logger()), daemon=True)
    spinner.start()
    try:
        assert wait_for(lambda: len(ticks) >= 5, 10), len(ticks)
        assert spinner.is_alive()
        assert len(logged) == 1 and "first tick fails" in logged[0] and "Traceback" in logged[0], logged
    finally:
        stop.set()
        spinner.join(timeout=5)
        executor.remove_node(node)
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
