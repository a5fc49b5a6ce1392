"""Fuzz the reader: hostile files through every read entry point end in a result or a RaiiafError, fast.

    python -m bench.fuzz --inputs 100000            # the long run whose figures the README quotes
    python -m bench.fuzz --replay 1234 --seed 1     # one input again, in this process, with its traceback

Input i of a run is a pure function of (seed, i), so every failure is reproducible from its index alone.
Inputs are mutations of valid v2 files and of the v1 fixtures: bit flips, truncations, splices, header and
index size fields set to extremes, random bytes after a valid magic, and -- with the checksums recomputed, so
the parsers behind the hash checks are reached -- random index JSON, metadata, zstd frames, safetensors
headers and images. Each input goes through rc.open (path and file object), every Artifact accessor,
rc.verify and the CLI's inspect, verify, extract and diff.

Workers run in subprocesses the parent watches: an input using more than --timeout seconds of CPU (or six
times that of wall time, for inputs that block) is a hang -- the worker is killed and replaced -- and a worker
dying is a crash. Memory is measured per input with tracemalloc (what Python, numpy, json, zstd and
safetensors allocate as Python objects) against the target of 2 x input size + 64 MiB, and the workers' peak
RSS after warm-up is reported as well (it also sees Pillow's and torch's own allocations).

One input in five is read under tight rc.Limits, so every limit check is reached from every entry point.

With --semantic, the inputs are real diffusers and ComfyUI records with hostile values instead, and they also
go through raiiaf_diffusers.replay and the ComfyUI node logic (bench/fuzz_records.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import zstandard

MIB = 1 << 20
MEMORY_SLACK = 64 * MIB
REPO = Path(__file__).resolve().parent.parent
V1_FIXTURES = REPO / "tests" / "data" / "v1"
FIXED_ENV = {"schema_version": 1, "python": {"version": "3.11.7"}, "torch": {"version": "2.13.0+cpu"},
             "gpu": [], "os": {"system": "Linux", "machine": "x86_64"}}

# The v2 header as docs/FORMAT.md specifies it, written out here rather than imported, so the fuzzer does not
# share a mistake with the code it tests: magic, major, minor, flags, header_size, index_offset, index_length,
# file_size, index_sha256, then a crc32 of those fields.
HEADER = struct.Struct("<6sBBHHQQQ32s")
HEADER_SIZE = HEADER.size + 4
V1_HEADER = struct.Struct("<6sBBBIIIQI")
V1_FRAME = struct.Struct("<4s4sI")

EXTREME_INTS = [0, 1, -1, 2, 7, 8, 72, 255, 256, 4096, 16384, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53,
                2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63)]
EXTREME_VALUES = EXTREME_INTS + [None, True, False, 0.5, -0.0, 1e308, "", "0", "none", "zstd", "tensor", [], {},
                                 [0], {"a": 1}, "x" * 300, "\u00e9t\u00e9 \U0001f600"]
DTYPE_CODES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
               "F8_E4M3", "F8_E5M2", "C64", "F4", "", "f32"]
DTYPE_NAMES = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint64",
               "uint32", "uint16", "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "complex64", "object", ""]


# -- seeds --------------------------------------------------------------------------------------------

def _image(fmt: str, size: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def make_seeds(folder: Path) -> dict:
    """Valid files covering every part of the format: {name: bytes}. Deterministic, written with rc.write."""
    import torch

    import raiiaf_core as rc

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    specs = {
        "small": dict(image=_image("PNG", 16, 1), tensors={"noise": noise, "sigmas": np.linspace(
            14.6, 0, 5).astype(np.float32)}, metadata={"prompt": "a cat", "seed": 7, "sampler": "euler",
                                                       "noise": {"tensor": "noise", "source": "captured"}}),
        # Over the reader's first 16 KiB read, with metadata and environment big enough to be zstd-compressed.
        "large": dict(image=_image("PNG", 48, 2), tensors={"noise": rng.standard_normal((1, 4, 32, 32)).astype(
            np.float32)}, metadata={"prompt": "fox " * 1500, "tags": ["a", "b"], "batch": {"index": 0, "size": 2},
                                    "model": {"name": "m"}, "extra": {"steps": list(range(800))}},
            environment={**FIXED_ENV, "packages": {f"pkg{i}": f"{i}.0" for i in range(300)}}),
        "dtypes": dict(image=_image("JPEG", 16, 3), tensors={
            "f16": np.arange(6, dtype=np.float16).reshape(2, 3), "bf16": torch.arange(4, dtype=torch.bfloat16),
            "i64": np.array([-1, 0, 2**62], dtype=np.int64), "b": np.array([True, False, True]),
            "empty": np.zeros((0, 3), np.uint8), "scalar": np.array(2.5), "rank8": np.ones((1,) * 8, np.float32)},
            metadata={"seed": None}),
        "bare": dict(metadata={}),
        "webp": dict(image=_image("WEBP", 16, 4), tensors={"noise": noise}, metadata={"steps": 4}),
    }
    seeds = {}
    for name, spec in specs.items():
        spec.setdefault("environment", FIXED_ENV)
        seeds[name] = rc.write(folder / f"{name}.raiiaf", **spec).read_bytes()
    # A chunk type from a newer writer: readers skip it, verify still checks it.
    chunks, payloads = split_v2(seeds["small"])
    payloads.append(b"future chunk bytes")
    chunks.append({"type": "thumbnail", "name": "", "offset": 0, "length": 0, "sha256": "", "codec": "none",
                   "size": 0})
    seeds["future"] = assemble(chunks, payloads)
    for path in sorted(V1_FIXTURES.glob("*.raiiaf")):
        seeds[f"v1_{path.stem}"] = path.read_bytes()
    return seeds


# -- building files ------------------------------------------------------------------------------------

def pack_header(index_length: int, file_size: int, index_sha256: bytes, **fields) -> bytes:
    values = dict(magic=b"raiiaf", major=2, minor=0, flags=0, header_size=HEADER_SIZE, index_offset=HEADER_SIZE,
                  index_length=index_length, file_size=file_size, index_sha256=index_sha256)
    values.update(fields)
    body = HEADER.pack(*values.values())
    return body + struct.pack("<I", zlib.crc32(body))


def split_v2(data: bytes):
    """(chunk entries as dicts, payloads) of a valid v2 file."""
    index_length = HEADER.unpack_from(data)[6]
    chunks = json.loads(data[HEADER_SIZE:HEADER_SIZE + index_length])["chunks"]
    return chunks, [data[c["offset"]:c["offset"] + c["length"]] for c in chunks]


def with_index(index: bytes, payloads) -> bytes:
    """A file with this exact index text, its header (CRC, index sha256, sizes) made valid."""
    body = b"".join(payloads)
    return pack_header(len(index), HEADER_SIZE + len(index) + len(body), hashlib.sha256(index).digest()) \
        + index + body


def assemble(chunks, payloads, *, rehash=True, relength=True, reoffset=True, ascii_json=False) -> bytes:
    """A file from entries and payloads; the re* flags make the entries match the payloads again."""
    chunks = [dict(c) if isinstance(c, dict) else c for c in chunks]
    for entry, payload in zip(chunks, payloads):
        if not isinstance(entry, dict):
            continue
        if rehash:
            entry["sha256"] = hashlib.sha256(payload).hexdigest()
        if relength:
            entry["length"] = len(payload)
            if entry.get("codec") == "none":
                entry["size"] = len(payload)
    index_length = 0
    while True:  # offsets depend on the index length: iterate to the fixed point, like the writer
        offset = HEADER_SIZE + index_length
        for entry, payload in zip(chunks, payloads):
            if reoffset and isinstance(entry, dict):
                entry["offset"] = offset
            offset += len(payload)
        index = json.dumps({"chunks": chunks}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=ascii_json).encode("utf-8", "surrogatepass")
        if len(index) == index_length or not reoffset:
            break
        index_length = len(index)
    return with_index(index, payloads)


def v1_parts(data: bytes):
    """(header fields, chunk bytes before the manifest, manifest dict) of a v1 file."""
    fields = list(V1_HEADER.unpack_from(data))
    body = zstandard.ZstdDecompressor().decompress(data[fields[4]:])
    return fields, data[V1_HEADER.size:fields[4]], json.loads(body[V1_FRAME.size:])


def v1_file(fields, chunk_bytes: bytes, manifest_json: bytes) -> bytes:
    frame = zstandard.ZstdCompressor().compress(V1_FRAME.pack(b"META", b"0000", len(manifest_json)) + manifest_json)
    fields = list(fields)
    fields[4] = V1_HEADER.size + len(chunk_bytes)
    fields[5], fields[7] = len(frame), fields[4] + len(frame)
    return V1_HEADER.pack(*fields) + chunk_bytes + frame


def safetensors_blob(header, data: bytes, header_length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(text) if header_length is None else header_length) + text + data


# -- mutators ------------------------------------------------------------------------------------------

def random_json(rng: random.Random, depth: int = 3):
    roll = rng.random()
    if depth <= 0 or roll < 0.45:
        return rng.choice(EXTREME_VALUES + [rng.random() * 1e6, rng.randrange(-10**6, 10**6), "\ud800",
                                            "a\udc80b", "\x00", float("nan"), float("inf")])
    if roll < 0.75:
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(6))]
    return {rng.choice(["type", "name", "offset", "length", "sha256", "codec", "size", "chunks", "shape",
                        "dtype", "format", "\ud800", "", "k" + str(rng.randrange(9))]): random_json(rng, depth - 1)
            for _ in range(rng.randrange(6))}


def json_text_payload(rng: random.Random) -> bytes:
    """JSON text a metadata/environment chunk might hold, hostile in one of the ways JSON can be."""
    kind = rng.randrange(11)
    if kind == 0:
        depth = rng.choice([150, 199, 200, 201, 202, 990, 5000, 100_000])
        return b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 1:
        return b'{"seed":' + b"9" * rng.choice([4300, 4301, 10_000]) + b"}"
    if kind == 2:
        return rng.choice([b'{"prompt":"\\ud800"}', b'{"\\udc80":1}', b'{"p":"\\ud83d\\ude00"}', b'{"p":"\\u0000"}'])
    if kind == 3:
        return rng.choice([b"[]", b"1", b'"s"', b"null", b"NaN", b"{}", b"", b" ", b"\xff\xfe{}", b'{"a":1}x'])
    if kind == 4:
        return b'{"a":NaN,"b":Infinity,"c":-Infinity}'
    if kind == 5:
        return rng.randbytes(rng.randrange(64))
    if kind == 6:
        return b'{"model":"x","batch":3,"noise":[1],"tags":[1,null],"gpu":5,"torch":"2","os":[],"python":1}'
    if kind == 7:
        return b'{"tags":' + b"[" + b'"t",' * rng.randrange(1, 5000) + b'"t"]}'
    text = json.dumps(random_json(rng, 4), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return text if kind != 8 else b'{"x":' + text + b"}"


def flip_bits(rng, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(rng, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        out[rng.randrange(len(out))] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(out)


def edit_ranges(rng, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    j = min(len(data), i + rng.choice([1, 2, 8, 64, 4096]))
    kind = rng.randrange(4)
    if kind == 0:
        return data[:i] + data[j:]  # delete
    if kind == 1:
        return data[:i] + rng.randbytes(j - i) + data[i:]  # insert
    if kind == 2:
        return data[:j] + data[i:]  # duplicate
    return data[:i] + rng.randbytes(j - i) + data[j:]  # overwrite


def byte_mutation(rng, data: bytes, seeds) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return flip_bits(rng, data)
    if kind == 1:
        return set_bytes(rng, data)
    if kind == 2:
        return data[:rng.randrange(len(data) + 1)]
    if kind == 3:
        return data + rng.choice([b"\0", rng.randbytes(rng.randrange(1, 256)), data])
    if kind == 4:
        other = seeds[rng.choice(sorted(seeds))]
        return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    return edit_ranges(rng, data)


def m_bytes_v2(rng, seeds, v2, v1):
    return byte_mutation(rng, seeds[rng.choice(v2)], seeds)


def m_bytes_v1(rng, seeds, v2, v1):
    return byte_mutation(rng, seeds[rng.choice(v1 or v2)], seeds)


def m_random_after_magic(rng, seeds, v2, v1):
    major = rng.choice([1, 2, 2, 3, 0, 255])
    head = b"raiiaf" + bytes([major, rng.choice([0, 1, 255])])
    if rng.random() < 0.5:
        return head + rng.randbytes(rng.randrange(0, 4096))
    if major == 1:  # a v1 header with random fields, then random bytes
        fields = [b"raiiaf", 1, 0, 0] + [rng.choice(EXTREME_INTS[:17]) % 2**32 for _ in range(3)] \
            + [rng.choice(EXTREME_INTS) % 2**64, 0]
        return V1_HEADER.pack(*fields) + rng.randbytes(rng.randrange(0, 2048))
    # A v2 header whose CRC is right, so its fields are believed, with random fields and random bytes after.
    tail = rng.randbytes(rng.randrange(0, 2048))
    size = HEADER_SIZE + len(tail)
    return pack_header(rng.choice([0, 1, len(tail), len(tail) + 1, 2**63]), rng.choice([size, size + 1, 2**64 - 1]),
                       hashlib.sha256(tail[:rng.randrange(len(tail) + 1)]).digest(), major=major) + tail


def m_header_fields(rng, seeds, v2, v1):
    """A real file whose header fields are set to extremes, with the header CRC recomputed."""
    data = seeds[rng.choice(v2)]
    fields = dict(zip(["magic", "major", "minor", "flags", "header_size", "index_offset", "index_length",
                       "file_size", "index_sha256"], HEADER.unpack_from(data)))
    sizes = {"major": 256, "minor": 256, "flags": 2**16, "header_size": 2**16, "index_offset": 2**64,
             "index_length": 2**64, "file_size": 2**64}
    for key in rng.sample(sorted(sizes), rng.choice([1, 1, 2])):
        near = [fields[key] - 1, fields[key] + 1, len(data), len(data) - HEADER_SIZE]
        fields[key] = rng.choice(EXTREME_INTS + near) % sizes[key]
    if rng.random() < 0.2:
        fields["index_sha256"] = rng.randbytes(32)
    return pack_header(**{k: v for k, v in fields.items() if k not in ("magic",)}) + data[HEADER_SIZE:]


def m_index_fields(rng, seeds, v2, v1):
    """One index entry field set to an extreme or wrong-typed value; checksums recomputed, offsets maybe."""
    chunks, payloads = split_v2(seeds[rng.choice(v2)])
    for _ in range(rng.choice([1, 1, 2, 3])):
        entry = rng.choice(chunks)
        key = rng.choice(["type", "name", "offset", "length", "sha256", "codec", "size", "dtype", "shape", "format",
                          "width", "height", "media_type"])
        roll = rng.random()
        if roll < 0.15:
            entry.pop(key, None)
        elif key == "shape":
            entry[key] = rng.choice([[], [rng.choice(EXTREME_INTS)], [2] * rng.choice([9, 100]), [10**4000] * 50,
                                     [1, -1], [True], "1,4", [0, 2**64], [1, 4, 4, 4.0]])
        elif key == "dtype":
            entry[key] = rng.choice(DTYPE_NAMES)
        elif key == "type":
            entry[key] = rng.choice(["metadata", "environment", "image", "tensor", "tensor_recipe", "thumbnail", "",
                                     1])
        elif key == "codec":
            entry[key] = rng.choice(["none", "zstd", "gzip", "", None])
        else:
            entry[key] = rng.choice(EXTREME_VALUES)
    keep = rng.random() < 0.5  # half the time only the tiling checks stand between the entry and the parser
    return assemble(chunks, payloads, rehash=keep, relength=False, reoffset=keep, ascii_json=rng.random() < 0.3)


def m_index_entries(rng, seeds, v2, v1):
    """Entries duplicated, dropped, reordered or invented; the file stays consistent with its index."""
    chunks, payloads = split_v2(seeds[rng.choice(v2)])
    pairs = list(zip(chunks, payloads))
    kind = rng.randrange(5)
    if kind == 0 and pairs:
        pairs.insert(rng.randrange(len(pairs) + 1), rng.choice(pairs))
    elif kind == 1 and pairs:
        pairs.pop(rng.randrange(len(pairs)))
    elif kind == 2:
        rng.shuffle(pairs)
    elif kind == 3:
        pairs.append((random_json(rng, 2), rng.randbytes(rng.randrange(32))))
    else:
        pairs = pairs * rng.choice([2, 50])
    return assemble([c for c, _ in pairs], [p for _, p in pairs], ascii_json=rng.random() < 0.5)


def m_index_text(rng, seeds, v2, v1):
    """The index JSON text itself damaged (not its hash), so json.loads and the entry checks see it."""
    chunks, payloads = split_v2(seeds[rng.choice(v2)])
    index = json.dumps({"chunks": chunks}, sort_keys=True, separators=(",", ":")).encode()
    if rng.random() < 0.5:
        index = byte_mutation(rng, index, {"i": index})
    else:
        index = json.dumps(random_json(rng, 5) if rng.random() < 0.5 else {"chunks": random_json(rng, 4)}).encode(
            "utf-8", "surrogatepass")
    return with_index(index, payloads)


def _replace_chunk(rng, data: bytes, kind: str, payload: bytes, **fields) -> bytes:
    chunks, payloads = split_v2(data)
    for i, entry in enumerate(chunks):
        if entry["type"] == kind:
            payloads[i] = payload
            entry.update(fields)
            break
    return assemble(chunks, payloads, ascii_json=rng.random() < 0.3)


def m_json_chunk(rng, seeds, v2, v1):
    """Metadata or environment replaced by hostile JSON, stored as is or zstd-compressed, hashes recomputed."""
    data = seeds[rng.choice(v2)]
    text = json_text_payload(rng)
    kind = rng.choice(["metadata", "environment"])
    roll = rng.random()
    if roll < 0.55:
        return _replace_chunk(rng, data, kind, text, codec="none")
    frame = zstandard.ZstdCompressor(level=1).compress(text)
    if roll < 0.75:
        return _replace_chunk(rng, data, kind, frame, codec="zstd", size=len(text))
    if roll < 0.9:  # the decoded size field set to an extreme
        size = rng.choice(EXTREME_INTS[:17] + [len(text) - 1, len(text) + 1, 16 << 20, (16 << 20) + 1])
        return _replace_chunk(rng, data, kind, frame, codec="zstd", size=max(size, 0))
    return _replace_chunk(rng, data, kind, byte_mutation(rng, frame, seeds), codec="zstd", size=len(text))


def m_zstd_bomb(rng, seeds, v2, v1):
    """A small frame that inflates far past its size (within the default limit): memory must follow the output."""
    # Up to 8 MiB: what the reader builds from it (bytes, str, parsed value) stays within the 64 MiB slack.
    # Bigger bombs, up to Limits.max_json_bytes, are measured on their own (README, "crafted worst cases").
    size = rng.choice([1 * MIB, 4 * MIB, 8 * MIB])
    text = b'{"a":"' + b"x" * (size - 8) + b'"}'
    frame = zstandard.ZstdCompressor(level=3).compress(text)
    declared = rng.choice([len(text), len(text) - 1, 16 << 20])
    return _replace_chunk(rng, seeds[rng.choice(v2)], "metadata", frame, codec="zstd", size=declared)


def m_tensor(rng, seeds, v2, v1):
    """A safetensors blob with a hostile header; the index entry made to agree with it half of the time."""
    data = seeds[rng.choice([s for s in v2 if s in ("small", "large", "dtypes", "webp", "future")] or v2)]
    chunks, payloads = split_v2(data)
    tensors = [i for i, c in enumerate(chunks) if c["type"] == "tensor"]
    if not tensors:
        return data
    i = rng.choice(tensors)
    name = chunks[i]["name"]
    (length,) = struct.unpack_from("<Q", payloads[i])
    header = json.loads(payloads[i][8:8 + length])
    body = payloads[i][8 + length:]
    entry = header[name]
    kind = rng.randrange(8)
    if kind == 0:
        entry["dtype"] = rng.choice(DTYPE_CODES)
    elif kind == 1:
        entry["shape"] = rng.choice([[], [0], [len(body)], [len(body) // 2, 2], [2**62, 0], [0, 2**64, 2**64],
                                     [10**4000] * 300, [1] * 9, [1] * 65, [-1], [1.0], "4", None,
                                     [rng.choice(EXTREME_INTS) for _ in range(rng.randrange(1, 5))]])
    elif kind == 2:
        entry["data_offsets"] = rng.choice([[0, len(body) + 1], [1, len(body)], [0], [0, 2**64], [len(body), 0],
                                            None, [0, -1]])
    elif kind == 3:
        header[rng.choice(["other", "__metadata__", name + "x"])] = rng.choice([entry, {"k": "v"}, 5, None])
    elif kind == 4:
        header = {rng.choice(["other", name]): random_json(rng, 2)}
    elif kind == 5:
        body = rng.choice([body[:-1], body + b"\0", b"", body * 2])
    elif kind == 6:
        payloads[i] = safetensors_blob(header, body, header_length=rng.choice(
            [0, 1, 7, 2**63, 2**64 - 1, length + 1, len(payloads[i])]))
    else:
        payloads[i] = byte_mutation(rng, payloads[i], seeds)
    if kind < 6:
        payloads[i] = safetensors_blob(header, body)
    if rng.random() < 0.5 and isinstance(header.get(name), dict):
        # Index agrees with the new header, so the size checks and safetensors itself are reached.
        chunks[i]["shape"] = header[name].get("shape")
        code = header[name].get("dtype")
        chunks[i]["dtype"] = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                              "I64": "int64", "U8": "uint8", "BOOL": "bool"}.get(code if isinstance(code, str) else "")
    return assemble(chunks, payloads)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def m_image(rng, seeds, v2, v1):
    """Image bytes damaged behind a recomputed sha256, so Pillow and the format checks see them."""
    data = seeds[rng.choice([s for s in v2 if s in ("small", "large", "dtypes", "webp")] or v2)]
    chunks, payloads = split_v2(data)
    images = [i for i, c in enumerate(chunks) if c["type"] == "image"]
    if not images:
        return data
    i = images[0]
    kind = rng.randrange(5)
    if kind == 0:
        payloads[i] = byte_mutation(rng, payloads[i], seeds)
    elif kind == 1:  # a PNG declaring a huge canvas over a tiny stream (allocation driven by the header)
        side = rng.choice([1, 20000, 2**31 - 1, 65535])
        payloads[i] = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)) \
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    elif kind == 2:
        payloads[i] = rng.choice([b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBP", b"\xff\xd8\xff", b"GIF89a"]) \
            + rng.randbytes(rng.randrange(64))
    elif kind == 3:
        chunks[i]["format"] = rng.choice(["png", "webp", "jpeg", "gif", "", None, 1])
    else:
        chunks[i].update(width=rng.choice(EXTREME_VALUES), height=rng.choice(EXTREME_VALUES))
    return assemble(chunks, payloads)


def m_v1_manifest(rng, seeds, v2, v1):
    """A v1 manifest edited (sizes, types, shapes, hashes, structure) and recompressed; header sizes fixed."""
    if not v1:
        return m_random_after_magic(rng, seeds, v2, v1)
    fields, chunk_bytes, manifest = v1_parts(seeds[rng.choice(v1)])
    meta = manifest.get("raiiaf_metadata", {})
    records = meta.get("chunks", [])
    kind = rng.randrange(7)
    if kind <= 2 and records:
        record = rng.choice(records)
        key = rng.choice(["offset", "compressed_size", "uncompressed_size", "len_header", "len_data", "compressed",
                          "flags", "hash", "type", "extra"])
        record[key] = rng.choice(EXTREME_VALUES + ["LATN", "DATA", "ENVC", "F32", "F16"])
    elif kind == 3 and records:
        extra = rng.choice(records).setdefault("extra", {})
        if isinstance(extra, dict):
            extra[rng.choice(["shape", "dtype", "key"])] = rng.choice(
                [[10**4000] * 300, [2] * 70, [0], [2**40, 2**40], "float32", "float16", None, 5, "\ud800", ""])
    elif kind == 4:
        meta["chunks"] = records * rng.choice([0, 2]) if rng.random() < 0.5 else random_json(rng, 3)
    elif kind == 5:
        meta["model_info"] = random_json(rng, 4)
    else:
        return v1_file(fields, chunk_bytes, json_text_payload(rng))
    text = json.dumps(manifest, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return v1_file(fields, chunk_bytes, text)


MUTATORS = [
    ("bytes_v2", m_bytes_v2, 6), ("bytes_v1", m_bytes_v1, 3), ("random_after_magic", m_random_after_magic, 2),
    ("header_fields", m_header_fields, 3), ("index_fields", m_index_fields, 4), ("index_entries", m_index_entries, 2),
    ("index_text", m_index_text, 3), ("json_chunk", m_json_chunk, 4), ("zstd_bomb", m_zstd_bomb, 0.05),
    ("tensor", m_tensor, 4), ("image", m_image, 2), ("v1_manifest", m_v1_manifest, 3),
]


def warm_up_seeds(seeds: dict) -> list:
    """The seeds a worker runs before its first input: all of them (they are small and fast)."""
    return list(seeds.values())


def generate(seed: int, index: int, seeds: dict):
    """(mutator name, bytes, Limits fields) of input `index` of the run with this seed."""
    rng = random.Random(f"{seed}:{index}")
    v2 = [name for name in seeds if not name.startswith("v1_")]
    v1 = [name for name in seeds if name.startswith("v1_")]
    name, mutate, _ = rng.choices(MUTATORS, weights=[w for *_, w in MUTATORS])[0]
    data = mutate(rng, seeds, v2, v1)
    if rng.random() < 0.1:  # a second, byte-level mutation on top
        data = byte_mutation(rng, data, seeds)
    # One input in five is read under tight limits, so every limit check is reached from every entry point.
    limits = {}
    if rng.random() < 0.2:
        limits = {"max_index_bytes": rng.choice([0, 64, 512, 4096]), "max_json_bytes": rng.choice([0, 16, 4096]),
                  "max_json_depth": rng.choice([0, 1, 2, 5]), "max_chunks": rng.choice([0, 1, 3, 6]),
                  "max_v1_output": rng.choice([0, 100, 10_000, 100_000])}
        limits = dict(rng.sample(sorted(limits.items()), rng.randrange(1, len(limits) + 1)))
    return name, data, limits


# -- exercising the read entry points -------------------------------------------------------------------

class Exercise:
    """Runs one input through every read entry point; collects exceptions that are not RaiiafError."""

    def __init__(self, work: Path, reference: Path, limits: dict | None = None):
        import raiiaf_core as rc

        self.work, self.reference = work, reference
        # Fields this raiiaf_core's Limits does not have are dropped, so the fuzzer runs on older checkouts too.
        known = {f for f in rc.Limits.__dataclass_fields__}
        self.limits = rc.Limits(**{k: v for k, v in (limits or {}).items() if k in known})
        self.default_limits = self.limits == rc.Limits()
        self.foreign: list = []
        self.inconsistent: list = []

    def attempt(self, where: str, fn):
        """(True, result) or (False, exception); a foreign exception is recorded with its traceback."""
        from raiiaf_core import RaiiafError

        try:
            return True, fn()
        except RaiiafError as exc:
            return False, exc
        except BaseException as exc:  # noqa: BLE001 - the point is to catch what must never escape
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.foreign.append({"where": where, "type": type(exc).__name__, "message": str(exc)[:500],
                                 "traceback": traceback.format_exc()[-3000:]})
            return False, exc

    def artifact(self, source, label: str) -> str:
        """Every accessor of one opened artifact; returns a short signature of what happened."""
        import raiiaf_core as rc

        ok, art = self.attempt(f"open({label})", lambda: rc.open(source, limits=self.limits))
        if not ok:
            return type(art).__name__
        results = {}
        for attr in ("metadata", "environment", "image_format", "image_size", "has_image", "chunks", "tensor_names",
                     "version", "path"):
            results[attr] = self.attempt(f"{label}.{attr}", lambda: getattr(art, attr))[0]
        results["image_bytes"] = self.attempt(f"{label}.image_bytes()", art.image_bytes)[0]
        self.attempt(f"{label}.image()", art.image)
        self.attempt(f"{label}.repr", lambda: repr(art))
        names = art.tensor_names if results["tensor_names"] else []
        for name in names[:8]:
            self.attempt(f"{label}.tensor_info", lambda: art.tensor_info(name))
            results[f"bytes:{name}"] = self.attempt(f"{label}.tensor_bytes", lambda: art.tensor_bytes(name))[0]
            results[f"torch:{name}"] = self.attempt(f"{label}.load_tensor(torch)",
                                                    lambda: art.load_tensor(name, "torch"))[0]
            self.attempt(f"{label}.load_tensor(numpy)", lambda: art.load_tensor(name, "numpy"))
        self.attempt(f"{label}.load_tensors", lambda: art.load_tensors("torch"))
        verified, error = self.attempt(f"{label}.verify()", art.verify)
        if verified:
            # A file verify() accepts must give back every part verify checked.
            failed = [k for k, ok in results.items() if not ok and (k != "image_bytes" or art.has_image)]
            if failed:
                self.inconsistent.append(f"{label}: verify() passed but {failed} failed")
        return "verified" if verified else f"opened, verify: {type(error).__name__}"

    def cli(self, args) -> int | None:
        from raiiaf_core.cli import main

        args = [str(a) for a in args]
        # Strict UTF-8 sinks like a real terminal's: text that cannot be printed must surface here.
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            ok, code = self.attempt(f"cli {args[0]}", lambda: main(args))
            out.flush()
            err.flush()
        if ok and code not in (0, 1):
            self.inconsistent.append(f"cli {args[0]} returned {code}")
        return code if ok else None

    def run(self, data: bytes) -> dict:
        import raiiaf_core as rc

        path = self.work / "input.raiiaf"
        path.write_bytes(data)
        by_path = self.artifact(path, "path")
        by_object = self.artifact(io.BytesIO(data), "fileobj")
        if by_path != by_object:
            self.inconsistent.append(f"path gives {by_path}, file object gives {by_object}")
        verified = self.attempt("rc.verify", lambda: rc.verify(path, limits=self.limits))[0]
        self.cli(["inspect", path])
        self.cli(["inspect", "--json", path])
        code = self.cli(["verify", path])
        if code is not None and self.default_limits and (code == 0) != verified:  # the CLI has no limit options
            self.inconsistent.append(f"cli verify exit {code} but rc.verify {'passed' if verified else 'failed'}")
        self.cli(["verify", "--json", path])
        extracted = self.work / "extracted"
        self.cli(["extract", path, "-o", extracted])
        shutil.rmtree(extracted, ignore_errors=True)
        self.cli(["diff", path, self.reference])
        self.cli(["diff", path, path])
        return {"outcome": by_path}


# -- worker and parent ------------------------------------------------------------------------------------

def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used (Linux /proc), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mode(semantic: bool):
    """This module (byte-level mutations of the format) or bench.fuzz_records (hostile values in real records):
    each has make_seeds, generate and Exercise."""
    if not semantic:
        return sys.modules[__name__]
    from bench import fuzz_records
    return fuzz_records


_PROC_STATUS = Path("/proc/self/status")


def _rss_now_and_peak_kib() -> tuple[int, int] | None:
    """(resident, peak resident since the last reset) of this process, from /proc; None where not available."""
    try:
        text = _PROC_STATUS.read_text()
        return tuple(int(text.split(f"{key}:")[1].split()[0]) for key in ("VmRSS", "VmHWM"))
    except (OSError, IndexError, ValueError):
        return None


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each input's peak is its own, torch's included.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def worker(args) -> int:
    """Process inputs start, start+stride, ... and report each, as a JSON line, on stdout to the parent."""
    import tracemalloc
    import warnings

    mode = _mode(args.semantic)

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    # Anything the libraries write to fd 1 must not corrupt the protocol.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning is expected for the huge-canvas inputs
    # The CLI builds its argparse parser on every call: without these, locale and terminal lookups for its help
    # texts would cost more than reading the file.
    os.environ.update(LANGUAGE="C", COLUMNS="100", LINES="50")
    seeds = {p.stem: p.read_bytes() for p in sorted(Path(args.seeds).glob("*.raiiaf"))}
    work = Path(args.work)
    reference = Path(args.seeds) / ("small.raiiaf" if not args.semantic else f"{min(seeds)}.raiiaf")
    for data in mode.warm_up_seeds(seeds):  # warm up: imports and first-call caches are not charged to any input
        mode.Exercise(work, reference).run(data)
    baseline_rss = _rss_kib()
    tracemalloc.start()
    for index in range(args.start, args.inputs, args.stride):
        if args.deadline is not None and time.time() > args.deadline:
            break
        proto.write(json.dumps({"start": index}) + "\n")
        try:
            name, data, limits = mode.generate(args.seed, index, seeds)
        except Exception:  # a bug in the fuzzer itself: reported apart, and the run goes on
            proto.write(json.dumps({"generator_error": index, "traceback": traceback.format_exc()[-3000:]}) + "\n")
            continue
        exercise = mode.Exercise(work, reference, limits)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        _reset_peak_rss()
        rss_before = _rss_now_and_peak_kib()
        started = time.perf_counter()
        result = exercise.run(data)
        peak = tracemalloc.get_traced_memory()[1] - before
        rss_after = _rss_now_and_peak_kib()
        rss_growth = rss_after[1] - rss_before[0] if rss_before and rss_after else 0
        proto.write(json.dumps({"done": index, "mutator": name, "size": len(data), "peak": peak,
                                "rss_growth_kib": rss_growth,
                                "seconds": time.perf_counter() - started, "outcome": result["outcome"],
                                "foreign": exercise.foreign, "inconsistent": exercise.inconsistent}) + "\n")
    proto.write(json.dumps({"finished": True, "baseline_rss_kib": baseline_rss, "peak_rss_kib": _rss_kib()}) + "\n")
    return 0


class Run:
    """The parent: starts workers, watches every input's time, collects the figures."""

    def __init__(self, inputs: int, seed: int, workers: int, timeout: float, seeds_dir: Path, log=None,
                 semantic: bool = False, deadline: float | None = None):
        self.inputs, self.seed, self.timeout, self.seeds_dir = inputs, seed, timeout, seeds_dir
        self.semantic, self.deadline = semantic, deadline
        self.targets: dict = {}
        self.worst_rss = {"rss_growth_kib": 0}
        self.wall_timeout = max(60.0, 6 * timeout)
        self.log = log
        self.tried = 0
        self.foreign, self.inconsistent, self.hangs, self.crashes, self.over_memory = [], [], [], [], []
        self.generator_errors = []
        self.outcomes: dict = {}
        self.mutators: dict = {}
        self.worst_peak = {"peak": 0}
        self.worst_ratio = {"excess": -float("inf")}
        self.slowest = {"seconds": 0}
        self.rss = []
        self.stride = workers
        self.procs = {}  # stdout fd -> state

    def _spawn(self, start: int) -> None:
        # The worker's scratch folder is made and removed here, so a killed worker leaves nothing behind.
        # `extract` saves with fsync: on tmpfs that costs nothing, on a disk the run would wait on I/O.
        work = tempfile.mkdtemp(prefix="raiiaf-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        log = self.seeds_dir / f"worker-{start % self.stride}.stderr"
        stderr = open(log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "bench.fuzz", "--worker", "--inputs", str(self.inputs),
                                 "--seed", str(self.seed), "--start", str(start), "--stride", str(self.stride),
                                 "--seeds", str(self.seeds_dir), "--work", work,
                                 *(["--semantic"] if self.semantic else []),
                                 *(["--deadline", str(self.deadline)] if self.deadline else [])],
                                cwd=REPO, stdout=subprocess.PIPE,
                                stderr=stderr)
        stderr.close()
        # current: the input being run; next: where the lane goes on; finished: the worker said it was done.
        self.procs[proc.stdout.fileno()] = {"proc": proc, "buffer": b"", "current": None, "since": None,
                                            "cpu": None, "work": work, "log": log, "next": start, "finished": False}

    def _close(self, fd: int, state: dict) -> None:
        state["proc"].stdout.close()
        shutil.rmtree(state["work"], ignore_errors=True)
        del self.procs[fd]

    def _record(self, msg: dict) -> None:
        self.tried += 1
        self.outcomes[msg["outcome"]] = self.outcomes.get(msg["outcome"], 0) + 1
        self.mutators[msg["mutator"]] = self.mutators.get(msg["mutator"], 0) + 1
        if self.semantic:  # semantic inputs are named "diffusers:..." or "comfyui:..."
            target = msg["mutator"].split(":")[0]
            self.targets[target] = self.targets.get(target, 0) + 1
        where = {"index": msg["done"], "mutator": msg["mutator"], "size": msg["size"]}
        if msg["rss_growth_kib"] > self.worst_rss["rss_growth_kib"]:
            self.worst_rss = {**where, "rss_growth_kib": msg["rss_growth_kib"]}
        for f in msg["foreign"]:
            self.foreign.append({**where, **f})
        for text in msg["inconsistent"]:
            self.inconsistent.append({**where, "what": text})
        limit = 2 * msg["size"] + MEMORY_SLACK
        if msg["peak"] > limit:
            self.over_memory.append({**where, "peak": msg["peak"], "limit": limit})
        if msg["peak"] > self.worst_peak["peak"]:
            self.worst_peak = {**where, "peak": msg["peak"]}
        if msg["peak"] - 2 * msg["size"] > self.worst_ratio["excess"]:
            self.worst_ratio = {**where, "peak": msg["peak"], "excess": msg["peak"] - 2 * msg["size"]}
        if msg["seconds"] > self.slowest["seconds"]:
            self.slowest = {**where, "seconds": msg["seconds"]}
        if self.log and (msg["foreign"] or msg["peak"] > limit):
            print(f"input {msg['done']} ({msg['mutator']}): foreign={[f['type'] for f in msg['foreign']]} "
                  f"peak={msg['peak']}", file=self.log, flush=True)

    def _replace(self, fd: int, state: dict, problem: list, what: str) -> None:
        """Record the input a worker was on, and go on with the rest of its lane in a new worker."""
        index = state["current"]
        if state["proc"].poll() is None:
            state["proc"].kill()
        state["proc"].wait()
        stderr = state["log"].read_text(errors="replace")[-2000:] if state["log"].exists() else ""
        self._close(fd, state)
        problem.append({"index": index, "what": what, "worker_stderr": stderr})
        if self.log:
            print(f"input {index}: {what}", file=self.log, flush=True)
        resume = index + self.stride if index is not None else state["next"]
        if resume < self.inputs:
            self._spawn(resume)

    def execute(self) -> dict:
        started = time.time()
        for lane in range(self.stride):
            if lane < self.inputs:
                self._spawn(lane)
        next_report = time.time() + 60
        while self.procs:
            ready, _, _ = select.select(list(self.procs), [], [], 1.0)
            for fd in ready:
                state = self.procs[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker exited
                    code = state["proc"].wait()
                    if state["current"] is not None or code != 0 or not state["finished"]:
                        self._replace(fd, state, self.crashes, f"worker died (exit {code})")
                    else:
                        self._close(fd, state)
                    continue
                state["buffer"] += chunk
                *lines, state["buffer"] = state["buffer"].split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "start" in msg:
                        state["current"], state["since"] = msg["start"], time.time()
                        state["cpu"] = _cpu_seconds(state["proc"].pid)
                    elif "done" in msg:
                        state["current"], state["next"] = None, msg["done"] + self.stride
                        self._record(msg)
                    elif "generator_error" in msg:
                        state["current"], state["next"] = None, msg["generator_error"] + self.stride
                        self.generator_errors.append({"index": msg["generator_error"], "traceback": msg["traceback"]})
                    elif "finished" in msg:
                        state["finished"] = True
                        self.rss.append(msg)
            now = time.time()
            for fd, state in list(self.procs.items()):
                if state["current"] is None:
                    continue
                # CPU time, not wall time, decides: on a shared machine a slow input is not a hang. The wall
                # limit still catches an input that blocks without computing (a FIFO, a lock).
                cpu = _cpu_seconds(state["proc"].pid)
                used = cpu - state["cpu"] if cpu is not None and state["cpu"] is not None else now - state["since"]
                if used > self.timeout or now - state["since"] > self.wall_timeout:
                    self._replace(fd, state, self.hangs, f"still running after {used:.1f} s of CPU, "
                                                         f"{now - state['since']:.0f} s wall")
            if self.log and now > next_report:
                next_report = now + 60
                print(f"{self.tried} inputs, {len(self.foreign)} foreign, {len(self.hangs)} hangs, "
                      f"{len(self.crashes)} crashes, {now - started:.0f} s", file=self.log, flush=True)
        return self.summary(time.time() - started)

    def summary(self, seconds: float) -> dict:
        rss_growth = max((r["peak_rss_kib"] - r["baseline_rss_kib"] for r in self.rss), default=None)
        return {
            "inputs_requested": self.inputs, "inputs_tried": self.tried, "seed": self.seed, "workers": self.stride,
            "seconds": round(seconds, 1), "foreign_exceptions": len(self.foreign), "hangs": len(self.hangs),
            "crashes": len(self.crashes), "inconsistencies": len(self.inconsistent),
            "fuzzer_generator_errors": len(self.generator_errors),
            "over_memory_target": len(self.over_memory), "timeout_cpu_s": self.timeout,
            "timeout_wall_s": self.wall_timeout,
            "worst_traced_peak": self.worst_peak, "worst_traced_excess_over_2x_input": self.worst_ratio,
            "worker_rss_growth_after_warmup_kib": rss_growth, "worst_input_rss_growth": self.worst_rss,
            "slowest_input": self.slowest, **({"inputs_per_target": self.targets} if self.semantic else {}),
            "outcomes": dict(sorted(self.outcomes.items(), key=lambda kv: -kv[1])), "mutators": self.mutators,
            "details": {"foreign": self.foreign[:50], "hangs": self.hangs[:50], "crashes": self.crashes[:50],
                        "inconsistent": self.inconsistent[:50], "over_memory": self.over_memory[:50],
                        "fuzzer_generator_errors": self.generator_errors[:50]},
        }


def run(inputs: int, seed: int = 1, workers: int = 2, timeout: float = 10.0, log=None, semantic: bool = False,
        minutes: float | None = None) -> dict:
    """Fuzz `inputs` inputs in `workers` subprocesses and return the summary (see summary()); with `minutes`,
    no input is started after that much time."""
    with tempfile.TemporaryDirectory(prefix="raiiaf-fuzz-seeds-") as folder:
        folder = Path(folder)
        # Written once here and read by every worker, so all workers mutate exactly the same bytes.
        for name, data in _mode(semantic).make_seeds(folder / "written").items():
            (folder / f"{name}.raiiaf").write_bytes(data)
        deadline = time.time() + 60 * minutes if minutes else None
        return Run(inputs, seed, workers, timeout, folder, log, semantic, deadline).execute()


def replay(index: int, seed: int, save: Path | None, semantic: bool = False) -> int:
    mode = _mode(semantic)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        seeds = mode.make_seeds(folder / "seeds")
        for seed_name, seed_data in seeds.items():
            (folder / f"{seed_name}.raiiaf").write_bytes(seed_data)
        name, data, limits = mode.generate(seed, index, seeds)
        if save:
            save.write_bytes(data)
        exercise = mode.Exercise(folder, folder / f"{'small' if not semantic else min(seeds)}.raiiaf", limits)
        result = exercise.run(data)
    print(f"input {index} (seed {seed}): mutator {name}, {len(data)} bytes, limits {limits or 'default'}, "
          f"outcome {result['outcome']}")
    for f in exercise.foreign:
        print(f"FOREIGN in {f['where']}: {f['type']}: {f['message']}\n{f['traceback']}")
    for text in exercise.inconsistent:
        print(f"INCONSISTENT: {text}")
    return 1 if exercise.foreign or exercise.inconsistent else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--semantic", action="store_true",
                        help="mutate the values in real diffusers and ComfyUI records (bench/fuzz_records.py) and "
                             "run them through replay and the node logic too")
    parser.add_argument("--timeout", type=float, default=None,
                        help="CPU seconds one input may take before it is a hang (wall: 6x, at least 60 s); "
                             "default 10, with --semantic 60 (an input there goes through some 25 entry points)")
    parser.add_argument("--minutes", type=float, help="start no input after this many minutes (from the start)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--replay", type=int, help="run input N of --seed in this process and print what happened")
    parser.add_argument("--save", type=Path, help="with --replay: write the input's bytes here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.replay is not None:
        return replay(args.replay, args.seed, args.save, args.semantic)
    timeout = args.timeout if args.timeout is not None else 60.0 if args.semantic else 10.0
    summary = run(args.inputs, args.seed, args.workers, timeout, log=sys.stderr, semantic=args.semantic,
                  minutes=args.minutes)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    bad = summary["foreign_exceptions"] or summary["hangs"] or summary["crashes"] or summary["over_memory_target"] \
        or summary["fuzzer_generator_errors"] or summary["inconsistencies"]
    return 1 if bad or (summary["inputs_tried"] < args.inputs and not args.minutes) else 0


if __name__ == "__main__":
    sys.exit(main())
