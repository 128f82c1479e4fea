"""spidepth-infer and spidepth-export command lines."""
from __future__ import annotations

import cv2
import numpy as np

from spidepth_ros.infer_cli import main as infer_main


def test_infer_writes_millimetre_pngs_matching_the_estimator(tmp_path, small_onnx, rng):
    from spidepth_ros.runtime.onnxruntime_backend import OnnxRuntimeDepthEstimator

    img = (rng.random((120, 400, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img[..., ::-1])
    assert infer_main([str(tmp_path / "a.png"), "--model", str(small_onnx), "--out", str(tmp_path / "o"),
                       "--scale", "0.5", "--flip"]) == 0
    mm = cv2.imread(str(tmp_path / "o" / "a_depth.png"), cv2.IMREAD_UNCHANGED)
    assert mm.dtype == np.uint16 and mm.shape == (120, 400)
    with OnnxRuntimeDepthEstimator(small_onnx) as est:
        d = est.infer(img, "input").depth
        d = 0.5 * (d + est.infer(np.ascontiguousarray(img[:, ::-1]), "input").depth[:, ::-1]) * 0.5
    np.testing.assert_allclose(mm, np.rint(d * 1000), atol=1)
    assert cv2.imread(str(tmp_path / "o" / "a_depth_color.png")).shape == (120, 400, 3)


def test_export_cli_writes_onnx_fp16_and_sidecar(tmp_path, small_checkpoint):
    import json

    from spidepth_ros.export import main as export_main

    assert export_main([str(small_checkpoint), "-o", str(tmp_path / "m.onnx")]) == 0
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["preset"]["name"] == "small_r18_96x320" and meta["precision"] == "fp32"
    assert json.loads((tmp_path / "m.fp16.onnx.json").read_text())["precision"] == "fp16"
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 320] and model.graph.output[0].name == "depth"


def test_export_files_get_the_mode_a_plain_open_gives(tmp_path, small_checkpoint):
    """The sidecar must be readable wherever the model is (a node may run as another user): every file the export
    writes gets 0o666 minus the umask, as open() gives, and an atomic rewrite keeps an existing file's mode."""
    import os
    import stat

    from spidepth_ros.export import main as export_main
    from spidepth_ros.files import atomic_write_bytes

    def mode(p):
        return stat.S_IMODE(os.stat(p).st_mode)

    old = os.umask(0o022)
    try:
        assert export_main([str(small_checkpoint), "-o", str(tmp_path / "m.onnx")]) == 0
        written = sorted(p for p in tmp_path.iterdir() if p.is_file())
        assert {p.name for p in written} >= {"m.onnx", "m.onnx.json", "m.fp16.onnx", "m.fp16.onnx.json"}
        assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "new.json", b"{}")
        assert mode(tmp_path / "new.json") == 0o640
        os.chmod(tmp_path / "m.onnx.json", 0o604)                    # a mode its owner chose survives a rewrite
        atomic_write_bytes(tmp_path / "m.onnx.json", b"{}")
        assert mode(tmp_path / "m.onnx.json") == 0o604
    finally:
        os.umask(old)
