"""Image encodings and depth units: the one place that knows them (no rclpy).

Works on the plain fields of a ``sensor_msgs/Image`` (height, width, encoding, is_bigendian, step, data), so
the node (rclpy messages), training and evaluation (rosbags messages) share it. Decoding honours ``step``
padding and ``is_bigendian`` and must match cv_bridge byte for byte (tested where cv_bridge imports).

Depth traits (depth_image_proc ``DepthTraits``): ``32FC1`` = metres, non-finite invalid; ``16UC1``/``mono16``
= millimetres, 0 invalid. We publish 32FC1 with NaN for invalid pixels (REP 118).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ImageDecodeError(ValueError):
    """The image message cannot be decoded; the message names the field and the fix."""


@dataclass(frozen=True)
class EncodingInfo:
    dtype: str        # numpy dtype of one channel, little-endian form
    channels: int
    order: str        # 'rgb', 'bgr', 'rgba', 'bgra', 'mono', 'yuv422_uyvy', 'yuv422_yuyv', 'depth'


ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo("u1", 3, "rgb"), "bgr8": EncodingInfo("u1", 3, "bgr"),
    "rgba8": EncodingInfo("u1", 4, "rgba"), "bgra8": EncodingInfo("u1", 4, "bgra"),
    "mono8": EncodingInfo("u1", 1, "mono"), "8UC1": EncodingInfo("u1", 1, "mono"),
    "8UC3": EncodingInfo("u1", 3, "bgr"),
    "rgb16": EncodingInfo("u2", 3, "rgb"), "bgr16": EncodingInfo("u2", 3, "bgr"),
    "rgba16": EncodingInfo("u2", 4, "rgba"), "bgra16": EncodingInfo("u2", 4, "bgra"),
    "mono16": EncodingInfo("u2", 1, "mono"),
    "yuv422": EncodingInfo("u1", 2, "yuv422_uyvy"), "uyvy": EncodingInfo("u1", 2, "yuv422_uyvy"),
    "yuv422_yuy2": EncodingInfo("u1", 2, "yuv422_yuyv"), "yuyv": EncodingInfo("u1", 2, "yuv422_yuyv"),
    "16UC1": EncodingInfo("u2", 1, "depth"), "32FC1": EncodingInfo("f4", 1, "depth"),
}
COLOR_ENCODINGS = tuple(k for k, v in ENCODINGS.items() if v.order != "depth")
DEPTH_ENCODINGS = ("32FC1", "16UC1", "mono16")
#: Refuse images above this many pixels before allocating (a 16k x 16k frame).
MAX_IMAGE_PIXELS = 16384 * 16384
#: Default bound on the bytes one decoded colour image may take (the node's ``max_image_bytes``): an 8192 x 8192
#: RGB image, above every real camera (a 12 MP sensor is 36 MB).
DEFAULT_MAX_IMAGE_BYTES = 8192 * 8192 * 3
MILLIMETRES_PER_METRE = 1000.0


def image_to_array(height: int, width: int, encoding: str, is_bigendian: bool | int, step: int,
                   data) -> np.ndarray:
    """Raw image fields -> ``[H, W]`` or ``[H, W, C]`` array in native byte order (a view where possible).

    Raises :class:`ImageDecodeError` on unknown encodings, zero sizes, a ``step`` smaller than a row or a
    buffer shorter than ``step * height``.
    """
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has zero size ({width}x{height})")
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"image {width}x{height} exceeds the {MAX_IMAGE_PIXELS}-pixel limit")
    info = ENCODINGS[encoding]
    itemsize = np.dtype(info.dtype).itemsize
    row_bytes = width * info.channels * itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than one row of {width} {encoding} pixels "
                               f"({row_bytes} bytes); the publisher filled the header wrongly")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buf.size < step * height:
        raise ImageDecodeError(f"data has {buf.size} bytes, expected step*height = {step}*{height} = "
                               f"{step * height}")
    rows = buf[:step * height].reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(info.dtype).newbyteorder(">" if is_bigendian else "<")
    if itemsize > 1:
        rows = np.ascontiguousarray(rows)
    arr = rows.view(dtype).reshape(height, width, info.channels) if info.channels > 1 else \
        rows.view(dtype).reshape(height, width)
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _yuv422_to_rgb(arr: np.ndarray, order: str) -> np.ndarray:
    """``[H, W, 2]`` packed YUV 4:2:2 -> ``[H, W, 3]`` RGB uint8 (BT.601, as OpenCV's COLOR_YUV2RGB_UYVY)."""
    import cv2

    code = cv2.COLOR_YUV2RGB_UYVY if order == "yuv422_uyvy" else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(np.ascontiguousarray(arr), code)


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Any colour/mono encoding -> ``[H, W, 3]`` uint8 RGB (16-bit scaled by 1/257, alpha dropped)."""
    info = ENCODINGS[encoding]
    if info.order == "depth":
        raise ImageDecodeError(f"{encoding} is a depth encoding; the network needs a colour image")
    if info.order.startswith("yuv422"):
        return _yuv422_to_rgb(arr, info.order)
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.uint32) // 257).astype(np.uint8) if arr.dtype == np.uint16 else arr.astype(np.uint8)
    if info.order == "mono":
        return np.repeat(arr[..., None], 3, axis=2)
    if info.order in ("bgr", "bgra"):
        return np.ascontiguousarray(arr[..., 2::-1])
    return np.ascontiguousarray(arr[..., :3])


def describe_bytes(n: int) -> str:
    """``201326592`` -> ``"201 MB (8192x8192 RGB)"``: a byte limit in words a user can compare with a camera."""
    side = int(round((n / 3) ** 0.5))
    return f"{n / 1e6:.0f} MB ({side}x{side} RGB)"


def decode_color_image(height: int, width: int, encoding: str, is_bigendian, step: int, data,
                       max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """Image fields -> ``[H, W, 3]`` uint8 RGB; refused before converting when that RGB image would pass
    ``max_bytes``."""
    if height > 0 and width > 0 and height * width * 3 > max_bytes:
        raise ImageDecodeError(f"image is {width}x{height}: as RGB it takes {height * width * 3 / 1e6:.0f} MB, "
                               f"over max_image_bytes {describe_bytes(max_bytes)}; publish a smaller image "
                               "(image_proc resize) or raise max_image_bytes")
    return to_rgb8(image_to_array(height, width, encoding, is_bigendian, step, data), encoding)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...; not DHT 0xC4, JPG 0xC8, DAC 0xCC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: PNG colour type -> channels OpenCV decodes it to with IMREAD_UNCHANGED (a palette becomes BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


@dataclass(frozen=True)
class CompressedHeader:
    """What a PNG or JPEG header says about the image it decodes to."""

    format: str                 # "png" or "jpeg"
    width: int
    height: int
    channels: int               # as OpenCV decodes it unchanged
    bytes_per_sample: int       # 1, or 2 for 16-bit PNGs

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the largest array decoding makes: the decoded image, or the [H, W, 3] uint8 RGB made from it."""
        return self.width * self.height * max(self.channels * self.bytes_per_sample, 3)

    def describe(self) -> str:
        return (f"{self.width}x{self.height} {self.format} ({self.channels} channel"
                f"{'s' if self.channels > 1 else ''}, {8 * self.bytes_per_sample} bit)")


def compressed_image_header(buf: bytes | np.ndarray) -> CompressedHeader:
    """Size, channels and sample size of a PNG or JPEG from its header alone, without decoding any pixel.

    Raises :class:`ImageDecodeError` for other formats or a header too short to read.
    """
    head = bytes(buf[:8])
    if head == PNG_SIGNATURE:
        if len(buf) < 26 or bytes(buf[12:16]) != b"IHDR":
            raise ImageDecodeError("truncated PNG: no IHDR chunk")
        bit_depth, colour_type = int(buf[24]), int(buf[25])
        return CompressedHeader("png", int.from_bytes(bytes(buf[16:20]), "big"),
                                int.from_bytes(bytes(buf[20:24]), "big"), _PNG_CHANNELS.get(colour_type, 4),
                                2 if bit_depth == 16 else 1)
    if head[:2] == b"\xff\xd8":
        i, n = 2, len(buf)
        while i + 4 <= n:
            if buf[i] != 0xFF:
                raise ImageDecodeError(f"corrupt JPEG: no marker at byte {i}")
            marker = buf[i + 1]
            if marker == 0xFF:                      # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            length = int(buf[i + 2]) << 8 | int(buf[i + 3])
            if marker in _JPEG_SOF:
                if i + 10 > n:
                    break
                return CompressedHeader("jpeg", int(buf[i + 7]) << 8 | int(buf[i + 8]),
                                        int(buf[i + 5]) << 8 | int(buf[i + 6]), int(buf[i + 9]), 1)
            i += 2 + length
        raise ImageDecodeError("corrupt JPEG: no start-of-frame header")
    raise ImageDecodeError("compressed image is neither PNG nor JPEG (only jpeg and png are supported)")


def compressed_image_size(buf: bytes | np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of a PNG or JPEG from its header alone (see :func:`compressed_image_header`)."""
    header = compressed_image_header(buf)
    return header.width, header.height


def _why_undecodable(header: CompressedHeader, buf: np.ndarray) -> str:
    """Why OpenCV could not decode data whose header was fine: a cut-off message, or corrupt data."""
    tail = bytes(buf[-64:]).rstrip(b"\0")           # some drivers pad JPEGs with zero bytes
    if header.format == "jpeg" and not tail.endswith(b"\xff\xd9"):
        return (f"truncated JPEG: {buf.size} bytes end without the end-of-image marker (the message was cut "
                "short: check the camera driver or the recording)")
    if header.format == "png" and b"IEND" not in tail:
        return (f"truncated PNG: {buf.size} bytes end without the IEND chunk (the message was cut short: check "
                "the camera driver or the recording)")
    return f"the {header.format} data is corrupt"


def decode_compressed(fmt: str, data, max_pixels: int = MAX_IMAGE_PIXELS,
                      max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png) -> ``[H, W, 3]`` uint8 RGB.

    The header is read first: an image over ``max_pixels``, or one whose decoding would allocate more than
    ``max_bytes`` (:attr:`CompressedHeader.decoded_bytes`), is refused before any allocation (a 249 KB PNG can
    decode to 16000x16000, 768 MB as RGB).
    """
    import cv2

    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageDecodeError("compressed image has no data")
    if "compressedDepth" in fmt:
        raise ImageDecodeError("compressedDepth images are depth, not colour; subscribe to the colour topic")
    header = compressed_image_header(buf)
    width, height = header.width, header.height
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"compressed image header says {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(f"compressed image is {width}x{height}, over the {max_pixels}-pixel limit; "
                               "publish a smaller image (image_proc resize) or check the camera driver")
    if header.decoded_bytes > max_bytes:
        raise ImageDecodeError(f"compressed image is {header.describe()}: decoding needs "
                               f"{header.decoded_bytes / 1e6:.0f} MB, over max_image_bytes "
                               f"{describe_bytes(max_bytes)}; publish a smaller image (image_proc resize) or raise "
                               "max_image_bytes")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"could not decode the compressed image ({header.describe()} by its header, "
                               f"format field {fmt!r}): {_why_undecodable(header, buf)}")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2) if img.dtype == np.uint8 else \
            np.repeat((img // 257).astype(np.uint8)[..., None], 3, axis=2)
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def depth_to_metres(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Recorded depth image -> float32 metres with NaN for invalid pixels."""
    if encoding == "32FC1":
        out = arr.astype(np.float32, copy=True)
        out[~np.isfinite(out)] = np.nan
        return out
    if encoding in ("16UC1", "mono16"):
        out = arr.astype(np.float32) / MILLIMETRES_PER_METRE
        out[arr == 0] = np.nan
        return out
    raise ImageDecodeError(f"{encoding!r} is not a depth encoding; use one of {DEPTH_ENCODINGS}")


def sensor_units_to_metres(raw: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """Integer depth in a sensor's own unit (RealSense z16: 0.001 m, TUM RGB-D PNGs: 0.0002 m) -> float32 metres,
    0 (no return) -> NaN (REP 118). Recorded 16UC1 topics are millimetres: use :func:`depth_to_metres`."""
    out = raw.astype(np.float32) * np.float32(metres_per_unit)
    out[raw == 0] = np.nan
    return out


def metres_to_16uc1(depth: np.ndarray) -> np.ndarray:
    """Float metres (NaN invalid) -> uint16 millimetres, 0 invalid, saturating at 65.535 m."""
    d = np.nan_to_num(depth.astype(np.float64) * MILLIMETRES_PER_METRE, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(d), 0, 65535).astype(np.uint16)


def encode_image(arr: np.ndarray, encoding: str) -> tuple[int, int, str, int, int, bytes]:
    """Array -> ``(height, width, encoding, is_bigendian, step, data)`` little-endian, unpadded."""
    info = ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr, dtype=np.dtype(info.dtype).newbyteorder("<"))
    h, w = arr.shape[:2]
    return h, w, encoding, 0, w * info.channels * arr.dtype.itemsize, arr.tobytes()
