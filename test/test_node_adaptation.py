"""depth_node with ``adapt: true`` as a process over DDS: it keeps publishing every frame while the worker trains
and its accepted weights are swapped in, and when the worker process is killed it goes on with the last good
model and says so in /diagnostics. (The worker's parts, and the guard rejecting a worsened candidate:
test_adaptation.py.)"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from conftest import requires_ros2
from rosutil import CameraFeed, camera_info_msg, wait_for
from test_node_process import assert_quiet_exit, finish, node_cmd, reliable, spawn

pytestmark = requires_ros2
REPO = Path(__file__).resolve().parent.parent


def worker_pids(node_pid: int) -> list[int]:
    """The node's children running multiprocessing's spawn entry (the adaptation worker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == node_pid and "spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def adapting_node(ns: str, tmp_path, *params: str):
    return spawn(node_cmd("-r", f"__ns:=/{ns}", "-p", f"model_path:={REPO / 'models' / 'demo_small.pt'}",
                          "-p", "backend:=torch", "-p", "device:=cpu", "-p", "adapt:=true",
                          "-p", f"adapt_dir:={tmp_path / 'adapted'}", "-p", "diagnostics_period:=0.5",
                          *params, *reliable(ns)))


def synthetic_camera(seed: int, frames: int = 60) -> tuple[list, object]:
    """``frames`` rendered 320x96 synthetic driving frames and their CameraInfo."""
    from spidepth_ros.synth import SynthConfig, render_sequence

    cfg = SynthConfig(width=320, height=96, frames=frames, seed=seed)
    return list(render_sequence(cfg)), camera_info_msg(cfg.intrinsics.matrix(), 320, 96)


def test_adapting_node_swaps_without_dropping_a_frame_and_survives_its_worker(ros_context, tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus

    frames, info = synthetic_camera(21)
    ns = "adapting"
    proc = adapting_node(ns, tmp_path, "-p", "adapt_steps_per_swap:=2", "-p", "adapt_guard_tolerance:=1.0",
                         "-p", "adapt_max_share:=1.0")
    feed = CameraFeed(ros_context, ns, "adapt_peer")
    sent = 0

    def send() -> None:
        nonlocal sent
        assert feed.send(3000 + sent, frames[sent % len(frames)].rgb, info), f"frame {sent} was not published"
        sent += 1

    try:
        assert feed.matched()
        deadline = time.monotonic() + 400
        while not (feed.values().get("adapt_accepted", "0") != "0" and "adapted_" in feed.values().get("model", "")):
            assert time.monotonic() < deadline, feed.values()
            send()
            time.sleep(0.1)                 # a camera's pace: the worker takes each frame
        for _ in range(5):                   # after the swap too
            send()
        assert sorted(feed.depth) == [3000 + i for i in range(sent)]      # every frame published, none dropped
        values = feed.values()
        assert int(values["adapt_steps"]) >= 2 and int(values["adapt_keyframes"]) >= 3, values
        assert Path(values["adapt_last_model"]).is_file()
        ok, message = feed.trigger("depth_node/save_adapted")        # the state a restart continues from
        state_file = tmp_path / "adapted" / "adapted_state.pt"
        assert ok and str(state_file) in message, message
        saved = torch.load(state_file, weights_only=True)
        saved_steps = saved["adaptation"]["steps"]
        assert saved_steps >= 2 and saved["optimizer"]["state"], saved.keys()
        assert len(saved["adaptation"]["buffer"]["rgb"]) >= 3

        pids = worker_pids(proc.pid)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        assert wait_for(lambda: feed.values().get("adapt_state", "").startswith("stopped"), 30), feed.values()
        for _ in range(3):                   # the node goes on with the last good (adapted) model
            send()
        # the diagnostics published after those frames (one from before them may still say "no images")
        assert wait_for(lambda: any("last good model" in st.message for st in feed.statuses(1)), 10), \
            feed.statuses(1)
        assert feed.statuses(1)[-1].level == DiagnosticStatus.WARN
        assert "adapted_" in feed.values()["model"]
        ok, message = feed.trigger("depth_node/save_adapted")        # nobody left to save: told why
        assert not ok and "not running" in message, message
        code, out, _ = finish(proc, signal.SIGINT)
        assert_quiet_exit(code, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        feed.close()

    # a restart from the saved state continues it: its step count, its keyframes
    proc = spawn(node_cmd("-r", f"__ns:=/{ns}", "-p", f"model_path:={state_file}", "-p", "backend:=torch",
                          "-p", "device:=cpu", "-p", "adapt:=true", "-p", f"adapt_dir:={tmp_path / 'again'}",
                          "-p", "diagnostics_period:=0.5", *reliable(ns)))
    feed = CameraFeed(ros_context, ns, "adapt_peer_again")
    try:
        assert feed.matched()
        sent = 0
        assert wait_for(lambda: send() is None and "resumed" in feed.values().get("adapt_resumed", ""), 120,
                        period=0.3), feed.values()
        values = feed.values()
        assert f"at step {saved_steps} with" in values["adapt_resumed"], values
        assert int(values["adapt_steps"]) >= saved_steps, values
        code, out, _ = finish(proc, signal.SIGINT)
        assert_quiet_exit(code, out)
        assert f"adaptation: resumed adapted_state.pt at step {saved_steps}" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        feed.close()


def test_adapting_node_rejects_a_candidate_made_worse_on_purpose(ros_context, tmp_path):
    """A learning rate of 10 wrecks the weights within two steps: the guard rejects every such candidate with
    its reason in /diagnostics and the node goes on running the model it started with."""
    frames, info = synthetic_camera(23)
    ns = "adapting_badly"
    proc = adapting_node(ns, tmp_path, "-p", "adapt_steps_per_swap:=2", "-p", "adapt_learning_rate:=10.0",
                         "-p", "adapt_max_share:=1.0")
    feed = CameraFeed(ros_context, ns, "reject_peer")
    try:
        assert feed.matched()
        sent = 0
        deadline = time.monotonic() + 400
        while int(feed.values().get("adapt_rejected", "0")) < 2:
            assert time.monotonic() < deadline, feed.values()
            assert feed.send(5000 + sent, frames[sent % len(frames)].rgb, info), f"frame {sent}"
            sent += 1
            time.sleep(0.1)
        assert feed.send(5000 + sent, frames[0].rgb, info)
        values = feed.values()
        assert values["adapt_accepted"] == "0", values
        assert values["model"].startswith("demo_small.pt"), values          # never swapped
        reason = values["adapt_last_rejection"]
        assert "photometric" in reason or "spread" in reason or "not finite" in reason, reason
        assert not list((tmp_path / "adapted").glob("adapted_0*.pt"))      # nothing written for a rejected one
        code, out, _ = finish(proc, signal.SIGINT)
        assert_quiet_exit(code, out)
        assert out.count("adaptation: candidate rejected") >= 2, out[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        feed.close()


def test_ctrl_c_stops_an_adapting_node_and_its_worker_quietly(ros_context, tmp_path):
    """SIGINT to the process group (what Ctrl-C in a terminal does) while the worker is alive: exit 0, no
    traceback from either process, and no worker left behind."""
    frames, info = synthetic_camera(22, frames=12)
    ns = "adapting_ctrl_c"
    proc = adapting_node(ns, tmp_path)
    feed = CameraFeed(ros_context, ns, "ctrl_c_peer")
    try:
        assert feed.matched()
        for i, f in enumerate(frames):
            assert feed.send(4000 + i, f.rgb, info), f"frame {i}"
        assert wait_for(lambda: feed.values().get("adapt_state") in ("collecting", "adapting"), 60), feed.values()
        pids = worker_pids(proc.pid)
        assert len(pids) == 1, pids
        os.killpg(proc.pid, signal.SIGINT)
        code, out, _ = finish(proc)
        assert_quiet_exit(code, out)
        assert "KeyboardInterrupt" not in out, out
        assert wait_for(lambda: not Path(f"/proc/{pids[0]}").exists() or
                        "Z" in (Path(f"/proc/{pids[0]}") / "stat").read_text().rsplit(")", 1)[1].split()[0], 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        feed.close()
