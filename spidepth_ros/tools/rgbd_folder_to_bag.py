"""Record an RGB-D image folder (TUM RGB-D layout) into a rosbag2 for `spidepth-train` / `spidepth-eval`.

The layout is the one TUM RGB-D, ORB-SLAM2 and many RealSense capture scripts write::

    folder/rgb.txt         "<timestamp> rgb/<file>.png" per line ('#' comments allowed)
    folder/depth.txt       "<timestamp> depth/<file>.png" (16-bit PNG, depth = value x --depth-unit metres)
    folder/associations.txt  optional "<t_rgb> <rgb file> <t_depth> <depth file>" (used when present)

Written topics (``--namespace``, default ``/camera``): ``image_raw`` (rgb8), ``camera_info`` (from
``--intrinsics``) and ``depth`` (32FC1 metres, NaN where the sensor gave 0: REP 118), all with the colour
frame's stamp. Depth must already be registered to the colour camera (TUM's is; RealSense ``rs.align``).

``--rate`` replaces the file's timestamps by a fixed rate (for capture scripts that wrote frame intervals
instead of times); ``--frames A:B`` keeps the A-th to (B-1)-th associated pair, so one folder can give a training
and a held-out bag::

    spidepth-folder-to-bag /data/seq data/seq_train --intrinsics 600 600 320 240 --depth-unit 0.001 --frames 0:150
    spidepth-folder-to-bag /data/seq data/seq_val   --intrinsics 600 600 320 240 --depth-unit 0.001 --frames 150:
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: largest frame accepted (pixels), checked from the PNG header before decoding
MAX_PIXELS = 4096 * 4096
#: colour and depth stamps further apart than this are not paired (TUM's associate.py default)
DEFAULT_MAX_PAIR_DIFF_S = 0.02


class FolderError(ValueError):
    """The folder cannot be recorded; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RgbdPair:
    """One colour image and its registered depth image (paths relative to the folder)."""

    stamp_s: float
    rgb: str
    depth: str


def read_list(path: Path) -> list[tuple[float, str]]:
    """``<timestamp> <file>`` lines of a TUM list file, in file order; '#' lines and blanks skipped."""
    if not path.is_file():
        raise FolderError(f"{path} does not exist (expected a TUM-style '<timestamp> <file>' list)")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            rows.append((float(parts[0]), parts[1]))
        except (ValueError, IndexError):
            raise FolderError(f"{path}:{lineno}: expected '<timestamp> <file>', got {line!r}") from None
    return rows


def read_pairs(folder: Path, max_diff_s: float = DEFAULT_MAX_PAIR_DIFF_S) -> list[RgbdPair]:
    """Colour/depth pairs: associations.txt when present, else each rgb.txt stamp's nearest depth.txt stamp."""
    assoc = folder / "associations.txt"
    if assoc.is_file():
        pairs = []
        for lineno, line in enumerate(assoc.read_text().splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) < 4:
                raise FolderError(f"{assoc}:{lineno}: expected '<t_rgb> <rgb> <t_depth> <depth>', got {line!r}")
            pairs.append(RgbdPair(float(parts[0]), parts[1], parts[3]))
        return pairs
    rgb = read_list(folder / "rgb.txt")
    depth = read_list(folder / "depth.txt")
    if not depth:
        raise FolderError(f"{folder / 'depth.txt'} lists no images")
    depth_stamps = np.array([t for t, _ in depth])
    pairs = []
    for t, name in rgb:
        j = int(np.argmin(np.abs(depth_stamps - t)))
        if abs(depth_stamps[j] - t) <= max_diff_s:
            pairs.append(RgbdPair(t, name, depth[j][1]))
    return pairs


def parse_range(text: str, count: int) -> range:
    """``A:B`` (Python slice syntax, either end optional) over ``count`` pairs."""
    try:
        start, _, stop = text.partition(":")
        return range(count)[slice(int(start) if start else None, int(stop) if stop else None)]
    except ValueError:
        raise FolderError(f"--frames must look like A:B, A: or :B, got {text!r}") from None


def _read_png(path: Path, depth: bool) -> np.ndarray:
    import cv2

    from ..encodings import ImageDecodeError, compressed_image_size

    if not path.is_file():
        raise FolderError(f"{path} is listed but does not exist")
    data = path.read_bytes()
    try:
        width, height = compressed_image_size(data)
    except ImageDecodeError as exc:
        raise FolderError(f"{path}: {exc}") from None
    if width * height > MAX_PIXELS:
        raise FolderError(f"{path} is {width}x{height}, over the {MAX_PIXELS}-pixel limit")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FolderError(f"{path} cannot be decoded as an image")
    if depth:
        if image.ndim != 2 or image.dtype != np.uint16:
            raise FolderError(f"{path}: depth must be a single-channel 16-bit PNG, got {image.dtype} x "
                              f"{1 if image.ndim == 2 else image.shape[2]} channels")
        return image
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., 2::-1])  # BGR(A) -> RGB


def record(folder: Path, out: Path, intrinsics: Sequence[float], depth_unit_m: float,
           frames: str = ":", rate_hz: float = 0.0, namespace: str = "/camera",
           frame_id: str = "camera_color_optical_frame", storage: str = "mcap", progress: bool = True) -> int:
    """Write the selected pairs into a new bag at ``out``; returns the number of frames written."""
    from tqdm import tqdm

    from ..bagio import BagWriter
    from ..encodings import sensor_units_to_metres
    from ..geometry import PinholeIntrinsics

    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder")
    if Path(out).exists():
        raise FolderError(f"{out} exists; choose a new bag folder")
    if len(intrinsics) != 4 or min(intrinsics[0], intrinsics[1]) <= 0:
        raise FolderError(f"--intrinsics needs fx fy cx cy with fx, fy > 0, got {list(intrinsics)}")
    if not depth_unit_m > 0:
        raise FolderError(f"--depth-unit must be > 0 metres per unit (TUM: 0.0002, RealSense: 0.001), got "
                          f"{depth_unit_m}")
    pairs = read_pairs(folder)
    chosen = parse_range(frames, len(pairs))
    if len(chosen) == 0:
        raise FolderError(f"--frames {frames} selects nothing from {len(pairs)} pairs in {folder}")
    first = _read_png(folder / pairs[chosen[0]].rgb, depth=False)
    height, width = first.shape[:2]
    intr = PinholeIntrinsics(*map(float, intrinsics), width=width, height=height)
    t0 = pairs[chosen[0]].stamp_s
    with BagWriter(Path(out), storage) as writer:
        for n, i in enumerate(tqdm(chosen, desc=f"record {Path(out).name}", unit="frame", disable=not progress)):
            pair = pairs[i]
            rgb = _read_png(folder / pair.rgb, depth=False)
            raw = _read_png(folder / pair.depth, depth=True)
            if rgb.shape[:2] != (height, width) or raw.shape != (height, width):
                raise FolderError(f"{pair.rgb} / {pair.depth}: {rgb.shape[:2]} / {raw.shape}, expected "
                                  f"{(height, width)} for both (depth must be registered to colour)")
            seconds = n / rate_hz if rate_hz > 0 else pair.stamp_s - t0
            stamp_ns = 1_000_000_000 + int(round(seconds * 1e9))
            writer.write_camera_frame(namespace, frame_id, stamp_ns, rgb, intr,
                                      depth=sensor_units_to_metres(raw, depth_unit_m))
    return len(chosen)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with rgb.txt, depth.txt (and optional associations.txt)")
    parser.add_argument("out", type=Path, help="bag folder to create")
    parser.add_argument("--intrinsics", type=float, nargs=4, required=True, metavar=("FX", "FY", "CX", "CY"),
                        help="colour camera intrinsics in pixels (written as CameraInfo K and P, no distortion)")
    parser.add_argument("--depth-unit", type=float, required=True,
                        help="metres per depth PNG unit (TUM: 0.0002, RealSense z16 default: 0.001)")
    parser.add_argument("--frames", default=":", help="A:B range of associated pairs to keep")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="Hz; > 0 stamps frames at this fixed rate instead of the file's timestamps")
    parser.add_argument("--namespace", default="/camera")
    parser.add_argument("--frame-id", default="camera_color_optical_frame")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    args = parser.parse_args(argv)
    try:
        n = record(args.folder, args.out, args.intrinsics, args.depth_unit, args.frames, args.rate,
                   args.namespace, args.frame_id, args.storage)
    except FolderError as exc:
        parser.exit(2, f"spidepth-folder-to-bag: error: {exc}\n")
    print(f"wrote {args.out}: {n} frames ({args.namespace}/image_raw, camera_info, depth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
