"""Safe image decoding: formats, limits, truncation, orientation, colour modes, fuzzing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlsa.config import DecodeConfig
from vlsa.io.image import ImageRejected, decode_image

CFG = DecodeConfig()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reason(data: bytes, cfg: DecodeConfig = CFG) -> str:
    with pytest.raises(ImageRejected) as err:
        decode_image(data, cfg)
    return err.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt):
    image = decode_image(encode(Image.new("RGB", (30, 20), (200, 30, 30)), fmt), CFG)
    assert image.mode == "RGB" and image.size == (30, 20)
    r, g, b = image.getpixel((15, 10))
    assert r > 150 and g < 80 and b < 80


def test_format_outside_the_allow_list_is_rejected():
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    assert reason(data, DecodeConfig(formats=["JPEG"])) == "unsupported_format"
    assert reason(b"definitely not an image") == "unsupported_format"
    assert reason(b"") == "empty"


def test_byte_and_pixel_limits():
    data = encode(Image.new("RGB", (40, 30)), "PNG")
    assert reason(data, DecodeConfig(max_bytes=len(data) - 1)) == "too_many_bytes"
    assert reason(data, DecodeConfig(max_pixels=40 * 30 - 1)) == "too_many_pixels"
    assert decode_image(data, DecodeConfig(max_pixels=40 * 30)).size == (40, 30)


def test_decompression_bomb_header_is_rejected_before_decoding():
    # a tiny PNG whose header claims 100000 x 100000 pixels: rejected from the header alone
    small = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = small.index(b"IHDR")
    import struct
    import zlib

    header = struct.pack(">II", 100_000, 100_000) + small[ihdr + 12 : ihdr + 17]
    chunk = b"IHDR" + header
    bomb = small[: ihdr - 4] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[ihdr + 21 :]
    assert reason(bomb) == "too_many_pixels"
    assert reason(bomb, DecodeConfig(max_pixels=10**12)) == "too_many_pixels"  # PIL's own bomb guard


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_errors(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    assert reason(data[: len(data) // 2]) == "truncated"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white left third
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    out = decode_image(encode(image, "JPEG", exif=exif, quality=95), CFG)
    assert out.size == (20, 30)
    assert out.getpixel((10, 3))[0] > 200 and out.getpixel((10, 27))[0] < 50  # white now on top


def test_cmyk_sixteen_bit_grayscale_and_la():
    cmyk = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), CFG)
    assert cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 60
    sixteen = Image.fromarray(np.full((4, 5), 32896, dtype=np.uint16))  # mid grey in 16 bits
    assert decode_image(encode(sixteen, "PNG"), CFG).getpixel((0, 0)) == (128, 128, 128)
    assert decode_image(encode(Image.new("L", (4, 4), 77), "PNG"), CFG).getpixel((1, 1)) == (77, 77, 77)
    assert decode_image(encode(Image.new("LA", (4, 4), (10, 0)), "PNG"), CFG).getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (4, 0, 8, 8))
    out = decode_image(encode(pal, "PNG", transparency=0), CFG)
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent black shows white
    assert out.getpixel((6, 1)) == (255, 0, 0)


def test_animated_images_take_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    for fmt in ("GIF", "WEBP"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], lossless=True)
        assert decode_image(buf.getvalue(), CFG).getpixel((4, 4))[0] > 200


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    return [encode(noise, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")]


def _check_outcome(data: bytes) -> None:
    try:
        image = decode_image(data, DecodeConfig(max_pixels=1_000_000))
    except ImageRejected as err:
        assert err.reason and " " not in err.reason
        return
    assert image.mode == "RGB" and image.width * image.height <= 1_000_000
    image.tobytes()  # fully loaded: no lazy decoding left to fail later


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    _check_outcome(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_valid_images()), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 10_000))
def test_fuzz_mutated_images(data, flips, cut):
    mutated = bytearray(data)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    _check_outcome(bytes(mutated[: max(1, len(mutated) - cut % len(mutated))]))
