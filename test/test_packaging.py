"""`training/` is importable as spidepth_ros.training after pip install ., and after colcon build (plain and
--symlink-install); the ament index, launch and config files are installed where ros2 expects them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMPORT_CHECK = ("import spidepth_ros.training.cli, spidepth_ros.training.losses, spidepth_ros.ros.params, "
                "spidepth_ros.training as t; print(t.__file__)")


def run_clean(cmd, cwd, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(env_extra or {})
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def copy_source(dst: Path) -> Path:
    src = dst / "src" / "spidepth_ros"
    top_level = {".venv", ".git", ".cache", "runs", "data", "demo_output", "build", "install", "log", "models"}

    def ignore(directory, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skip | (top_level & set(names) if Path(directory) == REPO else set())

    shutil.copytree(REPO, src, ignore=ignore)
    (src / "models").mkdir()
    shutil.copy(REPO / "models" / "demo_small.pt", src / "models" / "demo_small.pt")
    return src


def test_pip_install_non_editable(tmp_path):
    src = copy_source(tmp_path)
    target = tmp_path / "site"
    r = run_clean([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                   str(target), str(src)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "spidepth_ros" / "training" / "losses.py").exists()
    r = run_clean([sys.executable, "-c", IMPORT_CHECK], tmp_path, {"PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(target) in r.stdout


@pytest.mark.parametrize("symlink", [False, True])
def test_colcon_build(tmp_path, symlink):
    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    copy_source(tmp_path)
    cmd = [str(colcon), "build", "--base-paths", "src"] + (["--symlink-install"] if symlink else [])
    r = run_clean(cmd, tmp_path, {"PATH": f"{colcon.parent}:{os.environ.get('PATH', '')}"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    share = tmp_path / "install" / "spidepth_ros" / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "spidepth_ros").exists()
    assert (share / "spidepth_ros" / "launch" / "depth.launch.py").exists()
    assert (share / "spidepth_ros" / "config" / "depth.yaml").exists()
    assert (share / "spidepth_ros" / "config" / "spidepth.rviz").exists()
    lib = tmp_path / "install" / "spidepth_ros" / "lib"
    assert (lib / "spidepth_ros" / "depth_node").exists() and (lib / "spidepth_ros" / "spidepth_train").exists()
    site = next(lib.glob("python3*/site-packages"))
    r = run_clean([sys.executable, "-c", IMPORT_CHECK], tmp_path, {"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    # the demo weights are installed, and an installed spidepth-demo finds them there (not in a checkout)
    installed = share / "spidepth_ros" / "models" / "demo_small.pt"
    assert installed.exists()
    if symlink:                      # a symlink install *is* the checkout: nothing more to find
        return
    shutil.rmtree(tmp_path / "src" / "spidepth_ros" / "models")     # no checkout copy to fall back on
    r = run_clean([sys.executable, "-c", "from spidepth_ros.ros.demo import DEMO_WEIGHTS; print(DEMO_WEIGHTS)"],
                  tmp_path, {"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == installed
