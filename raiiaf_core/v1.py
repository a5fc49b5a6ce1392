"""Reader for files of the old raiiaf v1 format, written by the PyPI library ``raiiaf`` 1.x.

A pure parser: numpy and zstandard only. zfpy is imported only when a zfp-compressed latent
is met. Every size the file declares is checked against the file's length or ``max_output``
before anything is allocated, and every sha256 the manifest records is verified (the v1
library itself never checked them).

v1 layout, all integers little-endian, chunks laid back to back in this order:

    header    33 bytes "<6sBBBIIIQI": b"raiiaf", major 1, minor 0, flags 0,
              u32 manifest offset, u32 manifest size, u32 chunk count, u64 file size, u32 reserved 0
    LATN      one per latent. Each chunk body starts with a 12-byte frame "<4s4sI":
              type, flags, payload size. Uncompressed: frame + raw C-order array bytes.
              Compressed: zstd(frame) (manifest "len_header" bytes) + a zfpy stream ("len_data")
    DATA      zstd(frame b"DATA" b"0000" + image file bytes)
    ENVC      zstd(frame b"ENVC" b"0000" + environment JSON)
    manifest  zstd(frame b"META" b"0000" + JSON); not listed in its own chunk table
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from . import images, layout
from .errors import CorruptFileError, LimitExceededError, MissingDependencyError
from .layout import MAGIC, is_v1  # noqa: F401 - is_v1 is part of this module's interface
from .tensors import MAX_RANK

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<6sBBBIIIQI")
_FRAME = struct.Struct("<4s4sI")
_PLAIN_FLAGS = b"0000"  # the flags v1 wrote on DATA, ENVC and META frames
# Manifest "flags" of a LATN chunk -> dtype of its payload (v1 wrote only these two).
_LATENT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2")}

# A zstd block needs at least 4 bytes (3-byte header + 1 RLE byte) and yields at most 128 KiB,
# so no frame can decompress to more than 32768 times its own length.
_ZSTD_MAX_RATIO = 32768

# zfp stream header as zfpy writes it: 32-bit magic ("zfp" + codec version), 52-bit field
# metadata, 12-bit mode, packed LSB first into little-endian 64-bit words.
_ZFP_HEADER_BYTES = 16  # two words hold all 96 header bits
_ZFP_HEADER_BITS = 32 + 52 + 12
_ZFP_TYPE_FLOAT = 2  # zfp_type_float - 1, as stored in the metadata
_ZFP_MODE_REVERSIBLE = 2176  # the only mode v1 used: compress_numpy(array) with no tolerance
_ZFP_MAX_BITS_PER_BLOCK = 16658  # ZFP_MAX_BITS: the most a reversible block may read


@dataclass(frozen=True)
class V1Contents:
    """Everything a v1 file holds, checked and decoded."""

    version: tuple[int, int]
    image: bytes | None  # the image file bytes as stored, or None
    image_format: str | None  # "png" / "webp" / "jpeg" sniffed from the bytes, None if other
    tensors: dict[str, np.ndarray]  # latents by their v1 key
    metadata: dict  # mapped to schema 1; the whole v1 manifest is in metadata["host"]["raiiaf_v1"]
    environment: dict  # the v1 ENVC chunk ({} if none)


def parse_v1(data: bytes, source: str, *, max_output: int = layout.DEFAULT_LIMITS.max_v1_output,
             max_json: int = layout.DEFAULT_LIMITS.max_json_bytes,
             max_depth: int = layout.DEFAULT_LIMITS.max_json_depth) -> V1Contents:
    """Parse a whole v1 file held in memory.

    ``source`` names the file in error messages. ``max_output`` bounds the bytes that
    decompression may produce for the whole file, ``max_json`` the decoded size of each JSON part
    (manifest, environment) and ``max_depth`` their nesting, as Limits does for v2 files. Raises
    CorruptFileError (or its subclass LimitExceededError) for any damage, MissingDependencyError
    when a zfp latent meets no zfpy.
    """
    return _Reader(data, source, max_output, max_json, max_depth).read()


class _Reader:
    def __init__(self, data: bytes, source: str, max_output: int, max_json: int, max_depth: int):
        self.data = memoryview(data)
        self.source = source
        self.output_left = max_output
        self.max_json, self.max_depth = max_json, max_depth

    def fail(self, part: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.source}: {part}: {problem}")

    def spend(self, part: str, size: int) -> None:
        """Count bytes about to be allocated for output against max_output."""
        if size > self.output_left:
            raise LimitExceededError(
                f"{self.source}: {part}: needs {size} bytes of output, more than the "
                f"{self.output_left} left under Limits.max_v1_output"
            )
        self.output_left -= size

    def read(self) -> V1Contents:
        data = self.data
        if len(data) < _HEADER.size:
            raise self.fail("header", f"file is {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
        magic, major, minor, flags, table_offset, table_size, count, file_size, reserved = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise self.fail("header", "no raiiaf magic; not a raiiaf file")
        if (major, minor) != (1, 0):
            raise self.fail("header", f"version {major}.{minor}; the v1 library only wrote 1.0")
        if flags or reserved:
            raise self.fail("header", "flags and reserved fields must be zero")
        if file_size != len(data):
            raise self.fail("header", f"records a {file_size}-byte file but the file has {len(data)} bytes")
        # The writer puts the manifest last, right up to the end of the file.
        if table_offset < _HEADER.size or table_offset + table_size != len(data):
            raise self.fail("header", f"manifest at {table_offset}+{table_size} does not end the file")

        manifest = self.manifest(data[table_offset:])
        records = manifest["raiiaf_metadata"]["chunks"]
        if len(records) != count:
            raise self.fail("header", f"counts {count} chunks, the manifest lists {len(records)}")

        image = None
        environment = None
        tensors = {}
        offset = _HEADER.size
        for index, record in enumerate(records):
            part = f"chunk {index}"
            if not isinstance(record, dict):
                raise self.fail(part, "manifest record is not an object")
            kind = record.get("type")
            part = f"chunk {index} ({kind})"
            start = self.size(record, "offset", part)
            # Chunks tile the file between header and manifest, so every byte is accounted for.
            if start != offset:
                raise self.fail(part, f"starts at byte {start}, expected {offset}")
            end = start + self.size(record, "compressed_size", part)
            if end > table_offset:
                raise self.fail(part, f"ends at byte {end}, past the manifest at {table_offset}")
            chunk = data[start:end]
            offset = end
            if kind == "LATN":
                name, array = self.latent(record, chunk, index)
                if name in tensors:
                    raise self.fail(part, f"second latent named {name!r}")
                tensors[name] = array
            elif kind == "DATA" and image is None:
                image = bytes(self.framed(record, chunk, b"DATA", part))
            elif kind == "ENVC" and environment is None:
                environment = self.parse_json(self.framed(record, chunk, b"ENVC", part), part)
                if not isinstance(environment, dict):
                    raise self.fail(part, "environment JSON is not an object")
            else:
                raise self.fail(part, "unknown or repeated chunk type")
        if offset != table_offset:
            raise self.fail("chunk table", f"chunks end at byte {offset}, the manifest starts at {table_offset}")

        return V1Contents(
            version=(major, minor),
            image=image,
            # None also for formats other than PNG/WebP/JPEG: v1 took any image Pillow could open
            image_format=images.sniff_format(image) if image is not None else None,
            tensors=tensors,
            metadata=_map_metadata(manifest),
            environment=environment or {},
        )

    # --- building blocks ---------------------------------------------------------------

    def manifest(self, frame: memoryview) -> dict:
        body = self.unzstd(frame, None, "manifest", json_part=True)
        doc = self.parse_json(self.unframe(body, b"META", _PLAIN_FLAGS, "manifest"), "manifest")
        inner = doc.get("raiiaf_metadata") if isinstance(doc, dict) else None
        if not isinstance(inner, dict) or not isinstance(inner.get("chunks"), list):
            raise self.fail("manifest", "has no raiiaf_metadata.chunks list")
        return doc

    def parse_json(self, raw: memoryview, part: str):
        def non_json(name):
            # json.dumps in v1 let NaN/Infinity through; schema 1 metadata is plain JSON.
            log.warning("%s: %s holds %s; read as null", self.source, part, name)
            return None

        text = bytes(raw)
        if len(text) > self.max_json:
            raise LimitExceededError(f"{self.source}: {part}: {len(text):,} bytes of JSON, over "
                                     f"Limits.max_json_bytes={self.max_json:,}")
        try:
            value = layout.parse_json_text(text.decode("utf-8"), constant=non_json)
            # A "\ud800" escape parses to a lone surrogate, which no UTF-8 text can hold: refuse it here,
            # not when the metadata is encoded or printed later.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and Unicode errors are ValueErrors
            raise self.fail(part, f"not valid UTF-8 JSON ({str(exc)[:200]})") from None
        # Two levels under the limit: the reader nests the manifest under metadata.host.raiiaf_v1.
        if layout.nesting_depth(text, value, self.max_depth) > self.max_depth - 2:
            raise LimitExceededError(f"{self.source}: {part}: nests deeper than Limits.max_json_depth="
                                     f"{self.max_depth} allows for a v1 file")
        return value

    def unzstd(self, frame: memoryview, expected: int | None, part: str, json_part: bool = False) -> bytes:
        """Decompress one zstd frame that must fill the chunk exactly (and hold expected bytes); a JSON part
        may decode to no more than max_json bytes."""
        try:
            declared = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as exc:
            raise self.fail(part, f"not a zstd frame ({exc})") from None
        # v1 always wrote the content size; without it the output could not be bounded up front.
        if declared < 0:
            raise self.fail(part, "zstd frame does not record its decompressed size")
        if expected is not None and declared != expected:
            raise self.fail(part, f"zstd frame holds {declared} bytes, the manifest implies {expected}")
        if declared > len(frame) * _ZSTD_MAX_RATIO:
            raise self.fail(part, f"zstd frame claims {declared} bytes, impossible from {len(frame)} bytes")
        # The frame holds a 12-byte chunk frame, then the JSON text.
        if json_part and declared > self.max_json + _FRAME.size:
            raise LimitExceededError(f"{self.source}: {part}: decodes to {declared:,} bytes, over "
                                     f"Limits.max_json_bytes={self.max_json:,}")
        self.spend(part, declared)
        # Streamed: decompress() would allocate the declared size before decoding a byte, so a few KiB claiming
        # a GiB would reserve it (and raise MemoryError where address space is capped). zstd itself stops a
        # frame that decodes past its declared size.
        decoder = zstandard.ZstdDecompressor().decompressobj()
        try:
            body = decoder.decompress(frame)
        except zstandard.ZstdError as exc:
            raise self.fail(part, f"damaged zstd data ({exc})") from None
        if not decoder.eof or decoder.unused_data or len(body) != declared:
            raise self.fail(part, f"damaged zstd data ({len(body)} of {declared} bytes, frame "
                                  f"{'ends before' if not decoder.eof else 'does not fill'} the chunk)")
        return body

    def unframe(self, body, kind: bytes, flags: bytes, part: str):
        """Strip and check the 12-byte frame that starts every v1 chunk body."""
        if len(body) < _FRAME.size:
            raise self.fail(part, f"shorter than its {_FRAME.size}-byte frame")
        got_kind, got_flags, size = _FRAME.unpack_from(body)
        if (got_kind, got_flags) != (kind, flags):
            raise self.fail(part, f"frame says {got_kind!r} {got_flags!r}, expected {kind!r} {flags!r}")
        if size != len(body) - _FRAME.size:
            raise self.fail(part, f"frame declares {size} payload bytes, {len(body) - _FRAME.size} follow")
        return body[_FRAME.size:]

    def framed(self, record: dict, chunk: memoryview, kind: bytes, part: str):
        """Payload of a DATA or ENVC chunk, checked against its record's size and sha256."""
        size = self.size(record, "uncompressed_size", part)
        body = self.unzstd(chunk, _FRAME.size + size, part, json_part=kind == b"ENVC") if self.flag(record, part) \
            else chunk
        payload = self.unframe(body, kind, _PLAIN_FLAGS, part)
        if len(payload) != size:
            raise self.fail(part, f"holds {len(payload)} bytes, the manifest says {size}")
        self.check_hash(record, payload, part)
        return payload

    def latent(self, record: dict, chunk: memoryview, index: int) -> tuple[str, np.ndarray]:
        part = f"chunk {index} (LATN)"
        extra = record.get("extra")
        name = extra.get("key") if isinstance(extra, dict) else None
        if not isinstance(name, str):
            raise self.fail(part, "manifest record has no extra.key naming the latent")
        part = f"latent {name!r} (chunk {index})"
        code = record.get("flags")
        dtype = _LATENT_DTYPES.get(code) if isinstance(code, str) else None  # a list or object is not hashable
        if dtype is None:
            raise self.fail(part, f"unknown dtype flags {record.get('flags')!r}")
        if extra.get("dtype") != dtype.name:
            raise self.fail(part, f"extra.dtype {extra.get('dtype')!r} disagrees with flags {record['flags']!r}")
        shape = extra.get("shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise self.fail(part, f"extra.shape {shape!r} is not a list of sizes")
        # Checked before multiplying: thousands of huge sizes take minutes to multiply, and their product
        # has too many digits to print. A v2 file holds at most MAX_RANK dimensions, so no real latent has more.
        if len(shape) > MAX_RANK:
            raise self.fail(part, f"extra.shape has {len(shape)} dimensions, more than {MAX_RANK}")
        shape = tuple(shape)
        nbytes = math.prod(shape) * dtype.itemsize
        size = self.size(record, "uncompressed_size", part)
        if size != nbytes:
            raise self.fail(part, f"uncompressed_size {size} is not the byte size of shape {shape}")
        flags = record["flags"].encode("ascii") + b"\0"

        if not self.flag(record, part):
            payload = self.unframe(chunk, b"LATN", flags, part)
            if len(payload) != nbytes:
                raise self.fail(part, f"holds {len(payload)} bytes, shape {shape} needs {nbytes}")
            self.check_hash(record, payload, part)
            # astype copies into a writable, native-order array that no longer pins the file bytes.
            return name, np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))

        head_size = self.size(record, "len_header", part)
        if head_size + self.size(record, "len_data", part) != len(chunk):
            raise self.fail(part, "len_header + len_data is not the chunk size")
        head = self.unzstd(chunk[:head_size], _FRAME.size, part)
        if _FRAME.unpack(head) != (b"LATN", flags, nbytes):
            raise self.fail(part, f"frame {head!r} does not match the manifest record")
        array = self.zfp(chunk[head_size:], shape, dtype, part)
        self.check_hash(record, array.astype(dtype, copy=False).tobytes(), part)
        return name, array

    def zfp(self, stream: memoryview, shape: tuple, dtype: np.dtype, part: str) -> np.ndarray:
        """Decode a zfpy stream after checking its header, so zfp never sizes memory by itself."""
        if len(stream) < _ZFP_HEADER_BYTES:
            raise self.fail(part, "zfp stream is shorter than its header")
        bits = int.from_bytes(stream[:_ZFP_HEADER_BYTES], "little")
        if bits & 0xFFFFFF != int.from_bytes(b"zfp", "little"):
            raise self.fail(part, "zfp stream has no zfp magic")
        meta = (bits >> 32) & ((1 << 52) - 1)
        ndim = ((meta >> 2) & 3) + 1
        width = 48 // ndim  # the 48 size bits are split evenly, fastest axis (numpy's last) lowest
        zfp_shape = tuple(((meta >> (4 + width * axis)) & ((1 << width) - 1)) + 1 for axis in reversed(range(ndim)))
        if meta & 3 != _ZFP_TYPE_FLOAT or dtype.name != "float32":
            raise self.fail(part, "zfp stream is not float32, the only type v1 compressed")
        if (bits >> 84) & 0xFFF != _ZFP_MODE_REVERSIBLE:
            raise self.fail(part, "zfp stream is not in the reversible mode v1 used")
        if zfp_shape != shape:
            raise self.fail(part, f"zfp stream holds shape {zfp_shape}, the manifest says {shape}")

        # zfp reads without bounds checks; zero-pad the stream to the most a reversible stream of
        # this shape can read (whole 64-bit words, plus one spare word), so damage cannot read past it.
        blocks = math.prod((n + 3) // 4 for n in shape)
        padded_size = ((_ZFP_HEADER_BITS + blocks * _ZFP_MAX_BITS_PER_BLOCK + 63) // 64 + 1) * 8
        self.spend(part, math.prod(shape) * dtype.itemsize + padded_size)
        try:
            import zfpy
        except Exception as exc:  # not installed (ImportError), or a build broken against numpy
            raise MissingDependencyError(
                f"{self.source}: {part} is zfp-compressed; reading it needs a working zfpy package "
                f"(pip install zfpy, or pip install 'raiiaf-plugins[v1-zfp]'): {exc}"
            ) from None
        padded = bytes(stream) + bytes(max(0, padded_size - len(stream)))
        try:
            array = zfpy.decompress_numpy(padded)
        except Exception as exc:  # zfpy raises ValueError, RuntimeError or TypeError for bad streams
            raise self.fail(part, f"damaged zfp data ({exc})") from None
        if array.dtype != np.float32 or array.shape != shape:
            raise self.fail(part, f"zfp decoded {array.dtype} {array.shape}, expected float32 {shape}")
        return array

    def size(self, record: dict, key: str, part: str) -> int:
        value = record.get(key)
        if type(value) is not int or value < 0:
            raise self.fail(part, f"manifest field {key!r} is {value!r}, not a byte count")
        return value

    def flag(self, record: dict, part: str) -> bool:
        value = record.get("compressed")
        if not isinstance(value, bool):
            raise self.fail(part, f"manifest field 'compressed' is {value!r}, not a boolean")
        return value

    def check_hash(self, record: dict, payload, part: str) -> None:
        expected = record.get("hash")
        if not isinstance(expected, str):
            raise self.fail(part, "manifest record has no sha256 hash")
        if hashlib.sha256(payload).hexdigest() != expected.lower():
            raise self.fail(part, "sha256 mismatch: the stored bytes are not the ones written")


def _map_metadata(manifest: dict) -> dict:
    """Schema-1 metadata from the v1 manifest: only the fields whose meaning is plain."""
    info = manifest["raiiaf_metadata"].get("model_info")
    info = info if isinstance(info, dict) else {}
    settings = info.get("generation_settings")
    settings = settings if isinstance(settings, dict) else {}

    def text(value):
        return value if isinstance(value, str) and value else None

    def integer(value):
        return value if type(value) is int else None

    def positive(value):
        return value if type(value) is int and value > 0 else None

    def number(value):
        return value if type(value) in (int, float) and math.isfinite(value) else None

    mapped = {
        "created": text(info.get("date")),
        "prompt": text(info.get("prompt")),
        "seed": integer(settings.get("seed")),
        "steps": positive(settings.get("steps")),
        "sampler": text(settings.get("sampler")),
        "scheduler": text(settings.get("scheduler")),
        "guidance_scale": number(settings.get("cfg_scale")),
    }
    model = {"name": text(info.get("model_name")), "revision": text(info.get("version"))}
    mapped["model"] = {key: value for key, value in model.items() if value is not None} or None
    eta = number(settings.get("eta"))
    mapped["sampler_settings"] = {"eta": eta} if eta is not None else None
    tags = info.get("tags")
    if isinstance(tags, list) and tags and all(isinstance(tag, str) for tag in tags):
        mapped["tags"] = tags
    metadata = {key: value for key, value in mapped.items() if value is not None}
    metadata["host"] = {"raiiaf_v1": manifest}
    return metadata
