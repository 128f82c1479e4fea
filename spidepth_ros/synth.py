"""``spidepth-synth``: render a textured 3-D scene along a moving camera and write a rosbag2 with ground truth.

A small numpy ray caster (no GPU, no downloads): a textured ground plane, textured boxes of many sizes at
many distances, and a textured cylindrical backdrop (so every pixel has a finite depth), seen from a camera
that drives a smooth path with turns. Lighting is fixed Lambertian, so photometric consistency holds between
frames, as self-supervised training assumes.

World frame: x right, y **down**, z forward (the camera optical frame at the start pose); the ground is the
plane ``y = camera_height``. Topics written: ``<ns>/image_raw`` (rgb8), ``<ns>/camera_info`` and
``<ns>/depth`` (32FC1 metres, Z along the optical axis).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .geometry import PinholeIntrinsics

TEXTURE_SIZE = 128
ARENA_RADIUS = 38.0          # metres: the backdrop; Z-depth stays below ~60 m (most below 40 m)
CAMERA_HEIGHT = 1.5          # metres above the ground
LIGHT_DIR = np.array([0.4, -0.8, 0.45]) / np.linalg.norm([0.4, -0.8, 0.45])  # towards the light (y down)


@dataclass(frozen=True)
class SynthConfig:
    """Scene and camera settings. Sizes in pixels, distances in metres, time in seconds."""

    width: int = 400
    height: int = 120
    horizontal_fov_deg: float = 90.0
    frames: int = 200
    rate_hz: float = 10.0
    speed: float = 4.0            # m/s along the path
    num_boxes: int = 70
    seed: int = 0
    namespace: str = "/camera"
    frame_id: str = "camera_optical_frame"
    stereo_baseline: float = 0.0  # metres; > 0 also renders a right camera (<namespace>_right/...)

    @property
    def intrinsics(self) -> PinholeIntrinsics:
        fx = (self.width / 2) / np.tan(np.radians(self.horizontal_fov_deg) / 2)
        return PinholeIntrinsics(fx, fx, (self.width - 1) / 2, (self.height - 1) / 2, self.width, self.height)


def _value_noise_texture(rng: np.random.Generator, base_rgb: np.ndarray) -> np.ndarray:
    """``[T, T, 3]`` float texture: multi-octave tileable value noise tinted by ``base_rgb``."""
    import cv2

    tex = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE), np.float32)
    for octave, amp in ((4, 0.5), (8, 0.3), (16, 0.2), (32, 0.15)):
        grid = rng.random((octave, octave)).astype(np.float32)
        tiled = np.tile(grid, (3, 3))
        up = cv2.resize(tiled, (3 * TEXTURE_SIZE, 3 * TEXTURE_SIZE), interpolation=cv2.INTER_CUBIC)
        tex += amp * up[TEXTURE_SIZE:2 * TEXTURE_SIZE, TEXTURE_SIZE:2 * TEXTURE_SIZE]
    tex = (tex - tex.min()) / (tex.max() - tex.min() + 1e-6)
    return np.clip(base_rgb[None, None, :] * (0.35 + 0.9 * tex[..., None]), 0, 1)


def _sample(tex: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Tile-wrapped bilinear lookup of texture coordinates (in texels)."""
    s0 = np.floor(s).astype(np.int64)
    t0 = np.floor(t).astype(np.int64)
    fs = (s - s0)[..., None]
    ft = (t - t0)[..., None]
    n = TEXTURE_SIZE
    a, b = tex[t0 % n, s0 % n], tex[t0 % n, (s0 + 1) % n]
    c, d = tex[(t0 + 1) % n, s0 % n], tex[(t0 + 1) % n, (s0 + 1) % n]
    return (a * (1 - fs) + b * fs) * (1 - ft) + (c * (1 - fs) + d * fs) * ft


class Scene:
    """Boxes on a ground plane inside a cylindrical backdrop, with one texture per surface."""

    def __init__(self, rng: np.random.Generator, num_boxes: int, path_xz: np.ndarray) -> None:
        self.ground_tex = _value_noise_texture(rng, np.array([0.55, 0.5, 0.42]))
        self.wall_tex = _value_noise_texture(rng, np.array([0.5, 0.6, 0.8]))
        boxes, textures = [], []
        tries = 0
        while len(boxes) < num_boxes and tries < num_boxes * 50:
            tries += 1
            cx, cz = rng.uniform(-ARENA_RADIUS * 0.8, ARENA_RADIUS * 0.8, size=2)
            sx, sz = rng.uniform(0.6, 4.0, size=2)
            height = rng.uniform(0.8, 6.0)
            # keep a 2.5 m corridor free around the driven path
            if np.min(np.hypot(path_xz[:, 0] - cx, path_xz[:, 1] - cz)) < 2.5 + max(sx, sz) / 2 * 1.5:
                continue
            if np.hypot(cx, cz) + max(sx, sz) > ARENA_RADIUS - 1:
                continue
            boxes.append([cx - sx / 2, CAMERA_HEIGHT - height, cz - sz / 2, cx + sx / 2, CAMERA_HEIGHT, cz + sz / 2])
            textures.append(_value_noise_texture(rng, rng.uniform(0.25, 1.0, size=3)))
        self.boxes = np.array(boxes, dtype=np.float64).reshape(-1, 6)
        self.box_textures = textures

    def render(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cast rays ``origin + t * d`` (``d`` [N, 3] world, unit z in camera) -> (rgb [N, 3] float, t [N])."""
        n = directions.shape[0]
        best_t = np.full(n, np.inf)
        color = np.zeros((n, 3))
        # cylindrical backdrop x^2 + z^2 = R^2 (inside hit)
        dx, dz = directions[:, 0], directions[:, 2]
        a = dx * dx + dz * dz
        b = 2 * (origin[0] * dx + origin[2] * dz)
        c = origin[0] ** 2 + origin[2] ** 2 - ARENA_RADIUS ** 2
        t_wall = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0))) / (2 * a + 1e-12)
        p = origin + t_wall[:, None] * directions
        ang = np.arctan2(p[:, 2], p[:, 0])
        tex = _sample(self.wall_tex, ang * ARENA_RADIUS * 6.0, p[:, 1] * 6.0)
        normal_light = 0.55 + 0.45 * np.abs(np.cos(ang))
        best_t, color = t_wall, tex * normal_light[:, None]
        # ground plane y = CAMERA_HEIGHT
        dy = directions[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(dy > 1e-6, (CAMERA_HEIGHT - origin[1]) / dy, np.inf)
        hit = t_ground < best_t
        if hit.any():
            p = origin + t_ground[hit, None] * directions[hit]
            shade = max(float(-LIGHT_DIR[1]), 0.2)
            color[hit] = _sample(self.ground_tex, p[:, 0] * 10.0, p[:, 2] * 10.0) * shade
            best_t = np.where(hit, t_ground, best_t)
        # boxes (slab method)
        inv = 1.0 / np.where(np.abs(directions) < 1e-12, 1e-12, directions)
        forward = directions.mean(axis=0)
        for box, tex in zip(self.boxes, self.box_textures):
            corners = np.array([[box[i], box[1 + j], box[2 + k]] for i in (0, 3) for j in (0, 3) for k in (0, 3)])
            if np.all((corners - origin) @ forward <= 0):     # entirely behind the camera
                continue
            t1 = (box[:3] - origin) * inv
            t2 = (box[3:] - origin) * inv
            tmin = np.minimum(t1, t2)
            t_near = tmin.max(axis=1)
            t_far = np.maximum(t1, t2).min(axis=1)
            hit = (t_near <= t_far) & (t_near > 1e-3) & (t_near < best_t)
            if not hit.any():
                continue
            face = tmin[hit].argmax(axis=1)           # 0: x-face, 1: y-face (top), 2: z-face
            p = origin + t_near[hit, None] * directions[hit]
            s = np.where(face == 0, p[:, 2], p[:, 0])
            t = np.where(face == 1, p[:, 2], p[:, 1])
            normals = np.zeros((face.size, 3))
            normals[np.arange(face.size), face] = -np.sign(directions[hit][np.arange(face.size), face])
            shade = 0.35 + 0.65 * np.clip(normals @ LIGHT_DIR, 0, 1)
            color[hit] = _sample(tex, s * 12.0, t * 12.0) * shade[:, None]
            best_t = np.where(hit, t_near, best_t)
        return color, best_t


def camera_path(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[N, 2]`` (x, z) and yaw ``[N]`` (radians, about +y) of a smooth wandering drive."""
    dt = 1.0 / cfg.rate_hz
    yaw_rate_knots = rng.uniform(-0.5, 0.5, size=max(cfg.frames // 20 + 2, 2))
    knots_t = np.linspace(0, cfg.frames, yaw_rate_knots.size)
    yaw_rate = np.interp(np.arange(cfg.frames), knots_t, yaw_rate_knots)
    yaw = rng.uniform(-np.pi, np.pi) + np.cumsum(yaw_rate * dt)
    pos = np.zeros((cfg.frames, 2))
    start_r = rng.uniform(0, ARENA_RADIUS * 0.3)
    start_a = rng.uniform(-np.pi, np.pi)
    pos[0] = [start_r * np.cos(start_a), start_r * np.sin(start_a)]
    for i in range(1, cfg.frames):
        step = cfg.speed * dt * np.array([np.sin(yaw[i]), np.cos(yaw[i])])
        nxt = pos[i - 1] + step
        if np.hypot(*nxt) > ARENA_RADIUS * 0.6:      # turn back towards the centre, smoothly
            to_centre = np.arctan2(-pos[i - 1, 0], -pos[i - 1, 1])
            yaw[i:] += np.clip(np.angle(np.exp(1j * (to_centre - yaw[i]))), -0.25, 0.25)
            nxt = pos[i - 1] + cfg.speed * dt * np.array([np.sin(yaw[i]), np.cos(yaw[i])])
        pos[i] = nxt
    return pos, yaw


@dataclass
class SynthFrame:
    stamp_ns: int
    rgb: np.ndarray        # [H, W, 3] uint8
    depth: np.ndarray      # [H, W] float32 metres
    world_T_cam: np.ndarray  # 4x4
    right_rgb: Optional[np.ndarray] = None   # [H, W, 3] uint8 of the right camera (stereo_baseline > 0)


def render_sequence(cfg: SynthConfig) -> Iterator[SynthFrame]:
    """Deterministic frames for ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    pos, yaw = camera_path(cfg, rng)
    scene = Scene(rng, cfg.num_boxes, pos)
    intr = cfg.intrinsics
    u, v = np.meshgrid(np.arange(cfg.width), np.arange(cfg.height))
    rays_cam = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u, float)], -1).reshape(-1, 3)

    def to_uint8(colour: np.ndarray) -> np.ndarray:
        return (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(cfg.height, cfg.width, 3)

    for i in range(cfg.frames):
        c, s = np.cos(yaw[i]), np.sin(yaw[i])
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])     # camera -> world, yaw about +y (down)
        origin = np.array([pos[i, 0], 0.0, pos[i, 1]])
        rays_world = rays_cam @ rot.T
        rgb, t = scene.render(origin, rays_world)
        # rays have unit z in the camera frame, so the ray parameter t *is* the optical-axis depth
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rot, origin
        right = None
        if cfg.stereo_baseline > 0:     # same orientation, origin moved along the camera's +x
            right = to_uint8(scene.render(origin + rot @ np.array([cfg.stereo_baseline, 0, 0]), rays_world)[0])
        yield SynthFrame(int(round(i * 1e9 / cfg.rate_hz)) + 1_000_000_000, to_uint8(rgb),
                         t.astype(np.float32).reshape(cfg.height, cfg.width), pose, right)


def write_bag(cfg: SynthConfig, out: Path, storage: str = "mcap", compressed: bool = False,
              progress: bool = True, poses: bool = False) -> Path:
    """Render ``cfg`` into a rosbag2 at ``out`` (must not exist). ``poses``: also the true camera pose as
    geometry_msgs/PoseStamped on ``<namespace>/pose`` (frame ``world``), for ``data.pose_topic``."""
    from tqdm import tqdm

    from .bagio import BagWriter

    with BagWriter(out, storage) as writer:
        for frame in tqdm(render_sequence(cfg), total=cfg.frames, desc=f"render {out.name}", disable=not progress,
                          unit="frame"):
            writer.write_camera_frame(cfg.namespace, cfg.frame_id, frame.stamp_ns, frame.rgb, cfg.intrinsics,
                                      depth=frame.depth, compressed=compressed)
            if poses:
                writer.write(f"{cfg.namespace}/pose", writer.pose_msg(frame.stamp_ns, "world", frame.world_T_cam),
                             frame.stamp_ns)
            if frame.right_rgb is not None:
                ns = f"{cfg.namespace}_right"
                writer.write(f"{ns}/image_raw", writer.image_msg(frame.stamp_ns, "camera_right_optical_frame",
                                                                 frame.right_rgb, "rgb8"), frame.stamp_ns)
                writer.write(f"{ns}/camera_info", writer.camera_info_msg(
                    frame.stamp_ns, "camera_right_optical_frame", cfg.intrinsics, baseline=cfg.stereo_baseline),
                    frame.stamp_ns)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", type=Path, help="bag folder to create")
    d = SynthConfig()
    parser.add_argument("--frames", type=int, default=d.frames)
    parser.add_argument("--seed", type=int, default=d.seed, help="scene and path seed (deterministic)")
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--rate", type=float, default=d.rate_hz, help="frames per second (stamps)")
    parser.add_argument("--speed", type=float, default=d.speed, help="camera speed, m/s")
    parser.add_argument("--boxes", type=int, default=d.num_boxes)
    parser.add_argument("--stereo-baseline", type=float, default=0.0,
                        help="metres; > 0 adds a right camera (<ns>_right/image_raw, camera_info with Tx)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--compressed", action="store_true", help="write image_raw/compressed (png) instead")
    parser.add_argument("--poses", action="store_true", help="also write the true camera pose (<ns>/pose)")
    args = parser.parse_args(argv)
    cfg = SynthConfig(width=args.width, height=args.height, frames=args.frames, rate_hz=args.rate,
                      speed=args.speed, num_boxes=args.boxes, seed=args.seed, stereo_baseline=args.stereo_baseline)
    write_bag(cfg, args.out, args.storage, args.compressed, poses=args.poses)
    print(f"wrote {args.out} ({cfg.frames} frames, seed {cfg.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
