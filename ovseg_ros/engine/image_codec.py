"""Conversion between ROS image message fields and numpy arrays, without cv_bridge.

Works on the fields of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` so it is
testable without ROS and behaves the same on every distro. Every malformed input raises
:class:`ImageError` with a message fit for a log line; nothing here crashes on bad data.

mono16 carries 8 to 16 significant bits, low-aligned (a 12-bit sensor sends 0..4095), and
the message does not say how many. Each frame is scaled to 8 bits by the smallest common
sensor depth (8, 10, 12, 14 or 16 bits) that holds its brightest pixel: 12-bit data is
divided by 4095/255 (about 16), full 16-bit data by 65535/255 = 257. A 16-bit frame whose
pixels all stay below 4096 is therefore stretched like 12-bit data; the models normalise
contrast anyway, and a frame is never clipped.

Compressed images are decoded as stored: EXIF orientation is ignored, as a camera's
``sensor_msgs/Image`` would be, so the labels match the pixel grid the camera sent (and
its ``camera_info``).
"""

from __future__ import annotations

import array

import numpy as np

try:
    import cv2
except ImportError:  # the GPU check machine has no OpenCV (robots do): rgb8 frames decode without it
    cv2 = None

#: Largest image accepted (pixels): 8K UHD. Bigger frames are rejected, not resized.
MAX_PIXELS = 7680 * 4320

#: Common sensor depths, in bits, that mono16 data is assumed to use (see the module doc).
MONO16_DEPTHS = (8, 10, 12, 14, 16)

#: encoding -> (channels, numpy dtype, name of the cv2 conversion to RGB or None)
_ENCODINGS = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, "COLOR_BGR2RGB"),
    "rgba8": (4, np.uint8, "COLOR_RGBA2RGB"),
    "bgra8": (4, np.uint8, "COLOR_BGRA2RGB"),
    "mono8": (1, np.uint8, "COLOR_GRAY2RGB"),
    "mono16": (1, np.uint16, "COLOR_GRAY2RGB"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageError(ValueError):
    """An image message that cannot be decoded; the message says what is wrong."""


def _require_opencv(what: str) -> None:
    """Raise :class:`ImageError` if OpenCV, which ``what`` needs, is not installed."""
    if cv2 is None:
        raise ImageError(f"{what} needs OpenCV (python3-opencv / opencv-python), which is not installed; "
                         "only rgb8 images decode without it")


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(f"image is {width}x{height}: zero size")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image is {width}x{height}: larger than the {MAX_PIXELS} pixel limit")


def decode_image(encoding: str, height: int, width: int, step: int, data: bytes | memoryview, is_bigendian: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> (H, W, 3) uint8 RGB.

    mono16 is scaled to 8 bits by the frame's sensor depth (:func:`mono16_depth`); row
    padding (``step`` > row bytes) is honoured.
    """
    if encoding not in _ENCODINGS:
        raise ImageError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    _check_size(height, width)
    channels, dtype, to_rgb = _ENCODINGS[encoding]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageError(f"{encoding} step {step} is less than width x pixel size = {row_bytes}")
    if len(data) != step * height:
        raise ImageError(f"data is {len(data)} bytes, expected step x height = {step * height}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    pixels = rows.view(np.dtype(dtype).newbyteorder(">" if is_bigendian else "<"))
    pixels = pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)
    if dtype == np.uint16:
        full_scale = (1 << mono16_depth(pixels)) - 1
        pixels = (pixels.astype(np.uint32) * 255 // full_scale).astype(np.uint8)
    if to_rgb is None:
        return np.ascontiguousarray(pixels)
    _require_opencv(f"converting {encoding} to RGB")
    return cv2.cvtColor(np.ascontiguousarray(pixels), getattr(cv2, to_rgb))


def mono16_depth(pixels: np.ndarray) -> int:
    """Bits of a mono16 frame: the smallest of :data:`MONO16_DEPTHS` that holds its maximum."""
    brightest = int(pixels.max())
    return next(bits for bits in MONO16_DEPTHS if brightest < 1 << bits)


def decode_compressed(format_: str, data: bytes) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> (H, W, 3) uint8 RGB, EXIF orientation ignored."""
    if not data:
        raise ImageError(f"compressed image ({format_ or 'no format'}) has no data")
    _require_opencv(f"decoding a compressed image ({format_ or 'no format'})")
    bgr = cv2.imdecode(np.frombuffer(bytes(data), dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ImageError(f"cannot decode compressed image (format {format_!r}, {len(data)} bytes)")
    _check_size(*bgr.shape[:2])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def message_bytes(data: bytes | memoryview | np.ndarray) -> array.array:
    """Bytes for a ``uint8[]`` message field (``Image.data``), copied once.

    rclpy checks every element of a plain ``bytes`` value in Python, holding the GIL for
    about 0.1 s per megabyte; an ``array.array('B')`` is taken as it is.
    """
    if isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data)).cast("B")
    out = array.array("B")
    out.frombytes(data)
    return out


def encode_image(pixels: np.ndarray) -> tuple[str, int, memoryview]:
    """(H, W) uint8/uint16 or (H, W, 3) uint8 RGB -> (encoding, step, data) for ``sensor_msgs/Image``.

    ``data`` is a byte view of the pixels (no copy; :func:`message_bytes` makes the one the
    message needs), little-endian (``is_bigendian`` False).
    """
    if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        encoding = "rgb8"
    elif pixels.ndim == 2 and pixels.dtype == np.uint8:
        encoding = "mono8"
    elif pixels.ndim == 2 and pixels.dtype == np.uint16:
        encoding = "mono16"
        pixels = pixels.astype("<u2", copy=False)
    else:
        raise ImageError(f"cannot encode array of shape {pixels.shape} and dtype {pixels.dtype}")
    pixels = np.ascontiguousarray(pixels)
    return encoding, pixels.strides[0], memoryview(pixels).cast("B")
