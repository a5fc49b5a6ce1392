"""The v2 byte layout: the fixed header and the JSON chunk index (docs/FORMAT.md is the spec).

A file is: header (72 bytes) | index (canonical JSON) | chunk payloads, back to back, to the end.
The header's CRC covers the header, the header holds the index's sha256, and the index holds
every chunk's sha256; since chunks must tile the file exactly, every byte is covered by a check.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from .errors import CorruptFileError, LimitExceededError, UnsupportedVersionError

MAGIC = b"raiiaf"  # v1 files start with it too; the major version byte after it tells them apart
MAJOR = 2
MINOR = 0

# magic, major, minor, flags, header_size, index_offset, index_length, file_size, index_sha256
_HEADER_BODY = struct.Struct("<6sBBHHQQQ32s")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _CRC.size
# What a reader reads first: the header, the index and the metadata of a typical file (a ComfyUI save with its
# prompt and workflow, a diffusers capture), usually the environment too. Pillow reads PNG text chunks in
# blocks of the same size.
FIRST_READ = 8 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what a file may make the reader allocate; raise them for unusually large files."""

    max_index_bytes: int = 16 << 20
    # Python's JSON parser can take ~60x the text in memory, so this bounds metadata reads near 1 GiB.
    max_json_bytes: int = 16 << 20
    max_json_depth: int = 200
    max_chunks: int = 100_000
    max_recipe_bytes: int = 1 << 30  # bytes a noise recipe (a few bytes of JSON) may draw
    max_v1_output: int = 1 << 30  # bytes a v1 file may decompress to, all chunks together
    # Decoded pixels Artifact.image() accepts: 8192x8192 (as RGB, 192 MiB; as a float32 tensor, 768 MiB).
    max_image_pixels: int = 8192 * 8192
    # raiiaf_diffusers replay: the most timesteps a stored scheduler config or call may make a replay allocate
    # or run (num_train_timesteps, num_inference_steps, timesteps/sigmas lists, steps run).
    max_replay_steps: int = 10_000


DEFAULT_LIMITS = Limits()


class Header(NamedTuple):
    major: int
    minor: int
    index_offset: int
    index_length: int
    file_size: int
    index_sha256: bytes


class ChunkEntry(NamedTuple):
    """One chunk as the index describes it; `info` holds the type-specific fields."""

    type: str
    name: str
    offset: int
    length: int
    sha256: str
    codec: str = "none"
    size: int = 0  # decoded size; equals length when codec is "none"
    info: dict = {}

    def to_json(self) -> dict:
        return {"type": self.type, "name": self.name, "offset": self.offset, "length": self.length,
                "sha256": self.sha256, "codec": self.codec, "size": self.size, **self.info}


_ENTRY_FIELDS = ("type", "name", "offset", "length", "sha256", "codec", "size")
_ENTRY_TYPES = (str, str, int, int, str, str, int)
_entry_fields = operator.itemgetter(*_ENTRY_FIELDS)
# The tuple constructor itself, without NamedTuple's argument handling: new_record(ChunkEntry, values), for
# records made from values already checked, on every file opened (the chunk table's specs too).
new_record = tuple.__new__
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def canonical_json(value) -> bytes:
    """The one JSON encoding used for every JSON part of a file, so equal inputs give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def is_v1(head: bytes) -> bool:
    """Whether these first bytes of a file start a v1 file (magic and major version 1)."""
    return len(head) >= 7 and head[:6] == MAGIC and head[6] == 1


def pack_header(index_offset: int, index_length: int, file_size: int, index_sha256: bytes) -> bytes:
    body = _HEADER_BODY.pack(MAGIC, MAJOR, MINOR, 0, HEADER_SIZE, index_offset, index_length, file_size, index_sha256)
    return body + _CRC.pack(zlib.crc32(body))


def unpack_header(data: bytes, source: str) -> Header:
    """Parse and check the header; `data` holds at least the file's first bytes (maybe fewer than HEADER_SIZE)."""
    if data[: len(MAGIC)] != MAGIC:
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
    if zlib.crc32(body) != _CRC.unpack_from(data, _HEADER_BODY.size)[0]:
        raise CorruptFileError(f"{source}: damaged header (checksum mismatch)")
    _, _, _, flags, header_size, index_offset, index_length, file_size, index_sha256 = _HEADER_BODY.unpack(body)
    if flags != 0 or header_size != HEADER_SIZE or index_offset != HEADER_SIZE:
        raise CorruptFileError(f"{source}: header fields are inconsistent (flags={flags}, header_size={header_size})")
    return new_record(Header, (major, minor, index_offset, index_length, file_size, index_sha256))


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


# -- JSON as the format allows it ----------------------------------------------------------------------------

class _NotJson(ValueError):
    """A number JSON cannot hold: NaN, Infinity or a literal beyond float range (1e400)."""


_INFINITY = float("inf")


def _refuse_constant(literal: str):
    raise _NotJson(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value == _INFINITY or value == -_INFINITY:
        raise _NotJson(literal)
    return value


def parse_json_text(text: str, constant=_refuse_constant):
    """json.loads that refuses NaN, ±Infinity and out-of-range numbers (raising ValueError), which Python's
    parser otherwise accepts; `constant` may map NaN/Infinity to a value instead (v1 files wrote them)."""
    decoder = _DECODER if constant is _refuse_constant else \
        json.JSONDecoder(parse_float=_finite_float, parse_constant=constant)
    return decoder.decode(text)


# Made once: json.loads with hooks builds a decoder per call, which costs more than parsing a small index.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)
_SCAN = _DECODER.scan_once
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json(data: bytes, what: str, source: str, limits: Limits):
    """Parse JSON from a file, turning every failure (including nesting bombs) into CorruptFileError."""
    try:
        text = data.decode("utf-8")
        # The scanner itself when the text is one value and nothing else (canonical JSON always is); decode()
        # for anything else: surrounding whitespace, trailing data, and the error messages.
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except _NotJson as exc:
        raise CorruptFileError(f"{source}: {what} holds the number {str(exc)[:40]}, which JSON cannot hold "
                               "(NaN, Infinity and values beyond float range are refused)") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{source}: {what} is not valid JSON ({type(exc).__name__})") from None
    limit = limits.max_json_depth
    # The bound nesting_depth starts with, tested here first: it settles almost every file without a call.
    if _more_openings_than(data, limit) and nesting_depth(data, value, limit) > limit:
        raise LimitExceededError(f"{source}: {what} nests deeper than Limits.max_json_depth={limit}")
    # A "\udXXX" escape may parse to a lone surrogate, which no UTF-8 text can hold: refuse it here rather than
    # fail wherever the value is printed or saved later. Checked only when such an escape appears at all.
    if b"\\" in data and _SURROGATE_ESCAPE.search(data):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise CorruptFileError(f"{source}: {what} holds a string that is not valid Unicode") from None
    return value


def _more_openings_than(text: bytes, limit: int) -> bool:
    """Whether `text` holds more than `limit` opening brackets (of either kind), brackets in strings included.

    No container nests deeper than there are brackets opening one. Counted by bytes.replace with a count, whose
    search is memchr: it stops once `limit` + 1 are found and costs about half what a translate over the text
    does (this runs on every metadata read). Braces become brackets first, then up to `limit` + 1 brackets are
    deleted: more than `limit` are deleted exactly when the text has more than `limit` openings.
    """
    bound = limit + 1
    return len(text) - len(text.replace(b"{", b"[", bound).replace(b"[", b"", bound)) > limit


# Deletes every byte but brackets and quotes, and maps braces to brackets (both are just containers here).
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def nesting_depth(text: bytes, value, limit: int) -> int:
    """How many containers `value`, parsed from the JSON `text`, nests (a result over `limit` may be inexact).

    Runs on every metadata read, so it works on the text with bytes methods where it can: what is left of
    valid JSON once everything but brackets and quotes is deleted is its structure, provided no string holds
    a bracket. Each pass of replace("[]") then removes exactly the innermost containers.
    """
    if not _more_openings_than(text, limit):
        return 0  # cannot nest deeper than it has opening brackets; the exact figure is not needed
    if b"\\" in text:  # escaped backslashes, then escaped quotes: the quotes left delimit strings
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = text.translate(_BRACKETS, _NOT_STRUCTURE)
    quotes = marks.count(b'"')
    if marks.count(b'""') * 2 != quotes:  # some string holds a bracket: count on the parsed value instead
        return _walk_depth(value, limit)
    structure = marks.translate(None, b'"') if quotes else marks
    depth = 0
    while structure and depth <= limit:
        structure = structure.replace(b"[]", b"")
        depth += 1
    return depth


def _walk_depth(value, limit: int) -> int:
    # Iterative so a hostile file cannot exhaust the stack here either; level by level, which costs less than a
    # stack of single values in Python.
    depth, level = 0, [value]
    while depth <= limit:
        children, containers = [], False
        for node in level:
            kind = type(node)  # json.loads makes plain dicts and lists only; type() is cheaper than isinstance
            if kind is dict:
                children.extend(node.values())
                containers = True
            elif kind is list:
                children.extend(node)
                containers = True
        if not containers:
            return depth
        depth += 1
        level = children
    return depth


# -- the index ------------------------------------------------------------------------------------------------

def encode_index(entries) -> bytes:
    return canonical_json({"chunks": [e.to_json() for e in entries]})


def decode_index(data: bytes, header: Header, source: str, limits: Limits) -> list:
    """Parse the index and check that its chunks tile the rest of the file exactly; returns the index's chunk
    objects (dicts), every common field checked. entry() makes a ChunkEntry of one."""
    if hashlib.sha256(data).digest() != header.index_sha256:
        raise CorruptFileError(f"{source}: damaged index (sha256 mismatch)")
    doc = decode_json(data, "index", source, limits)
    chunks = doc.get("chunks") if type(doc) is dict else None
    if type(chunks) is not list:
        raise CorruptFileError(f"{source}: index has no chunk list")
    if len(chunks) > limits.max_chunks:
        raise LimitExceededError(f"{source}: {len(chunks)} chunks, over Limits.max_chunks={limits.max_chunks}")
    offset = header.index_offset + header.index_length
    fields, sha256_hex = _entry_fields, _SHA256_HEX.fullmatch
    for i, raw in enumerate(chunks):
        # One test for the usual case (this runs for every chunk of every file opened); _entry_error says
        # what is wrong otherwise. type() rather than isinstance: a bool is not an offset.
        try:
            kind, name, start, length, digest, codec, size = fields(raw)
        except (KeyError, TypeError):
            raise _entry_error(raw, i, offset, source) from None
        if not (type(kind) is str and type(name) is str and type(start) is int and type(length) is int
                and type(digest) is str and type(codec) is str and type(size) is int and start == offset
                and length >= 0 and size >= 0 and (size == length or codec != "none") and sha256_hex(digest)):
            raise _entry_error(raw, i, offset, source)
        offset += length
    if offset != header.file_size:
        raise CorruptFileError(f"{source}: chunks end at byte {offset}, file has {header.file_size}")
    return chunks


def entry(raw: dict) -> ChunkEntry:
    """The ChunkEntry of one index object decode_index checked."""
    if len(raw) > len(_ENTRY_FIELDS):  # type-specific fields: what is left once the common ones are taken out
        info = raw.copy()
        del info["type"], info["name"], info["offset"], info["length"], info["sha256"], info["codec"], info["size"]
    else:
        info = {}
    return new_record(ChunkEntry, (*_entry_fields(raw), info))


def _entry_error(raw, i: int, expected_offset: int, source: str) -> CorruptFileError:
    def fail(why: str) -> CorruptFileError:
        return CorruptFileError(f"{source}: index chunk {i}: {why}")

    if type(raw) is not dict:
        return fail("not an object")
    for key, kind in zip(_ENTRY_FIELDS, _ENTRY_TYPES):
        if key not in raw:
            return fail(f"field '{key}' is missing")
        if type(raw[key]) is not kind:
            return fail(f"field '{key}' is not a {kind.__name__}")
    if raw["offset"] != expected_offset:
        return CorruptFileError(f"{source}: index chunk {i} starts at {raw['offset']}, expected {expected_offset}")
    if raw["length"] < 0 or raw["size"] < 0:
        return fail("negative offset or size")
    if raw["codec"] == "none" and raw["size"] != raw["length"]:
        return fail("size differs from length for an uncompressed chunk")
    return fail("malformed sha256")
