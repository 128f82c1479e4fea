"""rclpy message <-> numpy conversions (thin: the formats live in :mod:`spidepth_ros.encodings`).

Outputs are built with ``data`` passed to the constructor as bytes/array: assigning large buffers to
``msg.data`` element-wise is what makes rclpy slow (ros2/common_interfaces#177).
"""
from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from ..cloud import CloudBuffer
from ..encodings import DEFAULT_MAX_IMAGE_BYTES, decode_color_image, decode_compressed, encode_image
from ..geometry import PinholeIntrinsics


def rgb_from_image_msg(msg: Image, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """sensor_msgs/Image (any supported colour encoding, padded rows, either endianness) -> RGB uint8."""
    return decode_color_image(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data,
                              max_bytes=max_bytes)


def rgb_from_compressed_msg(msg: CompressedImage, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> RGB uint8; over ``max_bytes`` decoded it is refused unread."""
    return decode_compressed(msg.format, msg.data, max_bytes=max_bytes)


def _bytes_field(data: bytes) -> array.array:
    buf = array.array("B")
    buf.frombytes(data)
    return buf


def image_msg(header, arr: np.ndarray, encoding: str) -> Image:
    h, w, enc, big, step, data = encode_image(arr, encoding)
    return Image(header=header, height=h, width=w, encoding=enc, is_bigendian=big, step=step,
                 data=_bytes_field(data))


def camera_info_msg(header, intr: PinholeIntrinsics, tx: float = 0.0, ty: float = 0.0) -> CameraInfo:
    """CameraInfo of a rectified depth image: K = P[:3,:3], D = 0, R = I, no binning/ROI.

    ``tx``/``ty`` are P[0,3]/P[1,3] at this image's scale (-fx*baseline for the right camera of a stereo pair):
    kept, so that P is the input's P scaled exactly.
    """
    k = intr.matrix()
    p = np.zeros((3, 4))
    p[:3, :3] = k
    p[0, 3], p[1, 3] = tx, ty
    return CameraInfo(header=header, height=intr.height, width=intr.width, distortion_model="plumb_bob",
                      d=[0.0] * 5, k=k.ravel().tolist(), r=np.eye(3).ravel().tolist(), p=p.ravel().tolist())


def cloud_msg(header, cloud: CloudBuffer) -> PointCloud2:
    fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in cloud.fields]
    return PointCloud2(header=header, height=cloud.height, width=cloud.width, fields=fields, is_bigendian=False,
                       point_step=cloud.point_step, row_step=cloud.row_step, is_dense=False,
                       data=_bytes_field(cloud.tobytes()))
