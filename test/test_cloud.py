"""PointCloud2 building: depth_image_proc layout, formula, strides; sensor_msgs_py as oracle where present."""
from __future__ import annotations

import numpy as np
import pytest

from spidepth_ros.cloud import CloudBuilder, pack_rgb
from spidepth_ros.geometry import PinholeIntrinsics


def test_layout_and_values(rng):
    intr = PinholeIntrinsics(50.0, 60.0, 9.5, 4.5, 20, 10)
    depth = rng.uniform(1, 10, (10, 20)).astype(np.float32)
    depth[2, 3] = np.nan
    rgb = (rng.random((10, 20, 3)) * 255).astype(np.uint8)
    cloud = CloudBuilder().build(depth, intr, 1, rgb)
    assert (cloud.point_step, cloud.row_step, cloud.height, cloud.width) == (32, 640, 10, 20)
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [("x", 0, 7), ("y", 4, 7), ("z", 8, 7),
                                                                      ("rgb", 16, 7)]
    raw = np.frombuffer(cloud.tobytes(), np.uint8).reshape(10, 20, 32)
    xyz = raw[..., :12].copy().view("<f4")
    v, u = 7, 13
    assert xyz[v, u] == pytest.approx([(u - 9.5) * depth[v, u] / 50, (v - 4.5) * depth[v, u] / 60, depth[v, u]])
    assert np.all(np.isnan(xyz[2, 3]))
    assert raw[v, u, 16:20].tolist() == [rgb[v, u, 2], rgb[v, u, 1], rgb[v, u, 0], 0]
    assert not raw[..., 12:16].any() and not raw[..., 20:].any()        # padding is zero


def test_xyz_only_and_stride(rng):
    intr = PinholeIntrinsics(50.0, 50.0, 10.0, 5.0, 21, 11)
    depth = rng.uniform(1, 10, (11, 21)).astype(np.float32)
    cloud = CloudBuilder().build(depth, intr, 5)
    assert (cloud.point_step, cloud.height, cloud.width, len(cloud.fields)) == (16, 3, 5, 3)
    xyz = np.frombuffer(cloud.tobytes(), "<f4").reshape(3, 5, 4)
    assert xyz[2, 4, :3] == pytest.approx([(20 - 10) * depth[10, 20] / 50, (10 - 5) * depth[10, 20] / 50,
                                           depth[10, 20]])


def packed_by_formula(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def test_pack_rgb(rng):
    assert pack_rgb(np.array([0x12, 0x34, 0x56], np.uint8)) == 0x123456
    rgb = (rng.random((5, 7, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pack_rgb(rgb), packed_by_formula(rgb))
    strided = rgb[::2, ::3]
    out = np.empty(strided.shape[:2], np.uint32)
    assert pack_rgb(strided, out) is out
    np.testing.assert_array_equal(out, packed_by_formula(strided))


def test_size_mismatch_is_refused():
    intr = PinholeIntrinsics(50.0, 50.0, 10.0, 5.0, 20, 10)
    with pytest.raises(ValueError, match="intrinsics are for 20x10"):
        CloudBuilder().build(np.ones((5, 5), np.float32), intr)


def test_matches_sensor_msgs_py(rng):
    """sensor_msgs_py (the ROS reader) decodes every field of every point of our cloud to the formula's values."""
    pc2 = pytest.importorskip("sensor_msgs_py.point_cloud2", reason="sensor_msgs_py is only in a ROS install")
    from std_msgs.msg import Header

    from spidepth_ros.ros.conversions import cloud_msg

    intr = PinholeIntrinsics(50.0, 60.0, 9.5, 4.5, 20, 10)
    depth = rng.uniform(1, 10, (10, 20)).astype(np.float32)
    depth[3, 4:7] = np.nan
    rgb = (rng.random((10, 20, 3)) * 255).astype(np.uint8)
    msg = cloud_msg(Header(frame_id="cam"), CloudBuilder().build(depth, intr, 1, rgb))
    pts = pc2.read_points(msg, field_names=("x", "y", "z", "rgb"), skip_nans=False)
    assert len(pts) == 200
    u, v = np.meshgrid(np.arange(20), np.arange(10))
    np.testing.assert_array_equal(np.asarray(pts["z"]), depth.ravel())
    np.testing.assert_allclose(np.asarray(pts["x"]), ((u - 9.5) * depth / 50.0).ravel(), rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(np.asarray(pts["y"]), ((v - 4.5) * depth / 60.0).ravel(), rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(pts["rgb"], np.float32).view(np.uint32),
                                  packed_by_formula(rgb).ravel().view(np.uint32))
    assert len(pc2.read_points_list(msg, field_names=("x", "y", "z"), skip_nans=True)) == 197


def test_reused_builder_matches_fresh_builds(rng):
    """One builder over frames of changing content, stride and colour gives what fresh builders give."""
    intr = PinholeIntrinsics(40.0, 45.0, 15.5, 7.5, 32, 16)
    builder = CloudBuilder()
    for frame, (stride, colour) in enumerate([(1, True), (1, True), (2, False), (1, True), (1, False)]):
        depth = rng.uniform(0.5, 20, (16, 32)).astype(np.float32)
        depth[frame, :frame + 1] = np.nan
        rgb = (rng.random((16, 32, 3)) * 255).astype(np.uint8) if colour else None
        got = builder.build(depth, intr, stride, rgb).tobytes()
        assert got == CloudBuilder().build(depth, intr, stride, rgb).tobytes()
        raw = np.frombuffer(got, np.uint8).reshape(16 // stride, 32 // stride, -1)
        if colour:
            expected = packed_by_formula(rgb).view(np.uint8).reshape(16, 32, 4)
            np.testing.assert_array_equal(raw[..., 16:20], expected)
        assert not raw[..., 12:16].any()
