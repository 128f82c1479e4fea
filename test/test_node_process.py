"""depth_node as a process, as a user runs it: lifecycle services driven from this (second) process, the shipped
YAML under a namespace, one FATAL line for bad parameters, quiet exits on SIGINT/SIGTERM (streaming or loading),
and no torch in a node that runs an ONNX model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import requires_ros2
from rosutil import Spinner, wait_for

pytestmark = requires_ros2
REPO = Path(__file__).resolve().parent.parent
W, H = 320, 96


def node_cmd(*ros_args: str) -> list[str]:
    return [sys.executable, "-m", "spidepth_ros.ros.depth_node", "--ros-args", *ros_args]


def reliable(namespace: str) -> list[str]:
    return [a for t in ("image", "camera_info")
            for a in ("-p", f"qos_overrides./{namespace}/{t}.subscription.reliability:=reliable")]


def spawn(args: list[str]) -> subprocess.Popen:
    """Start a node process; its output is read as it comes into ``proc.log`` (a list of lines): a pipe nobody
    reads fills after 64 KiB and then blocks the node's next log call, which hangs whatever thread made it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    proc.log = []
    proc.log_reader = threading.Thread(target=lambda: proc.log.extend(iter(proc.stdout.readline, "")),
                                       daemon=True)
    proc.log_reader.start()
    return proc


def finish(proc: subprocess.Popen, sig=None, timeout: float = 20.0) -> tuple[int, str, float]:
    """Send ``sig`` (if any) and return (exit code, output, seconds to exit)."""
    t0 = time.monotonic()
    if sig is not None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.log_reader.join(timeout=5.0)
        pytest.fail(f"node did not exit within {timeout} s of {sig}:\n{''.join(proc.log)}")
    seconds = time.monotonic() - t0
    proc.log_reader.join(timeout=5.0)
    return proc.returncode, "".join(proc.log), seconds


def assert_quiet_exit(code: int, out: str) -> None:
    assert code == 0, out
    for bad in ("Traceback", "Failed to publish", "context is invalid", "FATAL", "dropping frame"):
        assert bad not in out, out


class Camera:
    """A camera publisher and a depth subscriber under one namespace, in this process."""

    def __init__(self, context, namespace: str) -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, Image

        self.node = Node("test_camera", namespace=namespace, context=context)
        self.pub = self.node.create_publisher(Image, "image", 10)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.depth: list = []
        self.node.create_subscription(Image, "depth/image", self.depth.append, 10)
        self.rgb = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
        self.count = 0

    def publish(self) -> None:
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import Header

        self.count += 1
        header = Header(stamp=Time(sec=1000 + self.count), frame_id="cam")
        self.pub_info.publish(CameraInfo(header=header, width=W, height=H, k=[100.0, 0, 160, 0, 100.0, 48, 0, 0, 1],
                                         p=[100.0, 0, 160, 0, 0, 100.0, 48, 0, 0, 0, 1, 0]))
        self.pub.publish(Image(header=header, height=H, width=W, encoding="rgb8", step=W * 3,
                               data=self.rgb.tobytes()))


@contextmanager
def node_process_and_camera(context, namespace: str, *ros_args: str):
    """A depth_node process under ``namespace`` and a :class:`Camera` beside it; both torn down afterwards."""
    proc = spawn(node_cmd("-r", f"__ns:=/{namespace}", *ros_args, *reliable(namespace)))
    cam = Camera(context, namespace)
    spinner = Spinner(context, cam.node)
    try:
        yield proc, cam
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        spinner.stop()
        cam.node.destroy_node()


#: Lifecycle transition label -> the state it ends in.
TRANSITION_GOALS = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
                    "cleanup": "unconfigured", "shutdown": "finalized"}
#: A service answer not back within this is re-asked: DDS can lose the first response when wait_for_service
#: returns before the server has matched the client's response reader (nav2's lifecycle clients re-send too).
SERVICE_RETRY_S = 5.0
SERVICE_ATTEMPTS = 8


def call_service(client, request):
    """The response to ``request``, re-sent every SERVICE_RETRY_S s until one arrives (None after all tries)."""
    assert client.wait_for_service(timeout_sec=30.0)
    for _ in range(SERVICE_ATTEMPTS):
        future = client.call_async(request)
        if wait_for(future.done, SERVICE_RETRY_S):
            return future.result()
        client.remove_pending_request(future)
        note_lost_answer(f"{client.srv_name}: no answer in {SERVICE_RETRY_S:g} s, asking again")
    return None


def note_lost_answer(text: str) -> None:
    """Record a lost service answer where bench/soak_node_process.py reads them (SPIDEPTH_LOST_ANSWERS_LOG)."""
    path = os.environ.get("SPIDEPTH_LOST_ANSWERS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def lifecycle_call(node, namespace: str, transition: str | None):
    """ChangeState (by label) or GetState through the node's standard lifecycle services, robust to a lost answer.

    GetState is simply asked again. A ChangeState whose answer was lost may still have happened, and sending it
    again would then be refused as an invalid transition: ask the state first and take the goal state as done.
    """
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    if transition is None:
        client = node.create_client(GetState, f"/{namespace}/depth_node/get_state")
        try:
            result = call_service(client, GetState.Request())
        finally:
            node.destroy_client(client)
        assert result is not None, f"no answer from /{namespace}/depth_node/get_state"
        return result.current_state.label
    ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
           "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
           "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}
    client = node.create_client(ChangeState, f"/{namespace}/depth_node/change_state")
    try:
        assert client.wait_for_service(timeout_sec=30.0)
        for _ in range(SERVICE_ATTEMPTS):
            future = client.call_async(ChangeState.Request(transition=Transition(id=ids[transition])))
            if wait_for(future.done, SERVICE_RETRY_S):
                return future.result().success
            client.remove_pending_request(future)
            happened = lifecycle_call(node, namespace, None) == TRANSITION_GOALS[transition]
            note_lost_answer(f"change_state {transition} under /{namespace}: no answer in {SERVICE_RETRY_S:g} s; "
                             f"the node {'had made' if happened else 'had not made'} the transition")
            if happened:
                return True                       # the node did it; only its answer was lost
    finally:
        node.destroy_client(client)
    raise AssertionError(f"no answer from /{namespace}/depth_node/change_state ({transition})")



def test_lifecycle_driven_from_another_process(ros_context, small_onnx):
    ns = "lifecycle"
    with node_process_and_camera(ros_context, ns, "-p", f"model_path:={small_onnx}", "-p", "backend:=onnxruntime",
                                 "-p", "autostart:=false") as (proc, cam):
        assert lifecycle_call(cam.node, ns, None) == "unconfigured"
        assert cam.node.count_publishers(f"/{ns}/depth/image") == 0
        assert lifecycle_call(cam.node, ns, "configure")
        assert lifecycle_call(cam.node, ns, None) == "inactive"
        assert wait_for(lambda: cam.node.count_publishers(f"/{ns}/depth/image") == 1)
        assert cam.pub.get_subscription_count() == 0               # inactive: not subscribed to the camera
        assert lifecycle_call(cam.node, ns, "activate")
        assert lifecycle_call(cam.node, ns, None) == "active"
        assert wait_for(lambda: cam.pub.get_subscription_count() == 1)
        cam.publish()
        assert wait_for(lambda: len(cam.depth) == 1)
        assert lifecycle_call(cam.node, ns, "deactivate")
        assert wait_for(lambda: cam.pub.get_subscription_count() == 0)
        cam.publish()
        time.sleep(1.0)
        assert len(cam.depth) == 1                                 # inactive: nothing published
        assert lifecycle_call(cam.node, ns, "cleanup")
        assert lifecycle_call(cam.node, ns, None) == "unconfigured"
        assert wait_for(lambda: cam.node.count_publishers(f"/{ns}/depth/image") == 0)
        assert lifecycle_call(cam.node, ns, "configure") and lifecycle_call(cam.node, ns, "activate")
        assert wait_for(lambda: cam.pub.get_subscription_count() == 1)
        cam.publish()
        assert wait_for(lambda: len(cam.depth) == 2)
        assert lifecycle_call(cam.node, ns, "deactivate") and lifecycle_call(cam.node, ns, "shutdown")
        assert lifecycle_call(cam.node, ns, None) == "finalized"
        code, out, _ = finish(proc, signal.SIGTERM)
        assert_quiet_exit(code, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGTERM])
def test_signal_while_streaming_exits_zero_quietly(ros_context, small_onnx, sig):
    ns = f"stream_{sig.name.lower()}_{time.monotonic_ns() % 100000}"
    with node_process_and_camera(ros_context, ns, "-p", f"model_path:={small_onnx}",
                                 "-p", "backend:=onnxruntime") as (proc, cam):
        assert wait_for(lambda: cam.pub.get_subscription_count() == 1, 30)
        for _ in range(10):
            cam.publish()
            time.sleep(0.03)
        assert wait_for(lambda: len(cam.depth) >= 1)
        for _ in range(5):                   # the signal lands while frames are being processed
            cam.publish()
        code, out, _ = finish(proc, sig)
        assert_quiet_exit(code, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_model_load_exits_zero_quickly(small_checkpoint, sig):
    """A torch checkpoint takes seconds to load (importing torch alone): a signal then stops it at once."""
    proc = spawn(node_cmd("-r", "__ns:=/loading", "-p", f"model_path:={small_checkpoint}", "-p", "backend:=torch"))
    assert wait_for(lambda: "loading model" in "".join(proc.log) or proc.poll() is not None, 30, period=0.005)
    assert "loading model" in "".join(proc.log), "".join(proc.log)
    code, out, seconds = finish(proc, sig)
    assert_quiet_exit(code, out)
    assert f"{sig.name} during start-up" in out
    assert seconds < 5.0


@pytest.mark.parametrize("arg,names", [
    ("model_path:=''", ("model_path", "empty")), ("backend:=banana", ("backend", "onnxruntime")),
    ("depth_scale:=-1.0", ("depth_scale=-1.0", "[0.0,")), ("max_range:=80", ("max_range", "double")),
    ("cloud_stride:=0", ("cloud_stride", "[1, 64]")), ("device:=banana", ("device", "cuda:N")),
    ("model_path:=/no/such.onnx", ("/no/such.onnx", "does not exist")),
    ("adapt:=true", ("adapt", "adapt_model")), ("adapt_max_share:=0.0", ("adapt_max_share", "[0.01,")),
    ("adapt_device:=gpu", ("adapt_device", "cuda:N"))])
def test_bad_parameters_give_one_fatal_line_and_exit_1(small_onnx, arg, names):
    args = ["-p", f"model_path:={small_onnx}", "-p", arg] if not arg.startswith("model_path") else ["-p", arg]
    proc = spawn(node_cmd("-r", "__ns:=/badparam", "-p", "backend:=onnxruntime", *args)
                 if "backend" not in arg else node_cmd("-r", "__ns:=/badparam", *args))
    code, out, _ = finish(proc)
    lines = [x for x in out.splitlines() if x.strip()]
    assert code == 1, out
    assert "Traceback" not in out and len([x for x in lines if "FATAL" in x]) == 1, out
    fatal = next(x for x in lines if "FATAL" in x)
    assert all(n in fatal for n in names), fatal
    assert not [x for x in lines if "ERROR" in x], out


def test_onnx_node_does_not_import_torch(small_onnx):
    code = ("import sys, rclpy\n"
            "from rclpy.parameter import Parameter\n"
            "from spidepth_ros.ros.depth_node import DepthNode\n"
            "rclpy.init()\n"
            f"node = DepthNode(namespace='notorch', parameter_overrides=[Parameter('model_path', value={str(small_onnx)!r}),"
            " Parameter('backend', value='auto')])\n"
            "node.start_up()\n"
            "print('TORCH_LOADED', 'torch' in sys.modules, node.pipeline.estimator.name)\n"
            "node.destroy_node(); rclpy.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TORCH_LOADED False onnxruntime" in out.stdout, out.stdout + out.stderr


def test_shipped_yaml_applies_under_a_namespace(tmp_path, small_onnx):
    """The launch file passes config/depth.yaml to a node in the user's namespace: its values must arrive."""
    import rclpy

    from spidepth_ros.ros.depth_node import DepthNode

    data = yaml.safe_load((REPO / "config" / "depth.yaml").read_text())
    data["/**"]["ros__parameters"].update(depth_scale=3.5, model_path=str(small_onnx), cloud_stride=2)
    params_file = tmp_path / "depth.yaml"
    params_file.write_text(yaml.safe_dump(data))
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params_file)])
    try:
        node = DepthNode(namespace="robot1", context=context)
        assert node.get_fully_qualified_name() == "/robot1/depth_node"
        assert (node.params.depth_scale, node.params.cloud_stride, node.params.model_path) == \
            (3.5, 2, str(small_onnx))
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


SIGNAL_DURING_IMPORT = """
import importlib.abc, os, runpy, signal, sys

class SignalOnImport(importlib.abc.MetaPathFinder):
    # sends the signal to this process when rclpy is first imported: in the middle of the node's heavy imports
    def find_spec(self, name, path, target=None):
        if name == "rclpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{sig})
        return None

sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["depth_node", "--ros-args", "-r", "__ns:=/early", "-p", "model_path:={model}"]
{run}
"""


@pytest.mark.parametrize("entry", ["python -m", "console script"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_imports_exits_zero_quietly(small_onnx, sig, entry):
    """A signal before the node has imported rclpy (the first quarter second) ends the process with exit 0 and no
    traceback, through `python -m` and through the console script the launch file runs."""
    run = ("runpy.run_module('spidepth_ros.ros.depth_node', run_name='__main__', alter_sys=True)"
           if entry == "python -m" else
           "from spidepth_ros.ros.entry import depth_node_main\nsys.exit(depth_node_main())")
    code = SIGNAL_DURING_IMPORT.format(sig=sig.name, model=small_onnx, run=run)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert_quiet_exit(proc.returncode, out)
    assert f"{sig.name} during start-up: exiting" in out, out
    assert "loading model" not in out, out


def test_camera_height_scale_gives_metres_over_dds(ros_context, tmp_path):
    """depth_node as a process with scale_source camera_height, fed a synthetic drive (camera 1.5 m above a flat
    floor) over DDS, running a model whose own scale is 3x off: the published depth, not median-scaled, scores
    an AbsRel within 15 % of the median-scaled one, moves less from frame to frame (same surfaces, true motion)
    than each frame's own floor fit would, and /diagnostics reports the floor-fit state."""
    import dataclasses

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image

    from spidepth_ros.export import export_onnx
    from spidepth_ros.ground_scale import floor_plane
    from spidepth_ros.metrics import EvalSettings, evaluate_frame, scale_consistency
    from spidepth_ros.runtime.metadata import read_sidecar, write_sidecar
    from spidepth_ros.synth import CAMERA_HEIGHT, SynthConfig, render_sequence

    onnx_path, _ = export_onnx(REPO / "models" / "demo_small.pt", tmp_path / "demo.onnx")
    write_sidecar(onnx_path, dataclasses.replace(read_sidecar(onnx_path), depth_scale=0.35))   # 3x off
    cfg = SynthConfig(width=320, height=96, frames=24, seed=300)
    frames = list(render_sequence(cfg))
    ns = "height_scale"
    proc = spawn(node_cmd("-r", f"__ns:=/{ns}", "-p", f"model_path:={onnx_path}", "-p", "backend:=onnxruntime",
                          "-p", "scale_source:=camera_height", "-p", f"camera_height:={CAMERA_HEIGHT}",
                          "-p", "diagnostics_period:=0.5", "-p", "max_range:=200.0", *reliable(ns)))
    from rclpy.node import Node

    peer = Node("height_peer", namespace=ns, context=ros_context)
    pub, pub_info = peer.create_publisher(Image, "image", 10), peer.create_publisher(CameraInfo, "camera_info", 10)
    depth, infos, diags = {}, {}, []
    peer.create_subscription(Image, "depth/image", lambda m: depth.__setitem__(m.header.stamp.sec, m), 10)
    peer.create_subscription(CameraInfo, "depth/camera_info", lambda m: infos.__setitem__(m.header.stamp.sec, m), 10)
    peer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    spinner = Spinner(ros_context, peer)
    try:
        # both publishers matched before the first frame: a camera_info sent before the node's info subscription is
        # discovered is lost, and frame 0 then never gets one (a CI run waited 30 s for it)
        assert wait_for(lambda: pub.get_subscription_count() == 1 and pub_info.get_subscription_count() == 1, 60)
        k = cfg.intrinsics.matrix()
        for i, f in enumerate(frames):
            from builtin_interfaces.msg import Time
            from std_msgs.msg import Header

            header = Header(stamp=Time(sec=2000 + i), frame_id="cam")
            pub_info.publish(CameraInfo(header=header, width=320, height=96, k=k.ravel().tolist(),
                                        p=np.hstack([k, np.zeros((3, 1))]).ravel().tolist()))
            time.sleep(0.05)
            pub.publish(Image(header=header, height=96, width=320, encoding="rgb8", step=960, data=f.rgb.tobytes()))
            assert wait_for(lambda: 2000 + i in depth and 2000 + i in infos, 30), f"frame {i}"
        published = [np.frombuffer(bytes(depth[2000 + i].data), "<f4").reshape(48, 160) for i in range(len(frames))]
        info = infos[2000]
        from spidepth_ros.geometry import PinholeIntrinsics

        intr = PinholeIntrinsics(info.p[0], info.p[5], info.p[2], info.p[6], info.width, info.height)
        settings = EvalSettings(max_depth=80.0)
        node_rows = [evaluate_frame(f.depth, d, dataclasses.replace(settings, median_scaling=False))
                     for f, d in zip(frames[5:], published[5:])]
        median_rows = [evaluate_frame(f.depth, d, settings) for f, d in zip(frames[5:], published[5:])]
        node_abs_rel = np.mean([r["abs_rel"] for r in node_rows])
        median_abs_rel = np.mean([r["abs_rel"] for r in median_rows])
        assert abs(node_abs_rel - median_abs_rel) <= 0.15 * median_abs_rel, (node_abs_rel, median_abs_rel)
        rel = [np.linalg.inv(frames[i + 1].world_T_cam) @ frames[i].world_T_cam for i in range(len(frames) - 1)]
        rng = np.random.default_rng(0)
        per_frame = []
        for d in published:           # each frame scaled by its own floor fit alone (what the filter smooths)
            plane = floor_plane(d, intr, rng)
            per_frame.append(d * CAMERA_HEIGHT / plane.distance if plane is not None else np.full_like(d, np.nan))
        filtered = scale_consistency(published[5:], rel[5:], intr)["p95_abs_log_ratio"]
        unfiltered = scale_consistency(per_frame[5:], rel[5:], intr)["p95_abs_log_ratio"]
        assert filtered < unfiltered, (filtered, unfiltered)
        assert wait_for(lambda: any(kv.key == "scale_state" and kv.value in ("floor", "held")
                                    for m in diags for st in m.status for kv in st.values), 5)
        last = {kv.key: kv.value for kv in diags[-1].status[0].values}
        assert last["scale_source"] == "camera_height" and float(last["floor_fit_share"]) > 0.8
        assert float(last["depth_scale"]) == pytest.approx(0.35 * 3, rel=0.25)
        code, out, _ = finish(proc, signal.SIGINT)
        assert_quiet_exit(code, out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        spinner.stop()
        peer.destroy_node()
