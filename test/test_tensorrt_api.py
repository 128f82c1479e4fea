"""The TensorRT backend against the real TensorRT 10 and 11 Python bindings, without a GPU.

The bindings wheels (tensorrt-cu12-bindings) download from PyPI (`make setup` puts one of each major into
.cache/tensorrt-wheels) but cannot import without libnvinfer; the names their pybind11 module registers are
readable in the shared object. Every TensorRT name our backend's source uses must be declared in TENSORRT_API,
and every declared name must exist in each major whose code path uses it."""
from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

from spidepth_ros.runtime import tensorrt_backend as trt_backend

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".cache" / "tensorrt-wheels"
#: variables and attributes of the backend that hold TensorRT objects
TRT_VARIABLES = {"trt", "builder", "network", "parser", "config", "profile", "tensor", "refitter"}
TRT_SELF_ATTRIBUTES = {"engine", "context", "runtime"}


def tensorrt_names_in_source() -> set[str]:
    """Attribute names the backend reads from TensorRT objects (trt.X.Y, builder.f(), self.engine.g(), ...)."""
    tree = ast.parse(Path(trt_backend.__file__).read_text())
    found: set[str] = set()

    def is_trt(expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id in TRT_VARIABLES
        if isinstance(expr, ast.Attribute):
            if expr.attr == "__version__":          # a str: its methods are not TensorRT's
                return False
            if isinstance(expr.value, ast.Name) and expr.value.id == "self":
                return expr.attr in TRT_SELF_ATTRIBUTES
            return is_trt(expr.value)
        if isinstance(expr, ast.Call):
            return is_trt(expr.func)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_trt(node.value):
            found.add(node.attr)
    return found


def test_declared_api_is_exactly_what_the_source_uses():
    used = tensorrt_names_in_source()
    declared = set(trt_backend.TENSORRT_API)
    assert used - declared == set(), f"used but not declared in TENSORRT_API: {sorted(used - declared)}"
    assert declared - used == set(), f"declared but no longer used: {sorted(declared - used)}"


def wheel(major: int) -> Path:
    found = sorted(WHEELS.glob(f"tensorrt_cu12_bindings-{major}.*.whl"))
    if not found:
        pytest.skip(f"no TensorRT {major} bindings wheel in {WHEELS} (make setup downloads it)")
    return found[-1]


def names_in_wheel(path: Path):
    with zipfile.ZipFile(path) as z:
        binary = z.read("tensorrt_bindings/tensorrt.so")
        python = z.read("tensorrt_bindings/__init__.py").decode()

    def has(name: str) -> bool:
        # pybind11 registers names as C strings (the linker may share a tail: "Logger" inside "ILogger")
        return name.encode() + b"\0" in binary or f"def {name}(" in python

    return has


@pytest.mark.parametrize("major", trt_backend.ALL_MAJORS)
def test_every_name_exists_in_the_bindings_of_each_major_that_uses_it(major):
    has = names_in_wheel(wheel(major))
    missing = [name for name, majors in trt_backend.TENSORRT_API.items() if major in majors and not has(name)]
    assert missing == [], f"TensorRT {major} bindings lack {missing}"


def test_the_check_tells_the_majors_apart():
    """The FP16 builder flag exists in 10 and is gone in 11: the check sees the API change it guards against."""
    assert names_in_wheel(wheel(10))("FP16") and not names_in_wheel(wheel(11))("FP16")
    assert trt_backend.TENSORRT_API["FP16"] == (10,) and trt_backend.TENSORRT_API["STRONGLY_TYPED"] == (11,)
