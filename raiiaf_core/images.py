"""Recognise stored image bytes (PNG, WebP, JPEG) and read their size from their headers, without Pillow."""

from __future__ import annotations

import io
import struct

from .errors import LimitExceededError, RaiiafError

MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
PNG_COMPRESS_LEVEL = 4  # what ComfyUI's SaveImage uses; every PNG this project encodes uses it

# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are tables, not frames.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(data: bytes):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def image_size(data: bytes, fmt: str):
    """(width, height) from the image's own header; None when the header does not say (damaged bytes)."""
    if fmt == "png":
        return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" and len(data) >= 24 else None
    if fmt == "webp":
        return _webp_size(data)
    if fmt == "jpeg":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes):
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:  # extended: the canvas size, minus one, in 24-bit fields
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit sizes, minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _jpeg_size(data: bytes):
    # Walk the marker segments up to the first frame header; every step moves forward, so this ends.
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        if marker in _JPEG_FRAMES:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def to_image_bytes(image) -> bytes:
    """The image as file bytes: bytes pass through untouched, a PIL image is encoded to PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if sniff_format(data) is None:
            raise RaiiafError("image bytes are not PNG, WebP or JPEG (unrecognised signature)")
        return data
    if type(image).__module__.startswith("PIL."):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()
    raise RaiiafError(f"image must be PNG/WebP/JPEG bytes or a PIL image, got {type(image).__name__}")


def to_pil(data: bytes, size, where: str, max_pixels: int):
    """Decode checked image bytes whose header size is `size` (or None), refusing more than max_pixels."""
    from PIL import Image

    def check(width: int, height: int) -> None:
        if width * height > max_pixels:
            raise LimitExceededError(f"{where}: the image is {width}x{height} ({width * height:,} pixels), over "
                                     f"Limits.max_image_pixels={max_pixels:,}")

    if size is not None:  # before Pillow sees the bytes, so the refusal is ours and names the limit
        check(*size)
    try:
        im = Image.open(io.BytesIO(data))
        check(*im.size)
        im.load()
    except RaiiafError:
        raise
    except Exception as exc:
        raise RaiiafError(f"{where}: the stored image could not be decoded ({exc})") from None
    return im
