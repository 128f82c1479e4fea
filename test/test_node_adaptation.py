"""depth_node with ``adapt: true`` as a process over DDS: it keeps publishing every frame while the worker trains
and its accepted weights are swapped in, and when the worker process is killed it goes on with the last good
model and says so in /diagnostics. (The worker's parts, and the guard rejecting a worsened candidate:
test_adaptation.py.)"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from conftest import requires_ros2
from rosutil import Spinner, wait_for
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


def test_adapting_node_swaps_without_dropping_a_frame_and_survives_its_worker(ros_context, tmp_path):
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from spidepth_ros.synth import SynthConfig, render_sequence

    cfg = SynthConfig(width=320, height=96, frames=60, seed=21)
    frames = list(render_sequence(cfg))
    ns = "adapting"
    proc = spawn(node_cmd("-r", f"__ns:=/{ns}", "-p", f"model_path:={REPO / 'models' / 'demo_small.pt'}",
                          "-p", "backend:=torch", "-p", "device:=cpu", "-p", "adapt:=true",
                          "-p", "adapt_steps_per_swap:=2", "-p", "adapt_guard_tolerance:=1.0",
                          "-p", "adapt_max_share:=1.0", "-p", f"adapt_dir:={tmp_path / 'adapted'}",
                          "-p", "diagnostics_period:=0.5", *reliable(ns)))
    peer = Node("adapt_peer", namespace=ns, context=ros_context)
    pub, pub_info = peer.create_publisher(Image, "image", 10), peer.create_publisher(CameraInfo, "camera_info", 10)
    depth: dict = {}
    diags: list = []
    peer.create_subscription(Image, "depth/image", lambda m: depth.__setitem__(m.header.stamp.sec, m), 10)
    peer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    spinner = Spinner(ros_context, peer)
    k = cfg.intrinsics.matrix()

    def last_values() -> dict:
        mine = [st for m in diags[-4:] for st in m.status if ns in st.name]
        return {kv.key: kv.value for kv in mine[-1].values} if mine else {}

    def send(i: int) -> None:
        header = Header(stamp=Time(sec=3000 + i), frame_id="cam")
        pub_info.publish(CameraInfo(header=header, width=320, height=96, k=k.ravel().tolist(),
                                    p=np.hstack([k, np.zeros((3, 1))]).ravel().tolist()))
        time.sleep(0.02)
        f = frames[i % len(frames)]
        pub.publish(Image(header=header, height=96, width=320, encoding="rgb8", step=960, data=f.rgb.tobytes()))
        assert wait_for(lambda: 3000 + i in depth, 60), f"frame {i} was not published"

    try:
        assert wait_for(lambda: pub.get_subscription_count() == 1 and pub_info.get_subscription_count() == 1, 60)
        sent = 0
        deadline = time.monotonic() + 400
        while not (last_values().get("adapt_accepted", "0") != "0" and "adapted_" in last_values().get("model", "")):
            assert time.monotonic() < deadline, last_values()
            send(sent)
            sent += 1
            time.sleep(0.1)                 # a camera's pace: the worker takes each frame
        for _ in range(5):                   # after the swap too
            send(sent)
            sent += 1
        assert sorted(depth) == [3000 + i for i in range(sent)]      # every frame published, none dropped
        values = last_values()
        assert int(values["adapt_steps"]) >= 2 and int(values["adapt_keyframes"]) >= 3, values
        assert Path(values["adapt_last_model"]).is_file()

        pids = worker_pids(proc.pid)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        assert wait_for(lambda: last_values().get("adapt_state", "").startswith("stopped"), 30), last_values()
        for _ in range(3):                   # the node goes on with the last good (adapted) model
            send(sent)
            sent += 1
        mine = [st for m in diags[-2:] for st in m.status if ns in st.name][-1]
        assert mine.level == DiagnosticStatus.WARN and "last good model" in mine.message, mine.message
        assert "adapted_" in last_values()["model"]
        code, out, _ = finish(proc, signal.SIGINT)
        assert_quiet_exit(code, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        spinner.stop()
        peer.destroy_node()


def test_ctrl_c_stops_an_adapting_node_and_its_worker_quietly(ros_context, tmp_path):
    """SIGINT to the process group (what Ctrl-C in a terminal does) while the worker is alive: exit 0, no
    traceback from either process, and no worker left behind."""
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from spidepth_ros.synth import SynthConfig, render_sequence

    cfg = SynthConfig(width=320, height=96, frames=12, seed=22)
    frames = list(render_sequence(cfg))
    ns = "adapting_ctrl_c"
    proc = spawn(node_cmd("-r", f"__ns:=/{ns}", "-p", f"model_path:={REPO / 'models' / 'demo_small.pt'}",
                          "-p", "backend:=torch", "-p", "device:=cpu", "-p", "adapt:=true",
                          "-p", f"adapt_dir:={tmp_path / 'adapted'}", "-p", "diagnostics_period:=0.5",
                          *reliable(ns)))
    peer = Node("ctrl_c_peer", namespace=ns, context=ros_context)
    pub, pub_info = peer.create_publisher(Image, "image", 10), peer.create_publisher(CameraInfo, "camera_info", 10)
    depth: dict = {}
    diags: list = []
    peer.create_subscription(Image, "depth/image", lambda m: depth.__setitem__(m.header.stamp.sec, m), 10)
    peer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    spinner = Spinner(ros_context, peer)
    k = cfg.intrinsics.matrix()
    try:
        assert wait_for(lambda: pub.get_subscription_count() == 1 and pub_info.get_subscription_count() == 1, 60)
        for i, f in enumerate(frames):
            header = Header(stamp=Time(sec=4000 + i), frame_id="cam")
            pub_info.publish(CameraInfo(header=header, width=320, height=96, k=k.ravel().tolist(),
                                        p=np.hstack([k, np.zeros((3, 1))]).ravel().tolist()))
            time.sleep(0.02)
            pub.publish(Image(header=header, height=96, width=320, encoding="rgb8", step=960, data=f.rgb.tobytes()))
            assert wait_for(lambda: 4000 + i in depth, 60), f"frame {i}"
        assert wait_for(lambda: any(kv.key == "adapt_state" and kv.value in ("collecting", "adapting")
                                    for m in diags[-3:] for st in m.status if ns in st.name for kv in st.values),
                        60)
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
        spinner.stop()
        peer.destroy_node()
