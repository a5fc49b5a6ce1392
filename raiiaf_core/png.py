"""PNG chunks as raiiaf reads and writes them: walking a file's chunk headers, building chunks, text chunks.

A PNG is the 8-byte signature and then chunks: a 4-byte big-endian data length, a 4-byte type of ASCII letters,
the data, and a CRC-32 of type and data. Nothing here decodes pixels; Pillow does that where it is needed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .errors import CorruptFileError, LimitExceededError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR_END = len(SIGNATURE) + 8 + 13 + 4  # the header chunk, which must come first, is 13 bytes of data
_LENGTH_TYPE = struct.Struct(">I4s")
_CRC = struct.Struct(">I")
MAX_CHUNK_LENGTH = (1 << 31) - 1  # the PNG specification's bound on a chunk's data length
_CRC_BLOCK = 1 << 20
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")

Read = Callable[[int, int], bytes]  # read(offset, length) -> exactly length bytes


class Chunk(NamedTuple):
    """One chunk of a PNG file: where it starts (its length field) and how much data it holds."""

    type: bytes
    offset: int
    length: int

    @property
    def data_offset(self) -> int:
        return self.offset + 8

    @property
    def end(self) -> int:
        return self.offset + 12 + self.length


def chunk(kind: bytes, data: bytes) -> bytes:
    """A complete chunk: length, type, data, CRC."""
    return _LENGTH_TYPE.pack(len(data), kind) + data + _CRC.pack(zlib.crc32(data, zlib.crc32(kind)))


def text_chunk(keyword: str, text: str) -> bytes:
    """A tEXt chunk when the text is Latin-1, else an uncompressed iTXt: what Pillow's PngInfo.add_text writes,
    and so what ComfyUI's SaveImage and A1111's web UI write."""
    key = keyword.encode("latin-1")
    try:
        return chunk(b"tEXt", key + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, compression flag and method 0, empty language tag, empty translated keyword, UTF-8 text
        return chunk(b"iTXt", key + b"\0\0\0\0\0" + text.encode("utf-8"))


def chunks(read: Read, size: int, where: str, *, start: int = len(SIGNATURE), max_chunks: int) -> Iterator[Chunk]:
    """The chunks from `start` on, in order, up to and including IEND; each header checked against the file.

    Stops after IEND (what follows it is not chunks); a file that ends before IEND, a chunk that runs past the
    end, a type that is not four ASCII letters or more than `max_chunks` chunks raise.
    """
    offset, count = start, 0
    while True:
        if offset + 12 > size:
            raise CorruptFileError(f"{where}: the PNG ends at byte {size} inside its chunks (truncated, or a chunk "
                                   "length is damaged)")
        length, kind = _LENGTH_TYPE.unpack(read(offset, 8))
        if not kind.isalpha():
            raise CorruptFileError(f"{where}: damaged PNG: the chunk at byte {offset} has the type {kind!r}, which is "
                                   "not four letters")
        if length > MAX_CHUNK_LENGTH or offset + 12 + length > size:
            raise CorruptFileError(f"{where}: the PNG chunk {kind.decode()} at byte {offset} runs past the end of the "
                                   "file (truncated, or its length is damaged)")
        count += 1
        if count > max_chunks:
            raise LimitExceededError(f"{where}: the PNG has more than Limits.max_chunks={max_chunks} chunks")
        found = Chunk(kind, offset, length)
        yield found
        if kind == b"IEND":
            return
        offset = found.end


def check_crc(read: Read, found: Chunk, where: str) -> None:
    """Raise CorruptFileError unless the chunk's stored CRC is the CRC of its type and data (read in blocks)."""
    crc = zlib.crc32(found.type)
    for start in range(found.data_offset, found.data_offset + found.length, _CRC_BLOCK):
        crc = zlib.crc32(read(start, min(_CRC_BLOCK, found.data_offset + found.length - start)), crc)
    if _CRC.unpack(read(found.data_offset + found.length, 4))[0] != crc:
        raise CorruptFileError(f"{where}: the PNG chunk {found.type.decode()} at byte {found.offset} is damaged (CRC "
                               "mismatch)")


def texts(data: bytes, where: str, *, max_text: int, max_chunks: int) -> dict[str, str]:
    """The keyword -> text pairs of a PNG's tEXt, zTXt and iTXt chunks (checked by CRC; the last of a keyword
    wins, as in Pillow and ComfyUI's frontend). Compressed text may not decode to more than `max_text` bytes."""
    if data[:len(SIGNATURE)] != SIGNATURE:
        raise CorruptFileError(f"{where}: not a PNG file")

    def read(offset: int, length: int) -> bytes:
        return data[offset:offset + length]

    found = {}
    for item in chunks(read, len(data), where, max_chunks=max_chunks):
        if item.type not in TEXT_TYPES:
            continue
        check_crc(read, item, where)
        keyword, text = _decode_text(item.type, read(item.data_offset, item.length), f"{where}: PNG chunk "
                                     f"{item.type.decode()} at byte {item.offset}", max_text)
        found[keyword] = text
    return found


def _decode_text(kind: bytes, body: bytes, where: str, max_text: int) -> tuple[str, str]:
    keyword, sep, rest = body.partition(b"\0")
    if not sep or not 1 <= len(keyword) <= 79:
        raise CorruptFileError(f"{where} has no keyword of 1 to 79 bytes")
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        if rest[:1] != b"\0":
            raise CorruptFileError(f"{where} uses an unknown compression method")
        return keyword.decode("latin-1"), _inflate(rest[1:], where, max_text).decode("latin-1")
    if len(rest) < 2:
        raise CorruptFileError(f"{where} is truncated")
    compressed, method, rest = rest[0], rest[1], rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        if method != 0:
            raise CorruptFileError(f"{where} uses an unknown compression method")
        text = _inflate(text, where, max_text)
    try:
        return keyword.decode("latin-1"), text.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{where} holds text that is not UTF-8") from None


def _inflate(data: bytes, where: str, max_text: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_text + 1)
    except zlib.error as exc:
        raise CorruptFileError(f"{where} does not decompress ({exc})") from None
    if len(out) > max_text:
        raise LimitExceededError(f"{where} decompresses to more than Limits.max_json_bytes={max_text:,} bytes")
    return out
