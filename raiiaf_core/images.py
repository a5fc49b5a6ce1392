"""Recognise stored image bytes (PNG, WebP, JPEG) and read their size without decoding them."""

from __future__ import annotations

import io
import struct

from .errors import RaiiafError

MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
PNG_COMPRESS_LEVEL = 4  # what ComfyUI's SaveImage uses


def sniff_format(data: bytes):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def image_size(data: bytes, fmt: str):
    """(width, height), from the PNG header directly or through Pillow's lazy header parse; None if unknown."""
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # Pillow missing or the image header unreadable: the size is informative only
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


def to_pil(data: bytes, where: str):
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as exc:
        raise RaiiafError(f"{where}: the stored image could not be decoded ({exc})") from None
    return im
