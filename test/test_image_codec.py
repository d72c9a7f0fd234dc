"""ROS image fields <-> numpy, including every malformed input the node must survive."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ovseg_ros.engine.image_codec import MAX_PIXELS, ImageError, decode_compressed, decode_image, encode_image

RGB = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full((5, 7), 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full((5, 7), 9, np.uint8)])),
    ],
)
def test_colour_encodings_decode_to_the_same_rgb(encoding, pixels):
    data = np.ascontiguousarray(pixels).tobytes()
    assert np.array_equal(decode_image(encoding, 5, 7, pixels.shape[1] * pixels.shape[2], data), RGB)


def test_mono8_and_mono16_become_grey_rgb():
    grey = RGB[..., 0]
    assert np.array_equal(decode_image("mono8", 5, 7, 7, grey.tobytes()), np.dstack([grey] * 3))
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
        (("yuv422", 5, 7, 14, bytes(70)), "unsupported encoding"),
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
