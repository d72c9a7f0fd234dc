"""Turning label maps into images people can read: palette, colour map, overlay."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np

#: Colour of unlabeled pixels in the colour image.
UNLABELED_COLOR = (0, 0, 0)


def class_color(name: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for a class name.

    Derived from a hash of the name alone, so a class keeps its colour when the
    vocabulary around it changes, across runs and machines.
    """
    digest = hashlib.sha256(name.strip().casefold().encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.55 + 0.45 * digest[2] / 255.0
    value = 0.70 + 0.30 * digest[3] / 255.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def index_color(index: int) -> tuple[int, int, int]:
    """Colour of class id ``index``: golden-ratio hue steps keep neighbouring ids apart."""
    hue = (index * 0.6180339887) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def palette(names: list[str], scheme: str = "name") -> np.ndarray:
    """(len(names) + 1, 3) uint8 lookup table; the last row is :data:`UNLABELED_COLOR`.

    ``scheme`` ``"name"``: :func:`class_color`; ``"index"``: :func:`index_color`.
    """
    colors = [class_color(n) for n in names] if scheme == "name" else [index_color(i) for i in range(len(names))]
    return np.array(colors + [UNLABELED_COLOR], dtype=np.uint8)


def colorize(labels: np.ndarray, table: np.ndarray, unlabeled_id: int) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB using ``table`` from :func:`palette`."""
    index = labels.astype(np.int64)
    index[labels == unlabeled_id] = len(table) - 1
    return table[index]


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over the camera image: (H, W, 3) uint8 each -> (H, W, 3) uint8."""
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def confidence_image(confidence: np.ndarray) -> np.ndarray:
    """(H, W) float scores -> (H, W) uint8, score x 255 clipped to 0..255 (SAN's may exceed 1)."""
    return np.clip(confidence * 255.0 + 0.5, 0, 255).astype(np.uint8)
