"""Test helpers: spin nodes in a background executor and wait for messages with explicit deadlines."""
from __future__ import annotations

import threading
import time
from typing import Callable


class Spinner:
    def __init__(self, context, *nodes) -> None:
        from rclpy.executors import MultiThreadedExecutor

        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, period: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


class CameraFeed:
    """A camera beside a depth_node under ``namespace``: publishes image + camera_info, keeps every depth/image by
    stamp seconds and every /diagnostics message (the node-process tests and bench/adapt_replay.py)."""

    def __init__(self, context, namespace: str, name: str = "camera_feed") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from sensor_msgs.msg import CameraInfo, Image

        self.namespace = namespace
        self.node = Node(name, namespace=namespace, context=context)
        self._clients: dict = {}           # service name -> rclpy Client (see trigger)
        self.pub = self.node.create_publisher(Image, "image", 10)
        self.pub_info = self.node.create_publisher(CameraInfo, "camera_info", 10)
        self.depth: dict = {}
        self.diagnostics: list = []
        self.node.create_subscription(Image, "depth/image", lambda m: self.depth.__setitem__(m.header.stamp.sec, m),
                                      10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.spinner = Spinner(context, self.node)

    def matched(self, timeout: float = 60.0) -> bool:
        """Both inputs subscribed by the node (a camera_info sent before that is lost)."""
        return wait_for(lambda: self.pub.get_subscription_count() == 1 and
                        self.pub_info.get_subscription_count() == 1, timeout)

    def send(self, sec: int, rgb, info, timeout: float = 60.0) -> bool:
        """Publish ``info`` (a CameraInfo, restamped) and the ``[H, W, 3]`` uint8 ``rgb`` at ``sec``; True once
        the depth for it came back."""
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        header = Header(stamp=Time(sec=sec), frame_id="camera")
        info.header = header
        self.pub_info.publish(info)
        time.sleep(0.02)
        h, w = rgb.shape[:2]
        self.pub.publish(Image(header=header, height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes()))
        return wait_for(lambda: sec in self.depth, timeout)

    def statuses(self, last: int = 4) -> list:
        """This namespace's DiagnosticStatus entries among the ``last`` messages, oldest first."""
        return [st for m in self.diagnostics[-last:] for st in m.status if self.namespace in st.name]

    def values(self) -> dict:
        """The key/values of this namespace's newest DiagnosticStatus ({} before the first)."""
        mine = self.statuses()
        return {kv.key: kv.value for kv in mine[-1].values} if mine else {}

    def trigger(self, service: str, timeout: float = 180.0) -> tuple[bool, str]:
        """Call the std_srvs/Trigger ``service`` (relative to the namespace); (success, message).

        One client per service for the feed's life: a client made just before its call can miss a fast answer
        (wait_for_service sees the request reader; the server may not yet have matched the client's reply
        reader, and DDS drops the reply), so the first call on it is the one that waits for discovery."""
        from std_srvs.srv import Trigger

        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self.node.create_client(Trigger, service)
            if not client.wait_for_service(timeout_sec=30.0):
                raise TimeoutError(f"service {service} never appeared")
            time.sleep(1.0)                 # the reply path's discovery (see above)
        future = client.call_async(Trigger.Request())
        if not wait_for(future.done, timeout):
            raise TimeoutError(f"{service} did not answer in {timeout} s")
        return future.result().success, future.result().message

    def close(self) -> None:
        self.spinner.stop()
        self.node.destroy_node()


def camera_info_msg(k, width: int, height: int):
    """A CameraInfo with pinhole ``k`` (3x3) and no distortion."""
    import numpy as np
    from sensor_msgs.msg import CameraInfo

    k = np.asarray(k, float)
    return CameraInfo(width=width, height=height, k=k.ravel().tolist(), distortion_model="plumb_bob", d=[0.0] * 5,
                      r=np.eye(3).ravel().tolist(), p=np.hstack([k, np.zeros((3, 1))]).ravel().tolist())
