"""Organized point clouds in depth_image_proc's exact byte layout (numpy; no rclpy).

* xyz:    fields x, y, z FLOAT32 at offsets 0, 4, 8; ``point_step`` 16 (4 bytes padding).
* xyzrgb: plus ``rgb`` FLOAT32 at offset 16 whose bytes are the little-endian uint32 ``0x00RRGGBB``;
  ``point_step`` 32.
Organized: ``height x width`` of the (strided) depth image, ``row_step = width * point_step``,
``is_dense = False``, invalid pixels -> NaN x, y, z. Points are in the camera optical frame (metres).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .geometry import PinholeIntrinsics, pixel_rays

FLOAT32 = 7          # sensor_msgs/PointField.FLOAT32
XYZ_POINT_STEP = 16
XYZRGB_POINT_STEP = 32


@dataclass(frozen=True)
class FieldSpec:
    name: str
    offset: int
    datatype: int = FLOAT32
    count: int = 1


def cloud_fields(with_rgb: bool) -> list[FieldSpec]:
    fields = [FieldSpec("x", 0), FieldSpec("y", 4), FieldSpec("z", 8)]
    if with_rgb:
        fields.append(FieldSpec("rgb", 16))
    return fields


@dataclass
class CloudBuffer:
    height: int
    width: int
    point_step: int
    fields: list[FieldSpec]
    data: np.ndarray          # [height, width, point_step // 4] float32 (C-contiguous)

    @property
    def row_step(self) -> int:
        return self.width * self.point_step

    def tobytes(self) -> bytes:
        return self.data.tobytes()


_RGB_MASK = np.uint32(0x00FFFFFF)


def pack_rgb(rgb: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``[..., 3]`` uint8 RGB -> ``[...]`` uint32 ``0x00RRGGBB`` (PCL's packed rgb), written into ``out`` if given.

    Through OpenCV's SIMD channel swap: RGB -> BGRA bytes are the little-endian uint32 ``0xAARRGGBB``, and the
    mask clears the alpha byte (3x faster than shifting three uint32 copies).
    """
    import cv2

    image = np.ascontiguousarray(rgb if rgb.ndim == 3 else rgb.reshape(-1, rgb.shape[-2] if rgb.ndim > 1 else 1, 3))
    bgra = cv2.cvtColor(image, cv2.COLOR_RGB2BGRA).view(np.uint32)[..., 0]
    return np.bitwise_and(bgra.reshape(rgb.shape[:-1]), _RGB_MASK, out=out)


_FIELDS = {False: cloud_fields(False), True: cloud_fields(True)}


class CloudBuilder:
    """Reusable builder: caches the ray grid for one (intrinsics, stride) and its output buffer.

    The returned :class:`CloudBuffer` shares the builder's buffer: it is valid until the next :meth:`build`
    of the same builder (serialise or copy it first). Reusing it keeps the padding zeroed once and avoids
    fresh pages on every frame, which at the network's output size cost more than filling the points.
    """

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._rays: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._buffer: Optional[np.ndarray] = None

    def _output(self, h: int, w: int, step: int) -> np.ndarray:
        if self._buffer is None or self._buffer.shape != (h, w, step // 4):
            self._buffer = np.zeros((h, w, step // 4), np.float32)
        return self._buffer

    def build(self, depth: np.ndarray, intr: PinholeIntrinsics, stride: int = 1,
              rgb: Optional[np.ndarray] = None) -> CloudBuffer:
        """Depth ``[H, W]`` metres (NaN invalid; must match ``intr`` size) -> organized cloud of the pixels
        ``[::stride, ::stride]``. ``rgb`` ``[H, W, 3]`` uint8 (same size) adds the packed colour field."""
        if depth.shape != (intr.height, intr.width):
            raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but intrinsics are for "
                             f"{intr.width}x{intr.height}")
        with_rgb = rgb is not None
        if with_rgb and rgb.shape != depth.shape + (3,):
            raise ValueError(f"colour image {rgb.shape[1]}x{rgb.shape[0]} does not match depth "
                             f"{depth.shape[1]}x{depth.shape[0]}")
        key = (intr, stride)
        if key != self._key:
            self._rays = tuple(np.ascontiguousarray(r) for r in pixel_rays(intr, stride))
            self._key = key
        rx, ry = self._rays
        d = depth[::stride, ::stride]
        h, w = d.shape
        step = XYZRGB_POINT_STEP if with_rgb else XYZ_POINT_STEP
        out = self._output(h, w, step)
        np.multiply(rx, d, out=out[..., 0])
        np.multiply(ry, d, out=out[..., 1])
        out[..., 2] = d
        if with_rgb:
            pack_rgb(rgb[::stride, ::stride], out[..., 4].view(np.uint32))
        return CloudBuffer(h, w, step, _FIELDS[with_rgb], out)
