"""Loading and saving SPIdepth weights, safely.

Two layouts are understood:

* **official folder** (as published for SPIdepth / written by its trainer): ``encoder.pth`` (encoder-decoder
  state dict plus the non-tensor extras ``height``, ``width``, ``use_stereo``), ``depth.pth`` (Self Query Layer
  head) and optionally ``pose.pth``. Loaded strictly after dropping the known extras.
* **our file** (``*.pt``): one dict with ``format``, ``preset``, ``config``, ``depth_net`` and ``pose_net``
  state dicts (training checkpoints add optimiser/scheduler/RNG state).

Everything goes through :func:`safe_torch_load`: ``weights_only=True`` on the CPU, after checking that the path
is a regular, non-empty file below a size limit, so an untrusted file can neither run code nor make us
allocate without bound.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from .files import file_sha256  # noqa: F401  (re-exported)
from .presets import PRESETS, ModelPreset, get_preset

#: Non-tensor entries the official trainer adds to ``encoder.pth``.
OFFICIAL_ENCODER_EXTRAS = ("height", "width", "use_stereo")
#: Format tag of our single-file checkpoints.
CHECKPOINT_FORMAT = "spidepth_ros/1"
#: Refuse files larger than this before reading them (the biggest official encoder.pth is ~2.9 GB).
MAX_CHECKPOINT_BYTES = int(os.environ.get("SPIDEPTH_MAX_CHECKPOINT_BYTES", 8 * 1024 ** 3))


class CheckpointError(ValueError):
    """A checkpoint was refused; the message says why and what to do."""


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes); re-download or re-export it")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{what} {path} is {size} bytes, above the {MAX_CHECKPOINT_BYTES}-byte limit; "
                              "set SPIDEPTH_MAX_CHECKPOINT_BYTES if the file is genuine")


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors that explain themselves."""
    path = Path(path)
    _check_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing {what} {path}: it contains Python objects that are not plain tensors/containers, so it "
            f"cannot be loaded safely with weights_only=True ({str(exc).splitlines()[0]}). Re-save only the "
            "state_dict from a trusted environment.") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"cannot read {what} {path}: the file is truncated or not a PyTorch file "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _tensor_dict(obj: Any, path: Path, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    out = {}
    for key, value in obj.items():
        if key in drop:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def compare_state_dict(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], name: str) -> list[str]:
    """Return human-readable problems (missing/unexpected keys, shape mismatches), at most a few of each."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [(k, tuple(expected[k]), tuple(found[k].shape)) for k in expected
             if k in found and tuple(found[k].shape) != tuple(expected[k])]
    if missing:
        problems.append(f"{name}: {len(missing)} missing keys, e.g. {missing[:4]}")
    if unexpected:
        problems.append(f"{name}: {len(unexpected)} unexpected keys, e.g. {unexpected[:4]}")
    for key, want, got in wrong[:6]:
        problems.append(f"{name}: {key} has shape {list(got)}, the preset expects {list(want)}")
    if len(wrong) > 6:
        problems.append(f"{name}: ... and {len(wrong) - 6} more shape mismatches")
    return problems


def expected_shapes(preset: ModelPreset) -> tuple[dict[str, torch.Size], dict[str, torch.Size], dict[str, torch.Size]]:
    """State-dict shapes (encoder, depth head, pose net) of ``preset``, built on the meta device (no memory)."""
    from .models import build_depth_net, build_pose_net

    with torch.device("meta"):
        depth = build_depth_net(preset)
        pose = build_pose_net(preset)
    enc = {k: v.shape for k, v in depth.encoder.state_dict().items()}
    head = {k: v.shape for k, v in depth.depth_decoder.state_dict().items()}
    pose_sd = {k: v.shape for k, v in pose.state_dict().items()}
    return enc, head, pose_sd


def _head_signature(head: dict[str, Any]) -> Optional[tuple[int, int, int, int, int]]:
    """(E, P, Q, D, FF) from a Self Query Layer state dict, or None if the keys are missing."""
    try:
        e, _, p, _ = head["embedding_convPxP.weight"].shape
        q = head["convert_to_prob.0.weight"].shape[1]
        d = head["convert_to_prob.0.weight"].shape[0]
        ff = head["transformer_encoder.layers.0.linear1.weight"].shape[0]
    except (KeyError, ValueError):
        return None
    return int(e), int(p), int(q), int(d), int(ff)


def _encoder_signature(enc: dict[str, Any]) -> Optional[tuple[str, int]]:
    for key in ("encoder.stem_0.weight", "encoder.encoder.conv1.weight", "encoder.conv1.weight"):
        if key in enc:
            return key, int(enc[key].shape[0])
    return None


def detect_preset(encoder_sd: dict[str, torch.Tensor], head_sd: dict[str, torch.Tensor]) -> ModelPreset:
    """Find the registered preset whose tensor shapes match these state dicts exactly."""
    head_sig = _head_signature(head_sd)
    enc_sig = _encoder_signature(encoder_sd)
    candidates = []
    for preset in PRESETS.values():
        if head_sig != (preset.model_dim, preset.patch_size, preset.query_nums, preset.dim_out,
                        preset.transformer_ff):
            continue
        enc_shapes, head_shapes, _ = expected_shapes(preset)
        if enc_sig is None or enc_sig[0] not in enc_shapes or enc_shapes[enc_sig[0]][0] != enc_sig[1]:
            continue
        if not compare_state_dict(enc_shapes, encoder_sd, "encoder") + compare_state_dict(head_shapes, head_sd,
                                                                                          "depth"):
            candidates.append(preset)
    if not candidates:
        raise CheckpointError(
            f"no preset matches these weights (Self Query Layer E,P,Q,D,FF = {head_sig}, encoder stem "
            f"{enc_sig}); pass --preset explicitly to see which keys differ, or register a preset for them")
    if len(candidates) > 1:
        names = [c.name for c in candidates]
        # Same shapes, different depth range: the official ones win, and the choice is reported.
        candidates.sort(key=lambda c: not c.official)
        if not candidates[0].official:
            raise CheckpointError(f"weights match several presets {names}; pass the preset explicitly")
    return candidates[0]


def verify_against_preset(preset: ModelPreset, encoder_sd: dict, head_sd: dict,
                          pose_sd: Optional[dict] = None) -> None:
    enc_shapes, head_shapes, pose_shapes = expected_shapes(preset)
    problems = compare_state_dict(enc_shapes, encoder_sd, "encoder") + compare_state_dict(head_shapes, head_sd,
                                                                                          "depth")
    if pose_sd is not None:
        problems += compare_state_dict(pose_shapes, pose_sd, "pose")
    if problems:
        raise CheckpointError(f"weights do not fit preset {preset.name!r}:\n  " + "\n  ".join(problems))


class LoadedWeights:
    """State dicts and the preset they belong to (nothing is built until :meth:`build`)."""

    def __init__(self, preset: ModelPreset, encoder: dict, depth_head: dict, pose: Optional[dict],
                 source: Path, extra: Optional[dict] = None) -> None:
        self.preset = preset
        self.encoder = encoder
        self.depth_head = depth_head
        self.pose = pose
        self.source = source
        self.extra = extra or {}

    def build(self, with_pose: bool = False):
        """Return ``(depth_net, pose_net_or_None)`` in eval mode on the CPU, loaded strictly."""
        from .models import build_depth_net, build_pose_net

        depth = build_depth_net(self.preset)
        depth.encoder.load_state_dict(self.encoder, strict=True)
        depth.depth_decoder.load_state_dict(self.depth_head, strict=True)
        depth.eval()
        pose = None
        if with_pose and self.pose is not None:
            pose = build_pose_net(self.preset)
            pose.load_state_dict(self.pose, strict=True)
            pose.eval()
        return depth, pose

    def depth_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"encoder.{k}": v for k, v in self.encoder.items()}
        sd.update({f"depth_decoder.{k}": v for k, v in self.depth_head.items()})
        return sd


def load_official_folder(folder: str | Path, preset: Optional[str | ModelPreset] = None) -> LoadedWeights:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder with encoder.pth and depth.pth")
    raw_enc = safe_torch_load(folder / "encoder.pth", "encoder weights")
    extras = {k: raw_enc[k] for k in OFFICIAL_ENCODER_EXTRAS if isinstance(raw_enc, dict) and k in raw_enc}
    encoder_sd = _tensor_dict(raw_enc, folder / "encoder.pth", drop=OFFICIAL_ENCODER_EXTRAS)
    head_sd = _tensor_dict(safe_torch_load(folder / "depth.pth", "depth-head weights"), folder / "depth.pth")
    pose_sd = None
    if (folder / "pose.pth").exists():
        pose_sd = _tensor_dict(safe_torch_load(folder / "pose.pth", "pose weights"), folder / "pose.pth")
    if preset is None:
        chosen = detect_preset(encoder_sd, head_sd)
    else:
        chosen = preset if isinstance(preset, ModelPreset) else get_preset(preset)
    verify_against_preset(chosen, encoder_sd, head_sd, pose_sd)
    h, w = extras.get("height"), extras.get("width")
    if isinstance(h, int) and isinstance(w, int) and (h, w) != (chosen.height, chosen.width):
        # The official evaluator resizes to the size stored in encoder.pth; follow it when usable.
        candidate = chosen.replace(height=h, width=w)
        if candidate.query_nums <= candidate.num_patches() <= 500:
            chosen = candidate
    return LoadedWeights(chosen, encoder_sd, head_sd, pose_sd, folder, extras)


def load_our_checkpoint(path: str | Path) -> LoadedWeights:
    path = Path(path)
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a spidepth_ros checkpoint (no format={CHECKPOINT_FORMAT!r}); "
                              "for official weights pass the folder holding encoder.pth and depth.pth")
    try:
        preset = ModelPreset.from_dict(data["preset"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid preset record ({exc})") from exc
    depth_sd = _tensor_dict(data.get("depth_net"), path)
    encoder_sd = {k.removeprefix("encoder."): v for k, v in depth_sd.items() if k.startswith("encoder.")}
    head_sd = {k.removeprefix("depth_decoder."): v for k, v in depth_sd.items() if k.startswith("depth_decoder.")}
    pose_sd = _tensor_dict(data["pose_net"], path) if data.get("pose_net") is not None else None
    verify_against_preset(preset, encoder_sd, head_sd, pose_sd)
    extra = {k: v for k, v in data.items() if k not in ("depth_net", "pose_net")}
    return LoadedWeights(preset, encoder_sd, head_sd, pose_sd, path, extra)


def load_weights(path: str | Path, preset: Optional[str] = None) -> LoadedWeights:
    """Load an official folder (or its ``encoder.pth``) or one of our ``.pt`` files."""
    path = Path(path)
    if path.is_dir():
        return load_official_folder(path, preset)
    if path.name in ("encoder.pth", "depth.pth"):
        return load_official_folder(path.parent, preset)
    return load_our_checkpoint(path)


def save_checkpoint(path: str | Path, preset: ModelPreset, depth_net: torch.nn.Module,
                    pose_net: Optional[torch.nn.Module] = None, config: Optional[dict] = None,
                    **extra: Any) -> Path:
    """Write our single-file checkpoint atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "preset": preset.to_dict(), "config": config or {},
               "depth_net": {k: v.detach().cpu() for k, v in depth_net.state_dict().items()},
               "pose_net": None if pose_net is None else {k: v.detach().cpu() for k, v in
                                                           pose_net.state_dict().items()}}
    payload.update(extra)
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_official_folder(folder: str | Path, depth_net: torch.nn.Module, pose_net: Optional[torch.nn.Module] = None,
                         use_stereo: bool = False) -> Path:
    """Write ``encoder.pth``/``depth.pth``/``pose.pth`` exactly as the official trainer lays them out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preset: ModelPreset = depth_net.preset
    enc = dict(depth_net.encoder.state_dict())
    enc.update(height=preset.height, width=preset.width, use_stereo=use_stereo)
    torch.save(enc, folder / "encoder.pth")
    torch.save(depth_net.depth_decoder.state_dict(), folder / "depth.pth")
    if pose_net is not None:
        torch.save(pose_net.state_dict(), folder / "pose.pth")
    return folder
