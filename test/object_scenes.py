"""Synthetic scenes of exact depth for the segment, tracking and detection tests.

A 640x480 camera (fx = fy = 525, principal point at the image centre) sees a wall at
z = 4 m and a floor 1.2 m below the camera (y = +1.2 in the optical frame), and in front of
them upright rectangles facing the camera (:class:`Face`): each covers the pixels whose ray
meets it nearer than what is behind, with its class and its exact depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovseg_ros.engine.points import PinholeIntrinsics

HEIGHT, WIDTH = 480, 640
CAMERA = PinholeIntrinsics(525.0, 525.0, 319.5, 239.5, WIDTH, HEIGHT)
NAMES = ("wall", "floor", "box", "person", "chair")
WALL, FLOOR, BOX, PERSON, CHAIR = range(len(NAMES))
WALL_Z, FLOOR_Y = 4.0, 1.2


@dataclass(frozen=True)
class Face:
    """A rectangle facing the camera: x in ``x``, y in ``y`` (metres, optical frame) at depth ``z``."""

    class_id: int
    x: tuple[float, float]
    y: tuple[float, float]
    z: float

    @property
    def center(self) -> np.ndarray:
        return np.array([np.mean(self.x), np.mean(self.y), self.z])


def rays(camera: PinholeIntrinsics = CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float64 ray factors (u - cx) / fx and (v - cy) / fy."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    return (u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy


def render(faces: list[Face], camera: PinholeIntrinsics = CAMERA) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) uint8, depth (H, W) float32 metres) of the wall, the floor and ``faces``."""
    ray_x, ray_y = rays(camera)
    labels = np.full((camera.height, camera.width), WALL, np.uint8)
    depth = np.full((camera.height, camera.width), WALL_Z)
    floor_z = np.divide(FLOOR_Y, ray_y, out=np.full_like(ray_y, np.inf), where=ray_y > 0)
    on_floor = floor_z < WALL_Z
    labels[on_floor], depth[on_floor] = FLOOR, floor_z[on_floor]
    for face in faces:
        x, y = ray_x * face.z, ray_y * face.z
        on_face = (x >= face.x[0]) & (x <= face.x[1]) & (y >= face.y[0]) & (y <= face.y[1]) & (face.z < depth)
        labels[on_face], depth[on_face] = face.class_id, face.z
    return labels, depth.astype(np.float32)


def points_of(mask: np.ndarray, depth: np.ndarray, camera: PinholeIntrinsics = CAMERA) -> np.ndarray:
    """(N, 3) float64 exact points of the pixels of ``mask`` (an independent back-projection)."""
    ray_x, ray_y = rays(camera)
    z = depth[mask].astype(np.float64)
    return np.stack([z * ray_x[mask], z * ray_y[mask], z], axis=1)


def scores_of(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W) float32 winning scores in [0.5, 1)."""
    return (0.5 + 0.5 * np.random.default_rng(seed).random(labels.shape)).astype(np.float32)
