"""Image -> network tensor, and network depth -> published depth, with the exact intrinsics transform.

The network sees a (optionally centre-cropped) resize of the camera image to ``net_width x net_height``;
its depth output is at half that size. :meth:`Preprocessor.output_intrinsics` gives the pinhole model of the
depth map at the network's output resolution, derived from the camera's with
:meth:`spidepth_ros.geometry.PinholeIntrinsics.crop_and_resize` (the same function training uses).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import CropBox, PinholeIntrinsics, center_crop_box

CROP_MODES = ("none", "center")


@dataclass(frozen=True)
class PreparedImage:
    tensor: np.ndarray        # [1, 3, H, W] float32 RGB in [0, 1]
    crop: CropBox             # region of the input image the network saw
    resized: np.ndarray       # [H, W, 3] uint8 RGB: the crop resized to the network size (reused for colour)
    input_width: int
    input_height: int


class Preprocessor:
    """Resize (and optionally centre-crop to the network's aspect ratio) RGB uint8 images."""

    def __init__(self, net_width: int, net_height: int, crop: str = "none") -> None:
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, not {crop!r}")
        self.net_width, self.net_height, self.crop_mode = net_width, net_height, crop

    def crop_box(self, width: int, height: int) -> CropBox:
        if self.crop_mode == "center":
            return center_crop_box(width, height, self.net_width / self.net_height)
        return CropBox(0, 0, width, height)

    def prepare(self, rgb: np.ndarray, out: np.ndarray | None = None) -> PreparedImage:
        """``[H, W, 3]`` uint8 RGB -> :class:`PreparedImage` (``out`` may be a reusable ``[1,3,h,w]`` buffer)."""
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        box = self.crop_box(w, h)
        view = rgb[box.y0:box.y0 + box.height, box.x0:box.x0 + box.width]
        shrinking = box.width >= self.net_width and box.height >= self.net_height
        resized = view if (box.width, box.height) == (self.net_width, self.net_height) else cv2.resize(
            view, (self.net_width, self.net_height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        tensor = out if out is not None else np.empty((1, 3, self.net_height, self.net_width), np.float32)
        np.multiply(resized.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=tensor[0], casting="unsafe")
        return PreparedImage(tensor, box, resized, w, h)

    def output_intrinsics(self, camera: PinholeIntrinsics, out_width: int, out_height: int) -> PinholeIntrinsics:
        """Pinhole model of an ``out_width x out_height`` depth map covering the network's crop."""
        return camera.crop_and_resize(self.crop_box(camera.width, camera.height), out_width, out_height)


def depth_to_input_resolution(depth: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """Network-resolution depth -> ``[input H, input W]``; pixels outside the crop are NaN."""
    import cv2

    box = prepared.crop
    out = np.full((prepared.input_height, prepared.input_width), np.nan, np.float32)
    out[box.y0:box.y0 + box.height, box.x0:box.x0 + box.width] = cv2.resize(
        depth, (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    return out
