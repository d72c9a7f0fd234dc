"""Conversion between ROS image message fields and numpy arrays, without cv_bridge.

Works on the fields of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` so it is
testable without ROS and behaves the same on every distro. Every malformed input raises
:class:`ImageError` with a message fit for a log line; nothing here crashes on bad data.

Every ``sensor_msgs/Image`` encoding a colour camera commonly sends becomes (H, W, 3) uint8
RGB by one OpenCV ``cvtColor`` (no colour maths of our own), with the conversion code
cv_bridge uses (``getConversionCodes`` in cv_bridge.cpp) where cv_bridge has one:

============================================  ============================  =====================================
encoding                                      bytes                         cv2 conversion
============================================  ============================  =====================================
rgb8                                          R G B                         none (needs no OpenCV)
bgr8, 8UC3 (cv_bridge's display convention)   B G R                         ``COLOR_BGR2RGB``
rgba8 / bgra8, 8UC4 (as bgra8)                R G B A / B G R A             ``COLOR_RGBA2RGB`` / ``COLOR_BGRA2RGB``
mono8, 8UC1 (as mono8), mono16                Y                             ``COLOR_GRAY2RGB``
yuv422 = uyvy                                 U Y0 V Y1 (4:2:2)             ``COLOR_YUV2RGB_UYVY``
yuv422_yuy2 = yuyv                            Y0 U Y1 V (4:2:2)             ``COLOR_YUV2RGB_YUY2``
nv12 / nv21                                   Y plane, then UV / VU plane   ``COLOR_YUV2RGB_NV12`` / ``_NV21``
                                              at half height (4:2:0)
bayer_rggb8, bayer_rggb16                     R G / G B mosaic              ``COLOR_BayerBG2RGB``
bayer_bggr8, bayer_bggr16                     B G / G R                     ``COLOR_BayerRG2RGB``
bayer_gbrg8, bayer_gbrg16                     G B / R G                     ``COLOR_BayerGR2RGB``
bayer_grbg8, bayer_grbg16                     G R / B G                     ``COLOR_BayerGB2RGB``
============================================  ============================  =====================================

OpenCV names a Bayer pattern by the second row's second and third pixels, so ROS's
``bayer_rggb8`` (top-left R G / G B) is OpenCV's ``BayerBG``, as in cv_bridge. The YUV codes
follow sensor_msgs' image_encodings (yuv422 and uyvy are fourcc UYVY, yuv422_yuy2 and yuyv
fourcc YUYV, nv12 / nv21 the V4L2 formats); cv_bridge has no entry for nv12 / nv21. A 4:2:2
image needs an even width and a 4:2:0 one an even width and height; odd widths are fine for
every other encoding. ``step`` is the bytes of one row (of the Y plane and of the chroma
plane alike for nv12 / nv21, whose data is ``step`` x height x 3/2 bytes); rows may be
padded (``step`` > width x pixel size). 16UC1 and 32FC1 are depth encodings, refused as
colour input (they go on the depth topic); other encodings are refused naming the supported
ones.

16-bit data (mono16, bayer_*16) carries 8 to 16 significant bits, low-aligned (a 12-bit
sensor sends 0..4095), in the byte order ``is_bigendian`` says, and the message does not say
how many bits. Each frame is scaled to 8 bits by the smallest common sensor depth (8, 10, 12,
14 or 16 bits) that holds its brightest pixel: 12-bit data is divided by 4095/255 (about
16), full 16-bit data by 65535/255 = 257. A 16-bit frame whose pixels all stay below 4096
is therefore stretched like 12-bit data; the models normalise contrast anyway, and a frame
is never clipped. A Bayer mosaic is scaled before it is demosaiced (within one level of
demosaicing at 16 bits and scaling after, as cv_bridge does).

``sensor_msgs/CompressedImage`` is decoded by OpenCV as stored (EXIF orientation ignored,
as a camera's ``sensor_msgs/Image`` would be, so the labels match the pixel grid the camera
sent and its ``camera_info``). ``format`` is read as image_transport's compressed plugin
writes it, ``"<encoding>; <jpeg|png|tiff> compressed [<stored encoding>]"`` (``"rgb8; jpeg
compressed bgr8"``, ``"mono16; png compressed "``), or as drivers write it: ``"jpeg"``,
``"jpg"``, ``"png"``, ``"tiff"`` or ``""`` (the codec is then told by the data). The stored
image is BGR(A) unless the stored encoding says rgb; 16-bit PNG / TIFF is scaled like
mono16; a single-channel image stored unconverted (no stored encoding after ``compressed``)
is read as its first encoding, so a ``bayer_rggb8; png compressed `` mosaic is demosaiced.
compressed_depth_image_transport's ``"16UC1; compressedDepth png"``, a depth encoding, and
any other format (``theora``, ``h264``, ...) are refused.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

try:
    import cv2
except ImportError:  # the GPU check machine has no OpenCV (robots do): rgb8 frames decode without it
    cv2 = None

#: Largest image accepted (pixels): 8K UHD. Bigger frames are rejected, not resized.
MAX_PIXELS = 7680 * 4320

#: Common sensor depths, in bits, that 16-bit data is assumed to use (see the module doc).
MONO16_DEPTHS = (8, 10, 12, 14, 16)


@dataclass(frozen=True)
class _Conversion:
    """How the bytes of one encoding become RGB."""

    channels: int  # values per pixel in a row: 3 (bgr8), 4 (bgra8), 2 (4:2:2: Y, then U or V), 1 (mono, Bayer, 4:2:0)
    dtype: type  # np.uint8, or np.uint16 (scaled to 8 bits by the frame's sensor depth before to_rgb)
    to_rgb: str | None  # the cv2 cvtColor code to RGB (its name), or None: the bytes are RGB already
    block: tuple[int, int] = (1, 1)  # (rows, columns) the size must be a multiple of: pixels sharing chroma
    chroma_plane: bool = False  # 4:2:0 semi-planar: height/2 rows of interleaved chroma follow the Y rows


_BGR8 = _Conversion(3, np.uint8, "COLOR_BGR2RGB")
_BGRA8 = _Conversion(4, np.uint8, "COLOR_BGRA2RGB")
_MONO8 = _Conversion(1, np.uint8, "COLOR_GRAY2RGB")
_UYVY = _Conversion(2, np.uint8, "COLOR_YUV2RGB_UYVY", block=(1, 2))
_YUYV = _Conversion(2, np.uint8, "COLOR_YUV2RGB_YUY2", block=(1, 2))
#: ROS Bayer pattern (top-left 2x2, row by row) -> OpenCV's name for it (cv_bridge's table).
_BAYER_CODES = {"rggb": "COLOR_BayerBG2RGB", "bggr": "COLOR_BayerRG2RGB", "gbrg": "COLOR_BayerGR2RGB", "grbg": "COLOR_BayerGB2RGB"}

#: encoding -> how it becomes RGB (the table of the module doc)
_ENCODINGS = {
    "rgb8": _Conversion(3, np.uint8, None),
    "bgr8": _BGR8,
    "rgba8": _Conversion(4, np.uint8, "COLOR_RGBA2RGB"),
    "bgra8": _BGRA8,
    "mono8": _MONO8,
    "mono16": _Conversion(1, np.uint16, "COLOR_GRAY2RGB"),
    "8UC1": _MONO8,
    "8UC3": _BGR8,
    "8UC4": _BGRA8,
    "yuv422": _UYVY,
    "uyvy": _UYVY,
    "yuv422_yuy2": _YUYV,
    "yuyv": _YUYV,
    "nv12": _Conversion(1, np.uint8, "COLOR_YUV2RGB_NV12", block=(2, 2), chroma_plane=True),
    "nv21": _Conversion(1, np.uint8, "COLOR_YUV2RGB_NV21", block=(2, 2), chroma_plane=True),
    **{f"bayer_{pattern}{bits}": _Conversion(1, dtype, code) for bits, dtype in ((8, np.uint8), (16, np.uint16)) for pattern, code in _BAYER_CODES.items()},
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

#: Depth images, refused as colour input (the node takes them on its depth topic).
DEPTH_ONLY_ENCODINGS = ("16UC1", "32FC1")

#: CompressedImage codecs decoded (``jpg`` is read as ``jpeg``; ``""``: told by the data).
COMPRESSED_CODECS = ("jpeg", "png", "tiff")


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


def _refuse_depth(encoding: str) -> None:
    if encoding in DEPTH_ONLY_ENCODINGS:
        raise ImageError(f"{encoding} is a depth encoding: send it on the depth topic (use_depth), not as the colour image")


def decode_image(encoding: str, height: int, width: int, step: int, data: bytes | memoryview, is_bigendian: bool = False) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> (H, W, 3) uint8 RGB, for each encoding of the module doc.

    16-bit data is read in the byte order ``is_bigendian`` says and scaled to 8 bits by the
    frame's sensor depth (:func:`mono16_depth`); row padding (``step`` > row bytes) is honoured.
    """
    _refuse_depth(encoding)
    conversion = _ENCODINGS.get(encoding)
    if conversion is None:
        raise ImageError(f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    _check_size(height, width)
    block_rows, block_columns = conversion.block
    if height % block_rows or width % block_columns:
        needs = "an even width and height" if block_rows == 2 else "an even width"
        kind = "YUV 4:2:0" if conversion.chroma_plane else "YUV 4:2:2"
        raise ImageError(f"{encoding} image is {width}x{height}: {kind} needs {needs}")
    row_bytes = width * conversion.channels * np.dtype(conversion.dtype).itemsize
    if step < row_bytes:
        raise ImageError(f"{encoding} step {step} is less than width x pixel size = {row_bytes}")
    rows = height + height // 2 if conversion.chroma_plane else height
    if len(data) != step * rows:
        expected = "step x height x 3/2" if conversion.chroma_plane else "step x height"
        raise ImageError(f"data is {len(data)} bytes, expected {expected} = {step * rows}")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(rows, step)[:, :row_bytes]
    pixels = pixels.view(np.dtype(conversion.dtype).newbyteorder(">" if is_bigendian else "<"))
    pixels = pixels.reshape(rows, width, conversion.channels) if conversion.channels > 1 else pixels.reshape(rows, width)
    return _to_rgb(pixels, conversion.to_rgb, encoding)


def _to_rgb(pixels: np.ndarray, to_rgb: str | None, encoding: str) -> np.ndarray:
    """(rows, W[, C]) uint8 or uint16 pixels -> (H, W, 3) uint8 RGB by the cv2 code named ``to_rgb``."""
    if pixels.dtype.itemsize == 2:
        full_scale = (1 << mono16_depth(pixels)) - 1
        pixels = (pixels.astype(np.uint32) * 255 // full_scale).astype(np.uint8)
    if to_rgb is None:
        return np.ascontiguousarray(pixels)
    _require_opencv(f"converting {encoding} to RGB")
    return cv2.cvtColor(np.ascontiguousarray(pixels), getattr(cv2, to_rgb))


def mono16_depth(pixels: np.ndarray) -> int:
    """Bits of a 16-bit frame: the smallest of :data:`MONO16_DEPTHS` that holds its maximum."""
    brightest = int(pixels.max())
    return next(bits for bits in MONO16_DEPTHS if brightest < 1 << bits)


def parse_compressed_format(format_: str) -> tuple[str, str, str]:
    """A ``CompressedImage.format`` -> (encoding, codec, stored encoding), ``""`` where not said.

    ``"rgb8; jpeg compressed bgr8"`` -> ("rgb8", "jpeg", "bgr8"); ``"jpg"`` -> ("", "jpeg", "").
    Raises :class:`ImageError` for compressedDepth, a depth encoding or a codec not in
    :data:`COMPRESSED_CODECS`.
    """
    supported = ("supported: image_transport's '<encoding>; <jpeg|png|tiff> compressed <encoding>' "
                 "(e.g. 'bgr8; jpeg compressed bgr8') or 'jpeg', 'jpg', 'png', 'tiff', ''")
    if "compresseddepth" in format_.lower():
        raise ImageError(f"compressed format {format_!r} is compressedDepth, a depth image: send depth on the depth topic "
                         "(use_depth, raw), colour frames as jpeg, png or tiff")
    encoding, separator, rest = format_.partition(";")
    if separator:
        words = rest.split()
        if len(words) not in (2, 3) or words[1] != "compressed":
            raise ImageError(f"unsupported compressed format {format_!r} ({supported})")
        encoding, codec, stored = encoding.strip(), words[0].lower(), words[2] if len(words) == 3 else ""
    else:
        encoding, codec, stored = "", encoding.strip().lower(), ""
    codec = "jpeg" if codec == "jpg" else codec
    if codec not in ("", *COMPRESSED_CODECS):
        raise ImageError(f"unsupported compressed format {format_!r} ({supported})")
    _refuse_depth(encoding)
    return encoding, codec, stored


def decode_compressed(format_: str, data: bytes) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg, png or tiff; see the module doc) -> (H, W, 3) uint8 RGB,
    EXIF orientation ignored."""
    encoding, _, stored = parse_compressed_format(format_)
    if not data:
        raise ImageError(f"compressed image ({format_ or 'no format'}) has no data")
    _require_opencv(f"decoding a compressed image ({format_ or 'no format'})")
    # IMREAD_UNCHANGED: 16 bits kept (scaled below by the sensor depth), EXIF orientation not applied.
    pixels = cv2.imdecode(np.frombuffer(bytes(data), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"cannot decode compressed image (format {format_!r}, {len(data)} bytes)")
    _check_size(*pixels.shape[:2])
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype not in (np.uint8, np.uint16) or channels not in (1, 3, 4):
        raise ImageError(f"compressed image (format {format_!r}) decodes to {channels} channels of {pixels.dtype}: "
                         "only 8- or 16-bit grey, BGR or BGRA images are colour input")
    if channels == 1:
        # Stored as sent (no stored encoding), a single-channel frame keeps its own: a Bayer mosaic is demosaiced.
        own = _ENCODINGS.get(encoding)
        single = own is not None and not stored and own.channels == 1 and not own.chroma_plane
        to_rgb = own.to_rgb if single else "COLOR_GRAY2RGB"
    else:
        rgb = stored.startswith("rgb")
        to_rgb = ("COLOR_RGBA2RGB" if rgb else "COLOR_BGRA2RGB") if channels == 4 else (None if rgb else "COLOR_BGR2RGB")
    return _to_rgb(pixels, to_rgb, f"compressed {format_ or 'image'}")


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
