"""ROS image fields <-> numpy, including every malformed input the node must survive.

Each encoding is checked against OpenCV's own conversion with the code cv_bridge uses
(CV_BRIDGE_CODES, from getConversionCodes in ros-perception/vision_opencv cv_bridge.cpp),
on raw bytes built from a known RGB image: by OpenCV's inverse conversion for YUV, by
sampling the image into the mosaic for Bayer. A flat region of the decoded image must come
out close to the known image, which pins the byte order and the Bayer pattern orientation.
"""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ovseg_ros.engine.image_codec import MAX_PIXELS, SUPPORTED_ENCODINGS, ImageError, decode_compressed, decode_image, encode_image

RGB = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full((5, 7), 9, np.uint8)])),
        ("8UC3", RGB[..., ::-1]),  # as bgr8, cv_bridge's convention
        ("8UC4", np.dstack([RGB[..., ::-1], np.full((5, 7), 9, np.uint8)])),  # as bgra8
    ],
)
def test_colour_encodings_decode_to_the_same_rgb(encoding, pixels):
    data = np.ascontiguousarray(pixels).tobytes()
    assert np.array_equal(decode_image(encoding, 5, 7, pixels.shape[1] * pixels.shape[2], data), RGB)


def test_mono8_8uc1_and_mono16_become_grey_rgb():
    grey = RGB[..., 0]
    assert np.array_equal(decode_image("mono8", 5, 7, 7, grey.tobytes()), np.dstack([grey] * 3))
    assert np.array_equal(decode_image("8UC1", 5, 7, 7, grey.tobytes()), np.dstack([grey] * 3))
    wide = grey.astype(np.uint16) * 257  # full 16-bit range
    for bigendian, dtype in ((False, "<u2"), (True, ">u2")):
        out = decode_image("mono16", 5, 7, 14, wide.astype(dtype).tobytes(), is_bigendian=bigendian)
        assert np.array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_mono16_is_scaled_by_its_sensor_depth(bits):
    """A 12-bit sensor's 0..4095 fills 0..255 (it used to come out as 0..15, nearly black)."""
    full_scale = (1 << bits) - 1
    ramp = np.linspace(0, full_scale, 5 * 7).round().astype(np.uint16).reshape(5, 7)
    out = decode_image("mono16", 5, 7, 14, ramp.tobytes())[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.array_equal(out, (ramp.astype(np.uint32) * 255 // full_scale).astype(np.uint8))
    # Half the range stays half as bright: the depth is a sensor's, not the frame's maximum.
    assert decode_image("mono16", 5, 7, 14, (ramp // 2).tobytes()).max() == 127


def test_row_padding_is_skipped():
    padded = np.zeros((5, 24), np.uint8)
    padded[:, :21] = RGB.reshape(5, 21)
    assert np.array_equal(decode_image("rgb8", 5, 7, 24, padded.tobytes()), RGB)


@pytest.mark.parametrize(
    "fields, reason",
    [
        (("nv24", 5, 7, 14, bytes(70)), "unsupported encoding 'nv24'"),
        (("rgb8", 0, 7, 21, b""), "zero size"),
        (("rgb8", 5, 7, 20, bytes(100)), "step 20 is less"),
        (("rgb8", 5, 7, 21, bytes(104)), "expected step x height = 105"),
        (("rgb8", 5000, 8000, 24000, b""), "pixel limit"),
    ],
)
def test_malformed_images_raise_a_clear_error(fields, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(*fields)


def test_compressed_jpeg_and_png_decode():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok and np.array_equal(decode_compressed("png", png.tobytes()), RGB)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok and decode_compressed("jpeg", jpeg.tobytes()).shape == RGB.shape


def test_jpeg_exif_orientation_is_not_applied():
    """A JPEG tagged Orientation=6 (rotate 90 degrees) decodes to its stored 40 x 64 grid."""
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "jpeg", exif=exif, quality=95)
    assert Image.open(io.BytesIO(buffer.getvalue())).getexif()[0x0112] == 6
    out = decode_compressed("jpeg", buffer.getvalue())
    assert out.shape == (40, 64, 3)
    assert out[:, :28, 0].min() > 200 and out[:, 36:, 0].max() < 50


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff garbage", bytes(100)])
def test_corrupt_compressed_data_raises(data):
    with pytest.raises(ImageError):
        decode_compressed("jpeg", data)


def test_encode_round_trips():
    for pixels, encoding in ((RGB, "rgb8"), (RGB[..., 0], "mono8"), (RGB[..., 0].astype(np.uint16) * 300, "mono16")):
        enc, step, data = encode_image(pixels)
        assert enc == encoding and len(data) == step * pixels.shape[0]
        assert np.array_equal(np.frombuffer(data, pixels.dtype.newbyteorder("<")).reshape(pixels.shape), pixels)
    with pytest.raises(ImageError):
        encode_image(np.zeros((2, 2, 2), np.float32))


def test_pixel_limit_is_8k():
    assert MAX_PIXELS == 7680 * 4320


# --- every common encoding, against OpenCV with cv_bridge's conversion codes --------------

#: cv_bridge's code to RGB for each Bayer pattern (BAYER_RGGB -> COLOR_BayerBG2RGB, ...).
CV_BRIDGE_BAYER = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB, "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}
#: 4:2:2 encoding -> (OpenCV's conversion from RGB that builds it, the code back: cv_bridge's for yuv422 / yuv422_yuy2)
YUV422 = {
    "yuv422": (cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
}
NV_CODES = {"nv12": cv2.COLOR_YUV2RGB_NV12, "nv21": cv2.COLOR_YUV2RGB_NV21}
#: Flat colours of the known image's quadrants (saturated and distinct, so a swap of R and B
#: or of the Bayer pattern shows).
QUADRANTS = ((220, 40, 30), (30, 200, 60), (40, 60, 210), (200, 190, 40))
#: Sizes: even, then odd (where the encoding allows it) with padded rows (extra bytes per row).
SIZES = [(16, 24, 0), (15, 21, 5)]


def known_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of four flat quadrants."""
    image = np.empty((height, width, 3), np.uint8)
    top, left = height // 2, width // 2
    for (rows, columns), colour in zip(((slice(0, top), slice(0, left)), (slice(0, top), slice(left, None)),
                                        (slice(top, None), slice(0, left)), (slice(top, None), slice(left, None))), QUADRANTS):
        image[rows, columns] = colour
    return image


def assert_flat_regions_close(decoded: np.ndarray, known: np.ndarray, tolerance: int) -> None:
    """Away from the quadrants' edges (2 pixels, where demosaicing and chroma sharing blend) and
    the image border, the decoded image is the known one within ``tolerance``."""
    height, width = known.shape[:2]
    flat = np.zeros((height, width), bool)
    for rows in (slice(2, height // 2 - 2), slice(height // 2 + 2, height - 2)):
        for columns in (slice(2, width // 2 - 2), slice(width // 2 + 2, width - 2)):
            flat[rows, columns] = True
    assert flat.sum() >= 16
    error = np.abs(decoded.astype(int) - known.astype(int))[flat]
    assert error.max() <= tolerance, f"flat regions off by up to {error.max()}"


def padded(pixels: np.ndarray, step: int) -> bytes:
    """Rows of ``pixels`` (any dtype, byte order as stored) as ``step``-byte rows, the padding 0xAB."""
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(pixels.shape[0], -1)
    out = np.full((rows.shape[0], step), 0xAB, np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.tobytes()


def mosaic(image: np.ndarray, pattern: str) -> np.ndarray:
    """Sample (H, W, 3) RGB into a ROS Bayer mosaic: ``pattern`` is the top-left 2x2, row by row."""
    out = np.empty(image.shape[:2], image.dtype)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        out[dy::2, dx::2] = image[dy::2, dx::2, "rgb".index(colour)]
    return out


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", lambda k: k), ("bgr8", lambda k: k[..., ::-1]), ("8UC3", lambda k: k[..., ::-1]),
    ("rgba8", lambda k: np.dstack([k, k[..., :1]])), ("bgra8", lambda k: np.dstack([k[..., ::-1], k[..., :1]])),
    ("8UC4", lambda k: np.dstack([k[..., ::-1], k[..., :1]])),
])
def test_packed_colour_encodings_with_an_odd_width_and_padded_rows(encoding, pixels):
    known = known_image(5, 7)
    stored = pixels(known)
    step = 7 * stored.shape[2] + 3
    assert np.array_equal(decode_image(encoding, 5, 7, step, padded(stored, step)), known)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_mono_encodings_with_an_odd_width_padded_rows_and_either_byte_order(encoding, bigendian):
    grey = RGB[..., 1]
    stored = grey.astype(">u2" if bigendian else "<u2") * 257 if encoding == "mono16" else grey
    step = stored.itemsize * 7 + 5
    out = decode_image(encoding, 5, 7, step, padded(stored, step), is_bigendian=bigendian)
    assert np.array_equal(out, np.dstack([grey] * 3))


@pytest.mark.parametrize("encoding", list(YUV422))
@pytest.mark.parametrize("height, width, padding", [(16, 24, 0), (15, 22, 6)])
def test_yuv422_matches_opencv_with_cv_bridges_code(encoding, height, width, padding):
    known = known_image(height, width)
    to_yuv, to_rgb = YUV422[encoding]
    packed = cv2.cvtColor(known, to_yuv)  # (H, W, 2): U Y0 V Y1 or Y0 U Y1 V per pixel pair
    assert packed.shape == (height, width, 2)
    step = width * 2 + padding
    out = decode_image(encoding, height, width, step, padded(packed, step))
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    assert np.array_equal(out, cv2.cvtColor(packed, to_rgb))
    assert_flat_regions_close(out, known, 3)


def test_yuyv_is_uyvy_with_each_byte_pair_swapped():
    """Pins the byte order: U Y0 V Y1 (uyvy, yuv422) read pairwise reversed is Y0 U Y1 V (yuyv, yuv422_yuy2)."""
    uyvy = cv2.cvtColor(known_image(16, 24), cv2.COLOR_RGB2YUV_UYVY)
    yuyv = np.ascontiguousarray(uyvy[..., ::-1])
    expected = decode_image("uyvy", 16, 24, 48, uyvy.tobytes())
    for encoding, data in (("yuv422", uyvy), ("yuyv", yuyv), ("yuv422_yuy2", yuyv)):
        assert np.array_equal(decode_image(encoding, 16, 24, 48, data.tobytes()), expected), encoding


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
@pytest.mark.parametrize("height, width, padding", [(16, 24, 0), (14, 22, 10)])
def test_nv12_nv21_match_opencv_and_the_planar_i420_decoding(encoding, height, width, padding):
    known = known_image(height, width)
    i420 = cv2.cvtColor(known, cv2.COLOR_RGB2YUV_I420)  # Y plane, then the U and V planes at half size
    chroma = i420[height:].ravel()
    u, v = chroma[: chroma.size // 2].reshape(height // 2, width // 2), chroma[chroma.size // 2:].reshape(height // 2, width // 2)
    interleaved = np.dstack([u, v] if encoding == "nv12" else [v, u]).reshape(height // 2, width)
    semi_planar = np.vstack([i420[:height], interleaved])  # height x 3/2 rows of width bytes
    step = width + padding
    out = decode_image(encoding, height, width, step, padded(semi_planar, step))
    assert out.shape == (height, width, 3)
    assert np.array_equal(out, cv2.cvtColor(semi_planar, NV_CODES[encoding]))
    assert np.array_equal(out, cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420))  # same samples, the other layout
    assert_flat_regions_close(out, known, 3)


@pytest.mark.parametrize("pattern", list(CV_BRIDGE_BAYER))
@pytest.mark.parametrize("height, width, padding", SIZES)
def test_bayer8_matches_opencv_with_cv_bridges_code(pattern, height, width, padding):
    known = known_image(height, width)
    raw = mosaic(known, pattern)
    out = decode_image(f"bayer_{pattern}8", height, width, width + padding, padded(raw, width + padding))
    assert np.array_equal(out, cv2.cvtColor(raw, CV_BRIDGE_BAYER[pattern]))
    assert_flat_regions_close(out, known, 1)


@pytest.mark.parametrize("pattern", list(CV_BRIDGE_BAYER))
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("height, width, padding", SIZES)
def test_bayer16_is_scaled_by_its_sensor_depth_then_demosaiced(pattern, bigendian, height, width, padding):
    known = known_image(height, width)
    raw = mosaic((known.astype(np.uint32) * 4095 // 255).astype(np.uint16), pattern)  # a 12-bit sensor
    step = width * 2 + padding
    out = decode_image(f"bayer_{pattern}16", height, width, step, padded(raw.astype(">u2" if bigendian else "<u2"), step), is_bigendian=bigendian)
    scaled = (raw.astype(np.uint32) * 255 // 4095).astype(np.uint8)  # as mono16 is: 12-bit fills 0..255
    assert np.array_equal(out, cv2.cvtColor(scaled, CV_BRIDGE_BAYER[pattern]))
    at_16_bits = cv2.cvtColor(raw, CV_BRIDGE_BAYER[pattern]).astype(np.uint32) * 255 // 4095  # cv_bridge's order
    assert np.abs(out.astype(int) - at_16_bits.astype(int)).max() <= 1
    assert_flat_regions_close(out, known, 1)


@pytest.mark.parametrize("pattern", list(CV_BRIDGE_BAYER))
def test_a_mosaic_read_as_another_pattern_comes_out_wrong(pattern):
    """The flat-region check above would catch a pattern mapped backwards."""
    known = known_image(16, 24)
    raw = mosaic(known, pattern)
    for other in CV_BRIDGE_BAYER:
        if other != pattern:
            with pytest.raises(AssertionError, match="flat regions off"):
                assert_flat_regions_close(decode_image(f"bayer_{other}8", 16, 24, 24, raw.tobytes()), known, 1)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_encodings_are_refused_as_colour_input(encoding):
    with pytest.raises(ImageError, match=f"^{encoding} is a depth encoding: send it on the depth topic"):
        decode_image(encoding, 4, 4, 16, bytes(64))


def test_an_unknown_encoding_names_the_supported_ones():
    with pytest.raises(ImageError, match="unsupported encoding 'rgb16'") as error:
        decode_image("rgb16", 4, 4, 24, bytes(96))
    listed = str(error.value).split("supported: ")[1]
    for encoding in ("rgb8", "8UC3", "yuv422", "uyvy", "yuyv", "yuv422_yuy2", "nv12", "nv21", "bayer_grbg8", "bayer_rggb16"):
        assert encoding in listed
    assert set(SUPPORTED_ENCODINGS) >= {f"bayer_{p}{bits}" for p in CV_BRIDGE_BAYER for bits in (8, 16)}


@pytest.mark.parametrize(
    "fields, reason",
    [
        (("yuv422", 4, 7, 16, bytes(64)), "yuv422 image is 7x4: YUV 4:2:2 needs an even width"),
        (("yuyv", 4, 7, 16, bytes(64)), "yuyv image is 7x4: YUV 4:2:2 needs an even width"),
        (("nv12", 4, 7, 8, bytes(48)), "nv12 image is 7x4: YUV 4:2:0 needs an even width and height"),
        (("nv21", 5, 8, 8, bytes(56)), "nv21 image is 8x5: YUV 4:2:0 needs an even width and height"),
        (("nv12", 4, 8, 8, bytes(32)), r"expected step x height x 3/2 = 48"),
        (("uyvy", 4, 8, 15, bytes(60)), "uyvy step 15 is less than width x pixel size = 16"),
        (("bayer_rggb16", 4, 8, 15, bytes(60)), "bayer_rggb16 step 15 is less than width x pixel size = 16"),
    ],
)
def test_sizes_an_encoding_cannot_hold_are_refused(fields, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(*fields)


# --- CompressedImage formats ----------------------------------------------------------------

def encoded(extension: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(extension, pixels)
    assert ok
    return data.tobytes()


KNOWN = known_image(16, 24)


@pytest.mark.parametrize("format_, extension", [
    ("rgb8; jpeg compressed bgr8", ".jpg"), ("bgr8; jpeg compressed bgr8", ".jpg"), ("jpeg", ".jpg"), ("jpg", ".jpg"), ("", ".jpg"),
    ("bgr8; png compressed bgr8", ".png"), ("rgba8; png compressed bgr8", ".png"), ("png", ".png"), ("", ".png"),
    ("bgr8; tiff compressed bgr8", ".tiff"), ("tiff", ".tiff"),
])
def test_compressed_formats_image_transport_and_drivers_write_decode(format_, extension):
    out = decode_compressed(format_, encoded(extension, cv2.cvtColor(KNOWN, cv2.COLOR_RGB2BGR)))
    assert out.shape == KNOWN.shape and out.dtype == np.uint8
    if extension == ".jpg":
        assert_flat_regions_close(out, KNOWN, 8)
    else:
        assert np.array_equal(out, KNOWN)


def test_compressed_rgb_and_bgra_are_read_in_their_channel_order():
    # Stored as "compressed rgb8", the file's channels are R G B (the publisher did not swap them).
    assert np.array_equal(decode_compressed("rgb8; png compressed rgb8", encoded(".png", KNOWN)), KNOWN)
    bgra = np.dstack([cv2.cvtColor(KNOWN, cv2.COLOR_RGB2BGR), np.full(KNOWN.shape[:2], 7, np.uint8)])
    assert np.array_equal(decode_compressed("png", encoded(".png", bgra)), KNOWN)


def test_compressed_mono_16_bit_and_bayer_frames_decode_like_raw_ones():
    grey = KNOWN[..., 0]
    assert np.array_equal(decode_compressed("mono8; jpeg compressed mono8", encoded(".png", grey)), np.dstack([grey] * 3))
    twelve_bit = (grey.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    # "mono16; png compressed ": a 16-bit PNG, scaled by its sensor depth as mono16 is (not cut to its high byte).
    assert np.array_equal(decode_compressed("mono16; png compressed ", encoded(".png", twelve_bit)),
                          decode_image("mono16", 16, 24, 48, twelve_bit.tobytes()))
    wide = cv2.cvtColor(KNOWN, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    assert np.array_equal(decode_compressed("bgr16; png compressed bgr16", encoded(".png", wide)), KNOWN)
    # A mosaic stored unconverted ("png compressed " with no stored encoding) is demosaiced by its pattern.
    raw = mosaic(KNOWN, "grbg")
    assert np.array_equal(decode_compressed("bayer_grbg8; png compressed ", encoded(".png", raw)), decode_image("bayer_grbg8", 16, 24, 24, raw.tobytes()))
    # Converted by the publisher ("compressed mono8"), it is grey.
    out = decode_compressed("bayer_grbg8; png compressed mono8", encoded(".png", raw))
    assert np.array_equal(out, np.dstack([raw] * 3))


@pytest.mark.parametrize("format_, reason", [
    ("16UC1; compressedDepth png", "'16UC1; compressedDepth png' is compressedDepth, a depth image"),
    ("32FC1; compressedDepth rvl", "is compressedDepth, a depth image"),
    ("16UC1; png compressed ", "16UC1 is a depth encoding: send it on the depth topic"),
    ("theora", "unsupported compressed format 'theora'"),
    ("h264", "unsupported compressed format 'h264'"),
    ("rgb8; webp compressed bgr8", "unsupported compressed format 'rgb8; webp compressed bgr8'"),
    ("bgr8; jpeg", "unsupported compressed format 'bgr8; jpeg'"),
])
def test_other_compressed_formats_are_refused(format_, reason):
    with pytest.raises(ImageError, match=reason) as error:
        decode_compressed(format_, encoded(".png", KNOWN))
    if "unsupported" in reason:
        assert "'jpeg', 'jpg', 'png', 'tiff', ''" in str(error.value)
