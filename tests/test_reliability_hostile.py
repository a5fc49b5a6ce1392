"""Hostile files crafted one weakness at a time: each ends in a RaiiafError, at once and in bounded memory.

The fuzz test (test_reliability_fuzz.py) throws random damage at the reader; these pin down the specific
attacks it found or that the issue names, so a regression fails here with a readable message.
"""

import importlib.util
import io
import json
import os
import sys
import threading
import time
import tracemalloc
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zstandard

import raiiaf_core as rc
from raiiaf_core.cli import main
from conftest import FIXED_ENV

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # bench/ is in the checkout, not in the installed package
from bench.fuzz import V1_HEADER, assemble, safetensors_blob, split_v2, v1_file, v1_parts  # noqa: E402

V1_FIXTURE = ROOT / "tests" / "data" / "v1" / "f32_raw.raiiaf"


def with_chunk(data: bytes, kind: str, payload: bytes, name: str = "", **entry) -> bytes:
    """The file with one chunk's bytes and index fields replaced, every checksum made valid again."""
    chunks, payloads = split_v2(data)
    [i] = [i for i, c in enumerate(chunks) if c["type"] == kind and c["name"] == name]
    payloads[i] = payload
    chunks[i].update(entry)
    return assemble(chunks, payloads)


def with_v1_manifest(edit) -> bytes:
    header, chunk_bytes, manifest = v1_parts(V1_FIXTURE.read_bytes())
    edit(manifest)
    return v1_file(header, chunk_bytes, json.dumps(manifest).encode())


def latent_record(manifest) -> dict:
    return next(r for r in manifest["raiiaf_metadata"]["chunks"] if r["type"] == "LATN")


# -- sizes the file declares -------------------------------------------------------------------------

def test_zstd_chunk_declaring_a_huge_size_allocates_only_what_it_decodes(small_file):
    frame = zstandard.ZstdCompressor().compress(b'{"seed":1}')
    data = with_chunk(small_file.read_bytes(), "metadata", frame, codec="zstd", size=12 << 20)
    art = rc.open(io.BytesIO(data))
    tracemalloc.start()
    try:
        with pytest.raises(rc.CorruptFileError, match="decompressed to 10 bytes, index says 12582912"):
            art.metadata
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A 2 KiB file once made the reader allocate the declared size (within Limits.max_json_bytes) up front.
    assert peak < 8 << 20


def test_v1_zstd_frame_declaring_a_gibibyte_reserves_nothing():
    # 32 KiB of raw block under a header claiming 1 GiB: within what 32 KiB of zstd could hold, so only
    # decoding shows the lie. Decoding used to allocate the GiB first (MemoryError where address space is capped).
    header, chunk_bytes, _ = v1_parts(V1_FIXTURE.read_bytes())
    block = 32768
    frame = b"\x28\xb5\x2f\xfd\xe0" + (1 << 30).to_bytes(8, "little") + ((block << 3) | 1).to_bytes(3, "little") \
        + bytes(block)
    header[4] = V1_HEADER.size + len(chunk_bytes)  # the manifest, now this frame, ends the file
    header[5], header[7] = len(frame), header[4] + len(frame)
    data = V1_HEADER.pack(*header) + chunk_bytes + frame
    tracemalloc.start()
    try:
        # With the default limits the manifest's size alone refuses it; raised, only decoding can.
        with pytest.raises(rc.CorruptFileError, match="manifest: damaged zstd data"):
            rc.open(io.BytesIO(data), limits=rc.Limits(max_json_bytes=2 << 30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_a_tensor_named_like_safetensors_metadata_is_refused_when_saving(tmp_path):
    with pytest.raises(rc.TensorError, match="'__metadata__' is reserved"):
        rc.write(tmp_path / "x.raiiaf", tensors={"__metadata__": np.zeros(2, np.float32)}, environment=FIXED_ENV)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_header_listing_thousands_of_huge_dimensions_is_refused_at_once(small_file):
    header = {"noise": {"dtype": "F32", "shape": [10**4000] * 1000, "data_offsets": [0, 256]}}
    data = with_chunk(small_file.read_bytes(), "tensor", safetensors_blob(header, bytes(256)), name="noise")
    art = rc.open(io.BytesIO(data))
    started = time.perf_counter()
    with pytest.raises(rc.CorruptFileError, match="rank 1000, more than 8"):
        art.load_tensor("noise")
    # Multiplying the dimensions out took minutes; the rank check comes first now.
    assert time.perf_counter() - started < 5


def test_v1_latent_listing_thousands_of_huge_dimensions_is_refused_at_once():
    data = with_v1_manifest(lambda m: latent_record(m)["extra"].update(shape=[10**4000] * 300))
    started = time.perf_counter()
    # Before the rank check this took seconds and ended in a ValueError (the product had too many digits to print).
    with pytest.raises(rc.CorruptFileError, match="300 dimensions, more than 8"):
        rc.open(io.BytesIO(data))
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("flags", [{"a": 1}, ["F32"], None, 4])
def test_v1_latent_dtype_flags_of_any_json_type_are_refused(flags):
    data = with_v1_manifest(lambda m: latent_record(m).update(flags=flags))
    with pytest.raises(rc.CorruptFileError, match="unknown dtype flags"):
        rc.open(io.BytesIO(data))


@pytest.mark.parametrize("dtype", [{"a": 1}, ["F32"], None, 4])
def test_safetensors_dtype_of_any_json_type_is_refused(small_file, dtype):
    header = {"noise": {"dtype": dtype, "shape": [1, 4, 4, 4], "data_offsets": [0, 256]}}
    data = with_chunk(small_file.read_bytes(), "tensor", safetensors_blob(header, bytes(256)), name="noise")
    with pytest.raises(rc.CorruptFileError, match="malformed safetensors tensor entry"):
        rc.open(io.BytesIO(data)).load_tensor("noise")


# -- what verify() passes must load ---------------------------------------------------------------------

@pytest.mark.parametrize("header, shape, message", [
    # safetensors' own parser wants __metadata__ to map strings to strings.
    ({"noise": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "__metadata__": {"k": 1}}, [4],
     "safetensors cannot read the tensor"),
    # No element, so no byte, but dimensions whose product overflows safetensors', numpy's and torch's sizes.
    ({"noise": {"dtype": "U8", "shape": [0, 2**40, 2**40], "data_offsets": [0, 0]}}, [0, 2**40, 2**40],
     "too large to load"),
])
def test_verify_refuses_tensors_that_could_not_be_loaded(small_file, header, shape, message):
    data = bytes(4) if shape == [4] else b""
    file = with_chunk(small_file.read_bytes(), "tensor", safetensors_blob(header, data), name="noise",
                      dtype="uint8", shape=shape)
    with pytest.raises(rc.CorruptFileError, match=message):
        rc.verify(io.BytesIO(file))
    with pytest.raises(rc.CorruptFileError):
        rc.open(io.BytesIO(file)).load_tensor("noise", "numpy")


def test_verify_checks_named_chunks_it_does_not_read(small_file):
    chunks, payloads = split_v2(small_file.read_bytes())
    chunks += [{"type": "image", "name": "thumbnail", "codec": "none", "format": "png"},
               {"type": "metadata", "name": "second", "codec": "none"}]
    payloads += [b"\x89PNG\r\n\x1a\n thumbnail", b'{"a": 1}']
    good = assemble(chunks, payloads)
    art = rc.verify(io.BytesIO(good))  # a named image is not "the" image: verify must not say "holds no image"
    assert art.metadata["seed"] == 7
    damaged = bytearray(good)
    damaged[-3] ^= 1  # inside the named metadata chunk, which no accessor reads
    with pytest.raises(rc.CorruptFileError, match="metadata chunk 'second' is damaged"):
        rc.verify(io.BytesIO(bytes(damaged)))


# -- text that is not text -------------------------------------------------------------------------------

def test_writer_refuses_lone_surrogates_naming_the_field(tmp_path):
    # os.fsdecode of a file name that is not UTF-8 gives such strings; no UTF-8 file can hold them.
    with pytest.raises(rc.MetadataError, match="'extra.file' is not valid Unicode text"):
        rc.write(tmp_path / "x.raiiaf", metadata={"extra": {"file": "photo-\udcff.png"}}, environment=FIXED_ENV)
    with pytest.raises(rc.MetadataError, match="'extra' has a key that is not valid Unicode text"):
        rc.write(tmp_path / "x.raiiaf", metadata={"extra": {"\ud800": 1}}, environment=FIXED_ENV)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", [b'{"prompt":"a\\ud800b"}', b'{"\\uDC80":1}'])
def test_reader_refuses_lone_surrogate_escapes(small_file, text):
    data = with_chunk(small_file.read_bytes(), "metadata", text, codec="none")
    with pytest.raises(rc.CorruptFileError, match="metadata chunk holds a string that is not valid Unicode"):
        rc.open(io.BytesIO(data)).metadata


def test_reader_keeps_escaped_surrogate_pairs(small_file):
    data = with_chunk(small_file.read_bytes(), "metadata", b'{"prompt":"\\ud83d\\ude00 \\\\ud800"}', codec="none")
    assert rc.open(io.BytesIO(data)).metadata["prompt"] == "\U0001f600 \\ud800"


def test_v1_reader_refuses_lone_surrogate_escapes():
    data = with_v1_manifest(lambda m: m["raiiaf_metadata"]["model_info"].update(prompt="a\ud800"))
    with pytest.raises(rc.CorruptFileError, match="manifest: not valid UTF-8 JSON"):
        rc.open(io.BytesIO(data))


# -- the command line on files that break the schema ---------------------------------------------------

def test_cli_shows_files_whose_metadata_breaks_the_schema(small_file, tmp_path, capsys):
    # The reader does not enforce the schema (files come from other writers); the summary must not crash.
    data = small_file.read_bytes()
    data = with_chunk(data, "metadata", b'{"model":"x","batch":3,"noise":[1],"tags":[1,null],"prompt":"p"}',
                      codec="none")
    data = with_chunk(data, "environment", b'{"gpu":5,"torch":"2","python":1,"os":[]}', codec="none")
    path = tmp_path / "odd.raiiaf"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prompt:      p" in out and "tags:        1, None" in out and "environment: no GPU" in out
    assert main(["diff", str(path), str(small_file)]) == 1
    assert main(["extract", str(path), "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()


def test_cli_extract_into_a_file_is_a_clear_error(small_file, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    assert main(["extract", str(small_file), "-o", str(blocker)]) == 1
    assert "cannot create the output folder" in capsys.readouterr().err


# -- things that are not files --------------------------------------------------------------------------

def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.raiiaf"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(lambda: rc.open(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        with open(fifo, "wb"):  # unblocks the reader, so the failure below is all that is left of it
            pass
        pytest.fail("rc.open blocked on a FIFO")
    assert isinstance(outcome[0], rc.ReadError) and "not a regular file" in str(outcome[0])


def test_a_folder_is_a_read_error(tmp_path):
    with pytest.raises(rc.ReadError, match="not a regular file"):
        rc.open(tmp_path)


def _error_of(fn):
    try:
        fn()
    except Exception as exc:  # returned for the assertion in the calling thread
        return exc
    return None


# -- limits ---------------------------------------------------------------------------------------------

def _limit_cases(tmp_path, small_file):
    """{Limits field: (file, limits that it exceeds, how to read it)} for every configurable limit."""
    big_json = rc.write(tmp_path / "big.raiiaf", metadata={"extra": {"text": "word " * 2000}}, environment=FIXED_ENV)
    deep = current = {}
    for _ in range(50):
        current["x"] = current = {}
    nested = rc.write(tmp_path / "deep.raiiaf", metadata={"extra": deep}, environment=FIXED_ENV)
    cases = {
        "max_index_bytes": (small_file, rc.Limits(max_index_bytes=100), lambda art: None),
        "max_json_bytes": (big_json, rc.Limits(max_json_bytes=1000), lambda art: art.metadata),
        "max_json_depth": (nested, rc.Limits(max_json_depth=10), lambda art: art.metadata),
        "max_chunks": (small_file, rc.Limits(max_chunks=2), lambda art: None),
        "max_image_pixels": (small_file, rc.Limits(max_image_pixels=255), lambda art: art.image()),
    }
    if V1_FIXTURE.exists():
        cases["max_v1_output"] = (V1_FIXTURE, rc.Limits(max_v1_output=100), lambda art: None)
    if importlib.util.find_spec("torch") is not None:
        # a noise recipe is made by drawing it, which needs torch; 4x8x8 float32 noise draws 1,024 bytes
        import torch

        noise = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(5))
        recipe = rc.write(tmp_path / "recipe.raiiaf", tensors={"noise": rc.noise_recipe(noise, [{"seed": 5}])},
                          environment=FIXED_ENV)
        cases["max_recipe_bytes"] = (recipe, rc.Limits(max_recipe_bytes=1000), lambda art: art.load_tensor("noise"))
    if importlib.util.find_spec("diffusers") is not None:
        # raiiaf_diffusers reads its replay record under Limits.max_replay_steps (its fixture ran 3 steps)
        from raiiaf_diffusers import record

        capture = Path(__file__).parent / "data" / "diffusers" / "record-v1-sd-euler_a.raiiaf"
        steps = rc.Limits(max_replay_steps=2)
        cases["max_replay_steps"] = (capture, steps, lambda art: record.read(art, str(capture), steps))
    return cases


def test_every_limit_is_named_in_its_error_and_can_be_raised(tmp_path, small_file):
    cases = _limit_cases(tmp_path, small_file)
    # A limit added without a case here would go untested: fail until one is written.
    needs_diffusers = set() if importlib.util.find_spec("diffusers") is not None else {"max_replay_steps"}
    needs_torch = set() if importlib.util.find_spec("torch") is not None else {"max_recipe_bytes"}
    assert {f.name for f in fields(rc.Limits)} - needs_diffusers - needs_torch == set(cases)
    for name, (path, limits, read) in cases.items():
        with pytest.raises(rc.LimitExceededError) as info:
            read(rc.open(path, limits=limits))
        assert f"Limits.{name}" in str(info.value), str(info.value)
        assert str(path) in str(info.value)
        rc.verify(path)  # within the default limits the same file reads


def test_a_huge_index_is_refused_before_it_is_read(tmp_path):
    # 20 MiB of index (over the 16 MiB default), in a file that really is that large.
    chunks, payloads = split_v2(rc.write(tmp_path / "a.raiiaf", metadata={}, environment=FIXED_ENV).read_bytes())
    chunks[0]["padding"] = "x" * (20 << 20)
    path = tmp_path / "huge-index.raiiaf"
    path.write_bytes(assemble(chunks, payloads))
    tracemalloc.start()
    try:
        with pytest.raises(rc.LimitExceededError, match="Limits.max_index_bytes=16777216"):
            rc.open(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # only the first 16 KiB were read
    assert rc.open(path, limits=rc.Limits(max_index_bytes=32 << 20)).metadata == {"schema_version": 1}


def test_image_of_a_declared_huge_canvas_ends_in_a_raiiaf_error(small_file):
    import struct
    import zlib

    def png_chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 6, 0, 0, 0)) \
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
    art = rc.open(io.BytesIO(with_chunk(small_file.read_bytes(), "image", png, width=30000, height=30000)))
    assert art.image_bytes() == png  # the bytes are what the index says
    with pytest.raises(rc.LimitExceededError, match="30000x30000 .* over Limits.max_image_pixels"):
        art.image()  # refused from the header, before Pillow allocates a 3.6 GB canvas


def test_random_bytes_after_a_valid_magic_never_escape(tmp_path):
    rng = np.random.default_rng(7)
    for major in (1, 2, 3):
        for size in (0, 1, 25, 33, 72, 100, 5000):
            data = b"raiiaf" + bytes([major]) + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            with pytest.raises(rc.RaiiafError):
                rc.verify(io.BytesIO(data))
