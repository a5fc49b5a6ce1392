"""The v2 byte layout: the fixed header and the JSON chunk index (docs/FORMAT.md is the spec).

A file is: header (72 bytes) | index (canonical JSON) | chunk payloads, back to back, to the end.
The header's CRC covers the header, the header holds the index's sha256, and the index holds
every chunk's sha256; since chunks must tile the file exactly, every byte is covered by a check.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field

from .errors import CorruptFileError, LimitExceededError, UnsupportedVersionError

MAGIC = b"raiiaf"
MAJOR = 2
MINOR = 0

# magic, major, minor, flags, header_size, index_offset, index_length, file_size, index_sha256
_HEADER_BODY = struct.Struct("<6sBBHHQQQ32s")
HEADER_SIZE = _HEADER_BODY.size + 4  # + crc32 of the body
# Enough for the header, the index and a typical metadata + environment in one read.
FIRST_READ = 16 * 1024

CHUNK_TYPES = ("metadata", "environment", "image", "tensor")
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Limits:
    """Bounds on what a file may make the reader allocate; raise them for unusually large files."""

    max_index_bytes: int = 16 << 20
    # Python's JSON parser can take ~60x the text in memory, so this bounds metadata reads near 1 GiB.
    max_json_bytes: int = 16 << 20
    max_json_depth: int = 200
    max_chunks: int = 100_000
    max_v1_output: int = 1 << 30  # bytes a v1 file may decompress to, all chunks together
    # raiiaf_diffusers replay: the most timesteps a stored scheduler config or call may make a replay allocate
    # or run (num_train_timesteps, num_inference_steps, timesteps/sigmas lists, steps run).
    max_replay_steps: int = 10_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    index_offset: int
    index_length: int
    file_size: int
    index_sha256: bytes


@dataclass(frozen=True)
class ChunkEntry:
    """One chunk as the index describes it; `info` holds the type-specific fields."""

    type: str
    name: str
    offset: int
    length: int
    sha256: str
    codec: str = "none"
    size: int = 0  # decoded size; equals length when codec is "none"
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "name": self.name,
            "offset": self.offset,
            "length": self.length,
            "sha256": self.sha256,
            "codec": self.codec,
            "size": self.size,
            **self.info,
        }


def canonical_json(value) -> bytes:
    """The one JSON encoding used for every JSON part of a file, so equal inputs give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def pack_header(index_offset: int, index_length: int, file_size: int, index_sha256: bytes) -> bytes:
    body = _HEADER_BODY.pack(MAGIC, MAJOR, MINOR, 0, HEADER_SIZE, index_offset, index_length, file_size, index_sha256)
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_header(data: bytes, source: str) -> Header:
    """Parse and check the header; `data` holds at least the file's first bytes (maybe fewer than HEADER_SIZE)."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise CorruptFileError(f"{source}: not a .raiiaf file (the first bytes are not the 'raiiaf' magic)")
    if len(data) < len(MAGIC) + 2:
        raise CorruptFileError(f"{source}: truncated header ({len(data)} bytes)")
    major, minor = data[6], data[7]
    if major > MAJOR:
        raise UnsupportedVersionError(
            f"{source}: format version {major}.{minor} is newer than this reader ({MAJOR}.{MINOR}); "
            "upgrade raiiaf (or the file's header is damaged)"
        )
    if major != MAJOR:
        raise CorruptFileError(f"{source}: header says format version {major}.{minor}, expected {MAJOR}.x")
    if len(data) < HEADER_SIZE:
        raise CorruptFileError(f"{source}: truncated header ({len(data)} of {HEADER_SIZE} bytes)")
    body = data[: _HEADER_BODY.size]
    (crc,) = struct.unpack_from("<I", data, _HEADER_BODY.size)
    if zlib.crc32(body) != crc:
        raise CorruptFileError(f"{source}: damaged header (checksum mismatch)")
    _, _, _, flags, header_size, index_offset, index_length, file_size, index_sha256 = _HEADER_BODY.unpack(body)
    if flags != 0 or header_size != HEADER_SIZE or index_offset != HEADER_SIZE:
        raise CorruptFileError(f"{source}: header fields are inconsistent (flags={flags}, header_size={header_size})")
    return Header(major, minor, index_offset, index_length, file_size, index_sha256)


def check_header_against_file(header: Header, actual_size: int, source: str, limits: Limits) -> None:
    if header.file_size != actual_size:
        kind = "truncated" if actual_size < header.file_size else "has trailing bytes"
        raise CorruptFileError(f"{source}: file {kind}: header says {header.file_size} bytes, found {actual_size}")
    if header.index_offset + header.index_length > actual_size:
        raise CorruptFileError(f"{source}: index extends past the end of the file")
    if header.index_length > limits.max_index_bytes:
        raise LimitExceededError(
            f"{source}: index is {header.index_length} bytes, over Limits.max_index_bytes={limits.max_index_bytes}"
        )


def decode_json(data: bytes, what: str, source: str, limits: Limits):
    """Parse JSON from a file, turning every failure (including nesting bombs) into CorruptFileError."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{source}: {what} is not valid JSON ({type(exc).__name__})") from None
    if _depth(value, limits.max_json_depth) > limits.max_json_depth:
        raise LimitExceededError(f"{source}: {what} nests deeper than Limits.max_json_depth={limits.max_json_depth}")
    # A "\udXXX" escape may parse to a lone surrogate, which no UTF-8 text can hold: refuse it here rather than
    # fail wherever the value is printed or saved later. Checked only when such an escape appears at all.
    if b"\\ud" in data or b"\\uD" in data:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise CorruptFileError(f"{source}: {what} holds a string that is not valid Unicode") from None
    return value


def _depth(value, limit: int) -> int:
    # Iterative so a hostile file cannot exhaust the stack here either; level by level, because this runs
    # on every metadata read and a per-value Python loop cost more than json.loads itself.
    deepest, level = 0, [value]
    while level:
        deepest += 1
        if deepest > limit:
            return deepest
        children = []
        for node in level:
            kind = type(node)  # json.loads makes plain dicts and lists only; type() is cheaper than isinstance
            if kind is dict:
                children.extend(node.values())
            elif kind is list:
                children.extend(node)
        level = children
    return deepest


def encode_index(entries: list[ChunkEntry]) -> bytes:
    return canonical_json({"chunks": [e.to_json() for e in entries]})


def decode_index(data: bytes, header: Header, source: str, limits: Limits) -> list[ChunkEntry]:
    """Parse the index and check that its chunks tile the rest of the file exactly."""
    if hashlib.sha256(data).digest() != header.index_sha256:
        raise CorruptFileError(f"{source}: damaged index (sha256 mismatch)")
    doc = decode_json(data, "index", source, limits)
    chunks = doc.get("chunks") if isinstance(doc, dict) else None
    if not isinstance(chunks, list):
        raise CorruptFileError(f"{source}: index has no chunk list")
    if len(chunks) > limits.max_chunks:
        raise LimitExceededError(f"{source}: {len(chunks)} chunks, over Limits.max_chunks={limits.max_chunks}")
    entries = []
    expected_offset = header.index_offset + header.index_length
    for i, raw in enumerate(chunks):
        entry = _entry_from_json(raw, i, source)
        if entry.offset != expected_offset:
            raise CorruptFileError(f"{source}: index chunk {i} starts at {entry.offset}, expected {expected_offset}")
        expected_offset += entry.length
        entries.append(entry)
    if expected_offset != header.file_size:
        raise CorruptFileError(f"{source}: chunks end at byte {expected_offset}, file has {header.file_size}")
    return entries


def _entry_from_json(raw, i: int, source: str) -> ChunkEntry:
    def fail(why: str):
        raise CorruptFileError(f"{source}: index chunk {i}: {why}")

    if not isinstance(raw, dict):
        fail("not an object")
    raw = dict(raw)
    values = {}
    for key, kind in (("type", str), ("name", str), ("offset", int), ("length", int), ("sha256", str),
                      ("codec", str), ("size", int)):
        value = raw.pop(key, None)
        if not isinstance(value, kind) or isinstance(value, bool):
            fail(f"field '{key}' is missing or not a {kind.__name__}")
        values[key] = value
    if values["offset"] < 0 or values["length"] < 0 or values["size"] < 0:
        fail("negative offset or size")
    if len(values["sha256"]) != 64 or not set(values["sha256"]) <= _HEX:
        fail("malformed sha256")
    if values["codec"] == "none" and values["size"] != values["length"]:
        fail("size differs from length for an uncompressed chunk")
    return ChunkEntry(info=raw, **values)
