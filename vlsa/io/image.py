"""Safe image decoding, shared by training and labeling.

Images come from users' folders and buckets, so every decode is defensive: only allowed formats,
byte and pixel limits checked before any pixel is decoded (decompression bombs are rejections, not
out-of-memory kills), truncated files are errors rather than grey-filled images, and every failure is
one ``ImageRejected`` with a short stable reason that callers count.

Reasons: ``not_bytes``, ``empty``, ``too_many_bytes``, ``unsupported_format``, ``bad_size``,
``too_many_pixels``, ``truncated``, ``corrupt``, ``unsupported_mode``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlsa.config import DecodeConfig

_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
# magic bytes and end markers of the formats whose files end with one (a missing end: truncated)
_SIGNATURES = (
    ("PNG", b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    ("JPEG", b"\xff\xd8\xff", b"\xff\xd9"),
    ("GIF", b"GIF8", b";"),
    ("BMP", b"BM", b""),
    ("TIFF", b"II*\x00", b""),
    ("TIFF", b"MM\x00*", b""),
    ("WEBP", b"RIFF", b""),
)
_TRUNCATION_HINTS = ("truncated", "broken data stream", "premature end", "not enough data", "end of file")


class ImageRejected(ValueError):
    """An image that cannot be used; ``reason`` is a short stable slug, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, cfg: DecodeConfig) -> Image.Image:
    """Decode encoded image bytes to a fully loaded RGB image or raise ``ImageRejected``."""
    _check_bytes(data, cfg)
    with warnings.catch_warnings():
        # A bomb warning is a rejection; other decoder warnings (odd EXIF, ...) must not leak to logs
        # once per image, and the image itself is still checked by loading it.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, cfg)
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRejected("too_many_pixels", str(err)) from None
        except UnidentifiedImageError:
            raise _unidentified(bytes(data[:16]), bytes(data[-16:]), cfg) from None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a rejected image, never a crash
            raise ImageRejected(_failure_reason(err), f"{type(err).__name__}: {err}") from None


def _check_bytes(data: bytes, cfg: DecodeConfig) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageRejected("not_bytes", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRejected("empty", "0 bytes")
    if len(data) > cfg.max_bytes:
        raise ImageRejected("too_many_bytes", f"{len(data)} bytes > max_bytes {cfg.max_bytes}")


def _decode(data: bytes, cfg: DecodeConfig) -> Image.Image:
    formats = [f.upper() for f in cfg.formats]
    with Image.open(io.BytesIO(bytes(data)), formats=formats) as img:
        _check_size(img, cfg)
        img.seek(0)  # animated images: the first frame
        img.load()
        frame = ImageOps.exif_transpose(img)
    return to_rgb(frame)


def _check_size(img: Image.Image, cfg: DecodeConfig) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("bad_size", f"size {width}x{height}")
    if width * height > cfg.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} > max_pixels {cfg.max_pixels}")


def _unidentified(head: bytes, tail: bytes, cfg: DecodeConfig) -> ImageRejected:
    """Why PIL could not open the file: a known format cut short / damaged, or not an allowed image."""
    for fmt, magic, end in _SIGNATURES:
        if fmt in [f.upper() for f in cfg.formats] and head.startswith(magic):
            if end and not tail.endswith(end):
                return ImageRejected("truncated", f"{fmt} data ends before its end marker")
            return ImageRejected("corrupt", f"{fmt} header could not be parsed")
    return ImageRejected("unsupported_format", f"not an image of an allowed format {list(cfg.formats)}")


def _failure_reason(err: Exception) -> str:
    text = str(err).lower()
    if isinstance(err, (OSError, SyntaxError, EOFError)) and any(h in text for h in _TRUNCATION_HINTS):
        return "truncated"
    if "conversion not supported" in text or ("mode" in text and "not supported" in text):
        return "unsupported_mode"
    return "corrupt"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha composited on white, 16-bit scaled, CMYK through its profile."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _high_depth_to_l(img)
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale to 8-bit by range (PIL's own convert clips instead of scaling)."""
    arr = np.asarray(img)
    if img.mode == "F":
        # Float images store [0, 1] intensities by convention; anything larger is read as 0..255.
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        arr8 = np.clip(np.nan_to_num(arr) * scale, 0, 255)
    else:
        arr8 = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.round(arr8).astype(np.uint8), mode="L")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK through its embedded ICC profile when it has one (print profiles differ a lot from naive)."""
    profile = img.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain conversion
            pass
    return img.convert("RGB")
