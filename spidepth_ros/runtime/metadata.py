"""The JSON sidecar written beside every exported model (``<model file>.json``).

It is the contract between the exporter and the runtimes/node: what goes in (size, channel order,
normalisation), what comes out (depth in model units at half resolution, its range), tensor names, and the
hashes that tie it to its checkpoint and model file. A runtime refuses a model whose sidecar disagrees.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..presets import ModelPreset

SIDECAR_VERSION = 1
INTRINSICS_CONVENTION = ("pinhole from CameraInfo P; crop (x0,y0,w,h) then resize to (W,H): fx'=fx*W/w, "
                         "cx'=(cx-x0)*W/w (image_proc ResizeNode); pixel centres at integer coordinates")


class MetadataError(ValueError):
    """A model and its sidecar do not belong together, or the sidecar is missing/invalid."""


@dataclass(frozen=True)
class ModelMetadata:
    preset: dict
    input_height: int
    input_width: int
    output_height: int
    output_width: int
    min_depth: float
    max_depth: float
    input_name: str = "image"
    output_name: str = "depth"
    channel_order: str = "RGB"
    input_range: tuple[float, float] = (0.0, 1.0)
    input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    input_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW float32"
    output_description: str = ("depth along the optical axis in model units (metres for metric fine-tuned "
                               "weights; scale-ambiguous for monocular self-supervised weights: multiply by a "
                               "calibrated depth_scale), at half the input resolution")
    depth_units: str = "model"
    # model units -> metres as calibrated for these weights (the checkpoint's depth_scale: median scaling on a
    # validation bag, or spidepth-eval --camera-height); the node multiplies by it unless its depth_scale
    # parameter overrides it
    depth_scale: float = 1.0
    batch: int = 1
    dynamic_batch: bool = False
    max_batch: int = 1                 # top of TensorRT's optimisation profile for a dynamic-batch export
    external_data: str = ""            # name of the one external-data file beside the ONNX ("" = none)
    opset: int = 0
    precision: str = "fp32"
    checkpoint_sha256: str = ""
    model_sha256: str = ""
    intrinsics_convention: str = INTRINSICS_CONVENTION
    version: int = SIDECAR_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: ModelPreset, **kw) -> "ModelMetadata":
        return cls(preset=preset.to_dict(), input_height=preset.height, input_width=preset.width,
                   output_height=preset.output_height, output_width=preset.output_width,
                   min_depth=preset.min_depth, max_depth=preset.max_depth, input_mean=preset.input_mean,
                   input_std=preset.input_std, **kw)

    @property
    def model_preset(self) -> ModelPreset:
        return ModelPreset.from_dict(self.preset)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "sidecar") -> "ModelMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{where} is not valid JSON: {exc}") from exc
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("preset", "input_height", "input_width", "output_height", "output_width",
                               "min_depth", "max_depth") if k not in data]
        if missing:
            raise MetadataError(f"{where} lacks {missing}; re-export the model with spidepth-export")
        if data.get("version", 0) > SIDECAR_VERSION:
            raise MetadataError(f"{where} has version {data['version']}; this spidepth_ros reads up to "
                                f"{SIDECAR_VERSION}: upgrade the package")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        if "depth_scale" not in data and isinstance(data.get("extra"), dict):
            kwargs["depth_scale"] = data["extra"].get("depth_scale_hint") or 1.0   # sidecars before the field
        scale = kwargs.get("depth_scale", 1.0)
        if not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise MetadataError(f"{where} has depth_scale {scale!r}; it must be a positive number")
        kwargs["depth_scale"] = float(scale)
        return cls(**kwargs)


def sidecar_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def write_sidecar(model_path: str | Path, meta: ModelMetadata) -> Path:
    from ..files import atomic_write_bytes

    return atomic_write_bytes(sidecar_path(model_path), meta.to_json().encode())


def read_sidecar(model_path: str | Path) -> ModelMetadata:
    path = sidecar_path(model_path)
    if not path.exists():
        raise MetadataError(f"{model_path} has no sidecar {path.name}; models exported with spidepth-export "
                            "come with one (it records input size, normalisation and depth range)")
    return ModelMetadata.from_json(path.read_text(), str(path))


def model_files(model_path: str | Path) -> list[Path]:
    """The model file and, for an ONNX with external weights, its one ``<name>.data`` file beside it."""
    model_path = Path(model_path)
    data = model_path.with_name(model_path.name + ".data")
    return [model_path, data] if model_path.suffix == ".onnx" and data.exists() else [model_path]


def model_sha256(model_path: str | Path) -> str:
    """sha256 over the model file and its external data: a changed weights file changes the hash."""
    from ..files import files_sha256

    return files_sha256(model_files(model_path))


def check_model_hash(meta: ModelMetadata, model_path: Path, actual_sha256: Optional[str]) -> None:
    if meta.model_sha256 and actual_sha256 and meta.model_sha256 != actual_sha256:
        raise MetadataError(f"{model_path} does not match its sidecar (sha256 {actual_sha256[:12]} vs recorded "
                            f"{meta.model_sha256[:12]}): the model was replaced without its sidecar; re-export")
