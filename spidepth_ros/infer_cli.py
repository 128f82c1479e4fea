"""``spidepth-infer``: image files in, depth PNGs out (like the official test script, with a progress bar).

For every input ``name.ext`` it writes ``<out>/name_depth.png`` (uint16 millimetres, 0 = invalid; depth in
model units x ``--scale``) and ``<out>/name_depth_color.png`` (colourised, for people).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def predict_with_flip(estimator, rgb: np.ndarray, flip: bool) -> np.ndarray:
    """Depth at the input resolution; with ``flip`` the mean of the image's and its mirror's predictions."""
    depth = estimator.infer(rgb, "input").depth
    if flip:
        mirrored = estimator.infer(np.ascontiguousarray(rgb[:, ::-1]), "input").depth[:, ::-1]
        depth = 0.5 * (depth + mirrored)
    return depth


def collect_inputs(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in paths]}")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    import cv2
    from tqdm import tqdm

    from .colorize import colorize_depth
    from .encodings import metres_to_16uc1
    from .presets import PRESETS
    from .runtime import create_estimator

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="image files or folders")
    ap.add_argument("--model", help="our .pt, an official weights folder, .onnx or .engine")
    ap.add_argument("--out", type=Path, default=Path("depth_out"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    ap.add_argument("--scale", type=float, default=1.0, help="model units -> metres")
    ap.add_argument("--crop", choices=("none", "center"), default="none")
    ap.add_argument("--list-presets", action="store_true", help="print the model presets and exit")
    args = ap.parse_args(argv)
    if args.list_presets:
        for p in PRESETS.values():
            print(f"{p.name:20s} {p.width}x{p.height}  {'official ' if p.official else ''}{p.description}")
        return 0
    if not args.model or not args.inputs:
        ap.error("--model and at least one input are required")
    files = collect_inputs(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    with create_estimator(args.model, args.backend, crop=args.crop, log=print) as est:
        for path in tqdm(files, desc="depth", unit="image"):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                tqdm.write(f"skipping {path}: not a readable image")
                continue
            depth = predict_with_flip(est, np.ascontiguousarray(bgr[..., ::-1]), args.flip) * args.scale
            cv2.imwrite(str(args.out / f"{path.stem}_depth.png"), metres_to_16uc1(depth))
            cv2.imwrite(str(args.out / f"{path.stem}_depth_color.png"), colorize_depth(depth))
    print(f"wrote {len(files)} depth maps to {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
