"""rosbag2 reading and writing with ``rosbags`` (no ROS install needed; sqlite3 and mcap).

Reading yields camera frames in header-stamp order with their CameraInfo; writing is used by the synthetic
generator and the tests. Errors name the bag, the topic and what exists instead.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .camera_model import CameraCalibration  # noqa: F401  (re-exported for training)
from .encodings import decode_color_image, decode_compressed, depth_to_metres, image_to_array
from .geometry import PinholeIntrinsics

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class BagError(ValueError):
    """A bag cannot be used; the message says which bag/topic and what to do."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def check_bag_path(path: str | Path) -> Path:
    """Refuse a path that cannot be a rosbag2 (missing, or a folder without metadata.yaml), naming it."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        raise BagError(f"{path} has no metadata.yaml: not a rosbag2 folder (record with `ros2 bag record`)")
    return path


@contextmanager
def open_reader(paths: Sequence[Path]):
    """Context manager: an open ``AnyReader`` over one or many bags, with errors naming the bad path."""
    from rosbags.highlevel import AnyReader

    paths = [Path(p) for p in paths]
    for p in paths:
        check_bag_path(p)
    try:
        reader = AnyReader(paths, default_typestore=_typestore())
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for corrupt input
        raise BagError(f"cannot open bag(s) {[str(p) for p in paths]}: {type(exc).__name__}: {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def _connections(reader, topic: str, types: Sequence[str]):
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        available = sorted({f"{c.topic} [{c.msgtype}]" for c in reader.connections})
        raise BagError(f"topic {topic!r} is not in the bag; it has: {available}")
    bad = [c.msgtype for c in conns if c.msgtype not in types]
    if bad:
        raise BagError(f"topic {topic!r} has type {bad[0]}, expected one of {list(types)}")
    return conns


def decode_image_msg(msg, msgtype: str) -> np.ndarray:
    """Image or CompressedImage -> ``[H, W, 3]`` uint8 RGB."""
    if msgtype.endswith("CompressedImage"):
        return decode_compressed(msg.format, msg.data)
    return decode_color_image(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)


def decode_depth_msg(msg) -> np.ndarray:
    """32FC1 / 16UC1 Image -> ``[H, W]`` float32 metres, NaN invalid."""
    arr = image_to_array(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
    return depth_to_metres(arr, msg.encoding)


def read_camera_info(paths: Sequence[Path], topic: str) -> Optional[CameraCalibration]:
    """The first CameraInfo on ``topic`` (None if the topic is absent)."""
    with open_reader(paths) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            return None
        for conn, _, raw in reader.messages(connections=conns):
            return CameraCalibration.from_msg(reader.deserialize(raw, conn.msgtype))
    return None


def iter_images(paths: Sequence[Path], topic: str, depth: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(header stamp ns, array)`` for every message on ``topic``, in recording order.

    Colour topics give ``[H, W, 3]`` uint8 RGB; with ``depth=True``, ``[H, W]`` float32 metres.
    """
    with open_reader(paths) as reader:
        conns = _connections(reader, topic, ("sensor_msgs/msg/Image",) if depth else IMAGE_TYPES)
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            arr = decode_depth_msg(msg) if depth else decode_image_msg(msg, conn.msgtype)
            yield stamp_to_ns(msg.header.stamp), arr


POSE_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
              "geometry_msgs/msg/TransformStamped", "tf2_msgs/msg/TFMessage")


def _pose_matrix(position, orientation) -> np.ndarray:
    from .geometry import quaternion_to_matrix

    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix([orientation.x, orientation.y, orientation.z, orientation.w])
    out[:3, 3] = [position.x, position.y, position.z]
    return out


def read_poses(paths: Sequence[Path], topic: str, frames: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Recorded camera poses: ``(stamps_ns [N], world_T_camera [N, 4, 4])``, sorted by stamp.

    ``topic`` carries nav_msgs/Odometry, geometry_msgs/PoseStamped, PoseWithCovarianceStamped or
    TransformStamped, each the pose of the camera's optical frame in a fixed frame; or /tf (tf2_msgs/TFMessage)
    with ``frames = (fixed_frame, camera_optical_frame)``, of which only transforms directly between those two
    frames are used (no chaining).
    """
    stamps, poses = [], []
    with open_reader(paths) as reader:
        conns = _connections(reader, topic, POSE_TYPES)
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            kind = conn.msgtype.rsplit("/", 1)[-1]
            if kind == "TFMessage":
                if len(frames) != 2:
                    raise BagError(f"{topic} is a tf topic: set data.pose_frames to [fixed_frame, camera_frame]")
                for tf in msg.transforms:
                    if tf.header.frame_id.lstrip("/") == frames[0].lstrip("/") and \
                            tf.child_frame_id.lstrip("/") == frames[1].lstrip("/"):
                        stamps.append(stamp_to_ns(tf.header.stamp))
                        poses.append(_pose_matrix(tf.transform.translation, tf.transform.rotation))
                continue
            if kind == "TransformStamped":
                pose = _pose_matrix(msg.transform.translation, msg.transform.rotation)
            elif kind in ("Odometry", "PoseWithCovarianceStamped"):
                pose = _pose_matrix(msg.pose.pose.position, msg.pose.pose.orientation)
            else:
                pose = _pose_matrix(msg.pose.position, msg.pose.orientation)
            stamps.append(stamp_to_ns(msg.header.stamp))
            poses.append(pose)
    if not stamps:
        raise BagError(f"no poses on {topic}" + (f" between {frames[0]!r} and {frames[1]!r}" if frames else ""))
    order = np.argsort(np.array(stamps), kind="stable")
    return np.array(stamps, np.int64)[order], np.array(poses)[order]


def count_messages(paths: Sequence[Path], topic: str) -> int:
    with open_reader(paths) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


class BagWriter:
    """Minimal rosbag2 writer for camera streams (``storage``: ``mcap`` or ``sqlite3``)."""

    def __init__(self, path: Path, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"storage must be one of {sorted(plugins)}")
        self.path = Path(path)
        self.typestore = _typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        self._conns: dict[str, object] = {}

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def _conn(self, topic: str, msgtype: str):
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        return self._conns[topic]

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        msgtype = msg.__msgtype__
        self._writer.write(self._conn(topic, msgtype), stamp_ns, self.typestore.serialize_cdr(msg, msgtype))

    def header(self, stamp_ns: int, frame_id: str):
        t = self.typestore.types
        stamp = t["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def image_msg(self, stamp_ns: int, frame_id: str, arr: np.ndarray, encoding: str):
        from .encodings import encode_image

        h, w, enc, big, step, data = encode_image(arr, encoding)
        return self.typestore.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, frame_id), height=h, width=w, encoding=enc, is_bigendian=big, step=step,
            data=np.frombuffer(data, np.uint8))

    def compressed_msg(self, stamp_ns: int, frame_id: str, rgb: np.ndarray, fmt: str = "png"):
        import cv2

        ok, buf = cv2.imencode(f".{fmt}", rgb[..., ::-1])
        assert ok
        return self.typestore.types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8", data=buf.ravel())

    def camera_info_msg(self, stamp_ns: int, frame_id: str, intr: PinholeIntrinsics,
                        d: Optional[Sequence[float]] = None, baseline: float = 0.0):
        """CameraInfo; ``baseline`` (metres) sets P's Tx = -fx * baseline, the right camera of a stereo pair."""
        t = self.typestore.types
        k = intr.matrix()
        p = np.zeros((3, 4))
        p[:3, :3] = k
        p[0, 3] = -intr.fx * baseline
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id), height=intr.height, width=intr.width,
            distortion_model="plumb_bob", d=np.asarray(d if d is not None else [0.0] * 5, dtype=np.float64),
            k=k.ravel(), r=np.eye(3).ravel(), p=p.ravel(), binning_x=0, binning_y=0, roi=roi)

    def pose_msg(self, stamp_ns: int, frame_id: str, world_t_camera: np.ndarray):
        """geometry_msgs/PoseStamped of the camera in ``frame_id`` (the fixed frame)."""
        from .geometry import matrix_to_quaternion

        t = self.typestore.types
        x, y, z, w = matrix_to_quaternion(world_t_camera[:3, :3])
        px, py, pz = (float(v) for v in world_t_camera[:3, 3])
        return t["geometry_msgs/msg/PoseStamped"](
            header=self.header(stamp_ns, frame_id),
            pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=px, y=py, z=pz),
                                             orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))

    def write_camera_frame(self, namespace: str, frame_id: str, stamp_ns: int, rgb: np.ndarray,
                           intr: PinholeIntrinsics, depth: Optional[np.ndarray] = None,
                           compressed: bool = False, image_encoding: str = "rgb8") -> None:
        """Image (or its compressed form), CameraInfo and optional 32FC1 depth, all with the same stamp."""
        if compressed:
            self.write(f"{namespace}/image_raw/compressed", self.compressed_msg(stamp_ns, frame_id, rgb), stamp_ns)
        else:
            arr = rgb[..., ::-1] if image_encoding == "bgr8" else rgb
            self.write(f"{namespace}/image_raw", self.image_msg(stamp_ns, frame_id, arr, image_encoding), stamp_ns)
        self.write(f"{namespace}/camera_info", self.camera_info_msg(stamp_ns, frame_id, intr), stamp_ns)
        if depth is not None:
            self.write(f"{namespace}/depth", self.image_msg(stamp_ns, frame_id, depth.astype(np.float32), "32FC1"),
                       stamp_ns)
