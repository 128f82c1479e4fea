"""Image decoding for every supported encoding, step padding, endianness; depth units; cv_bridge oracle."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from spidepth_ros import encodings as enc


@pytest.fixture
def rgb(rng):
    return (rng.random((7, 9, 3)) * 255).astype(np.uint8)


def pad_rows(arr: np.ndarray, extra: int) -> tuple[bytes, int]:
    rows = arr.reshape(arr.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], extra), 0xAB, np.uint8)], axis=1)
    return padded.tobytes(), padded.shape[1]


@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda x: x), ("bgr8", lambda x: x[..., ::-1]),
    ("rgba8", lambda x: np.dstack([x, np.full(x.shape[:2], 5, np.uint8)])),
    ("bgra8", lambda x: np.dstack([x[..., ::-1], np.full(x.shape[:2], 5, np.uint8)])),
])
@pytest.mark.parametrize("padding", [0, 5])
def test_color_8bit(rgb, encoding, make, padding):
    data, step = pad_rows(np.ascontiguousarray(make(rgb)), padding)
    out = enc.decode_color_image(7, 9, encoding, 0, step, data)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_16bit_both_endians(rgb, bigendian):
    wide = rgb.astype(np.uint16) * 257 + 3
    data = wide.astype(">u2" if bigendian else "<u2").tobytes()
    out = enc.decode_color_image(7, 9, "rgb16", bigendian, 9 * 6, data)
    np.testing.assert_array_equal(out, rgb)
    raw = enc.image_to_array(7, 9, "rgb16", bigendian, 9 * 6, data)
    np.testing.assert_array_equal(raw, wide)


def test_mono(rgb):
    grey = rgb[..., 0]
    np.testing.assert_array_equal(enc.decode_color_image(7, 9, "mono8", 0, 9, grey.tobytes()),
                                  np.dstack([grey] * 3))
    mono16 = (grey.astype(np.uint16) * 257).astype(">u2")
    np.testing.assert_array_equal(enc.decode_color_image(7, 9, "mono16", 1, 18, mono16.tobytes()),
                                  np.dstack([grey] * 3))


def yuv_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing YUV, written out (independent of OpenCV's tables)."""
    r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.clip(np.rint(np.dstack([y, u, v])), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_yuv422(encoding):
    flat = np.zeros((4, 8, 3), np.uint8)
    flat[:] = (200, 80, 40)
    flat[2:] = (30, 160, 220)
    yuv = yuv_from_rgb(flat)
    packed = np.zeros((4, 8, 2), np.uint8)
    if encoding == "yuv422":      # UYVY: U Y0 V Y1
        packed[:, 0::2, 0], packed[:, 1::2, 0] = yuv[:, 0::2, 1], yuv[:, 0::2, 2]
        packed[..., 1] = yuv[..., 0]
    else:                          # YUY2: Y0 U Y1 V
        packed[..., 0] = yuv[..., 0]
        packed[:, 0::2, 1], packed[:, 1::2, 1] = yuv[:, 0::2, 1], yuv[:, 0::2, 2]
    out = enc.decode_color_image(4, 8, encoding, 0, 16, packed.tobytes())
    assert np.abs(out.astype(int) - flat.astype(int)).max() <= 3


def test_compressed_png_and_jpeg(rgb):
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    np.testing.assert_array_equal(enc.decode_compressed("rgb8; png compressed bgr8", png.tobytes()), rgb)
    big = cv2.resize(rgb, (90, 70), interpolation=cv2.INTER_NEAREST)
    ok, jpg = cv2.imencode(".jpg", big[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert np.abs(enc.decode_compressed("jpeg", jpg.tobytes()).astype(int) - big).mean() < 12   # chroma subsampling
    with pytest.raises(enc.ImageDecodeError, match="neither PNG nor JPEG"):
        enc.decode_compressed("jpeg", b"not an image")
    with pytest.raises(enc.ImageDecodeError, match="could not decode"):
        enc.decode_compressed("jpeg", jpg.tobytes()[:300])          # a header, then nothing


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=7, width=9, encoding="rgb8", is_bigendian=0, step=20, data=b"\0" * 500), "smaller than one row"),
    (dict(height=7, width=9, encoding="rgb8", is_bigendian=0, step=27, data=b"\0" * 100), "expected step"),
    (dict(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b""), "zero size"),
    (dict(height=7, width=9, encoding="hsv8", is_bigendian=0, step=27, data=b"\0" * 189), "unsupported encoding"),
    (dict(height=70000, width=70000, encoding="mono8", is_bigendian=0, step=70000, data=b""), "pixel limit"),
])
def test_bad_images_are_refused_with_reason(kwargs, match):
    with pytest.raises(enc.ImageDecodeError, match=match):
        enc.image_to_array(**kwargs)


def test_depth_units_round_trip():
    d = np.array([[0.5, np.nan, 1.2345], [0.0, 70.0, np.inf]], np.float32)
    mm = enc.metres_to_16uc1(d)
    np.testing.assert_array_equal(mm, [[500, 0, 1235], [0, 65535, 0]])   # float32 1.2345 is 1.23450005
    back = enc.depth_to_metres(mm, "16UC1")
    assert np.isnan(back[0, 1]) and np.isnan(back[1, 0]) and back[0, 0] == pytest.approx(0.5)
    f = enc.depth_to_metres(d, "32FC1")
    assert np.isnan(f[1, 2]) and f[1, 1] == 70.0


def test_encode_decode_round_trip_32fc1(rng):
    d = rng.random((5, 6)).astype(np.float32)
    h, w, e, big, step, data = enc.encode_image(d, "32FC1")
    np.testing.assert_array_equal(enc.image_to_array(h, w, e, big, step, data), d)




def test_matches_cv_bridge_byte_for_byte(rgb):
    """On a robot cv_bridge is the oracle: our numpy decoding must give the same bytes."""
    bridge_mod = pytest.importorskip("cv_bridge", reason="cv_bridge is only available in a ROS install")
    bridge = bridge_mod.CvBridge()
    for encoding, arr in (("rgb8", rgb), ("bgr8", rgb[..., ::-1].copy()), ("mono8", rgb[..., 0].copy()),
                          ("32FC1", rgb[..., 0].astype(np.float32) / 7)):
        msg = bridge.cv2_to_imgmsg(arr, encoding=encoding)
        ours = enc.image_to_array(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, bytes(msg.data))
        theirs = bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
        assert ours.tobytes() == np.ascontiguousarray(theirs).tobytes()
        h, w, e, big, step, data = enc.encode_image(arr, encoding)
        assert data == bytes(msg.data) and step == msg.step


@pytest.mark.parametrize("fmt,size", [(".png", (37, 11)), (".jpg", (640, 480)), (".png", (1, 1)), (".jpg", (8, 3))])
def test_compressed_size_is_read_from_the_header(fmt, size, rng):
    w, h = size
    ok, buf = cv2.imencode(fmt, (rng.random((h, w, 3)) * 255).astype(np.uint8))
    assert enc.compressed_image_size(buf.ravel()) == (w, h)
    progressive = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert enc.compressed_image_size(progressive.ravel()) == (w, h)


def test_compressed_over_the_pixel_limit_is_refused_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((300, 400), np.uint8))
    with pytest.raises(enc.ImageDecodeError, match="400x300, over the 100000-pixel limit"):
        enc.decode_compressed("png", png.tobytes(), max_pixels=100_000)
    assert enc.decode_compressed("png", png.tobytes(), max_pixels=120_000).shape == (300, 400, 3)
    with pytest.raises(enc.ImageDecodeError, match="neither PNG nor JPEG"):
        enc.decode_compressed("bmp", cv2.imencode(".bmp", np.zeros((4, 4), np.uint8))[1].tobytes())
    with pytest.raises(enc.ImageDecodeError, match="no IHDR"):
        enc.decode_compressed("png", png.tobytes()[:14])


@pytest.mark.parametrize("fmt,shape,dtype,channels,bps", [
    (".png", (30, 40), np.uint8, 1, 1), (".png", (30, 40, 3), np.uint8, 3, 1), (".png", (30, 40, 4), np.uint16, 4, 2),
    (".jpg", (30, 40), np.uint8, 1, 1), (".jpg", (30, 40, 3), np.uint8, 3, 1)])
def test_compressed_header_gives_what_opencv_decodes(fmt, shape, dtype, channels, bps, rng):
    """The header's channels and sample size are what cv2.imdecode (unchanged) then allocates."""
    img = (rng.random(shape) * np.iinfo(dtype).max).astype(dtype)
    buf = cv2.imencode(fmt, img)[1].ravel()
    header = enc.compressed_image_header(buf)
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert (header.width, header.height, header.channels, header.bytes_per_sample) == (40, 30, channels, bps)
    assert header.width * header.height * header.channels * header.bytes_per_sample == decoded.nbytes
    assert header.decoded_bytes == max(decoded.nbytes, 30 * 40 * 3)


def test_decoded_bytes_are_bounded_before_decoding():
    """A grey 2000x1000 PNG (a few KB) decodes to 6 MB of RGB: refused under a 5 MB limit, naming the limit."""
    png = cv2.imencode(".png", np.zeros((1000, 2000), np.uint8))[1].tobytes()
    assert len(png) < 20_000
    with pytest.raises(enc.ImageDecodeError, match=r"2000x1000 png \(1 channel, 8 bit\): decoding needs 6 MB, "
                                                   r"over max_image_bytes 5 MB"):
        enc.decode_compressed("png", png, max_bytes=5_000_000)
    assert enc.decode_compressed("png", png, max_bytes=6_000_000).shape == (1000, 2000, 3)
    raw = np.zeros((1000, 2000, 3), np.uint8)
    with pytest.raises(enc.ImageDecodeError, match="2000x1000: as RGB it takes 6 MB, over max_image_bytes"):
        enc.decode_color_image(1000, 2000, "rgb8", 0, 6000, raw.tobytes(), max_bytes=5_000_000)


def test_truncated_compressed_images_say_so(rgb):
    """A cut-off message is not an unsupported format: the error says the data is truncated."""
    jpg = cv2.imencode(".jpg", cv2.resize(rgb, (90, 70)))[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    for fmt, data, word in (("jpeg", jpg[: len(jpg) // 2], "truncated JPEG"), ("png", png[: len(png) - 20],
                                                                                   "truncated PNG")):
        with pytest.raises(enc.ImageDecodeError, match=word) as info:
            enc.decode_compressed(fmt, data)
        assert "only jpeg and png" not in str(info.value)
