"""The v1 reader against files written by the PyPI library raiiaf 1.1.0 (see tests/data/v1/README.md)."""

import hashlib
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from raiiaf_core.errors import CorruptFileError, LimitExceededError, MissingDependencyError
from raiiaf_core.v1 import is_v1, parse_v1

DATA = Path(__file__).parent / "data" / "v1"
HEADER = struct.Struct("<6sBBBIIIQI")
FRAME = struct.Struct("<4s4sI")
HAVE_ZFPY = importlib.util.find_spec("zfpy") is not None

# The latents make_fixtures.py stored, recomputed with the same plain IEEE arithmetic.
SHAPE = (1, 4, 8, 8)
NOISE = ((np.arange(256) * 37 % 101 - 50) / 7).astype(np.float32).reshape(SHAPE)
RAMP = ((np.arange(256) - 128) / 16).astype(np.float32).reshape(SHAPE)
PNG = (DATA / "image.png").read_bytes()
JPEG = (DATA / "image.jpg").read_bytes()

EXPECTED = {
    "f32_raw": {"tensors": {"initial_noise": NOISE, "ramp": RAMP}, "image": PNG, "format": "png", "seed": 1234,
                "sampler": "ddim", "prompt": "a red fox in the snow"},
    "f16_raw": {"tensors": {"initial_noise": NOISE.astype(np.float16)}, "image": JPEG, "format": "jpeg", "seed": 0,
                "sampler": "euler_a", "prompt": "a lighthouse at dusk"},
    "f32_zfp": {"tensors": {"initial_noise": NOISE, "ramp": RAMP}, "image": PNG, "format": "png", "seed": 1234,
                "sampler": "ddim", "prompt": "a red fox in the snow"},
}
RAW = ["f32_raw", "f16_raw"]
DECODABLE = RAW + (["f32_zfp"] if HAVE_ZFPY else [])


def load(name):
    return (DATA / f"{name}.raiiaf").read_bytes()


def manifest(data):
    """The v1 manifest of a file, read straight from the bytes (independent of the parser)."""
    offset = HEADER.unpack_from(data)[4]
    body = zstandard.ZstdDecompressor().decompress(data[offset:])
    return json.loads(body[FRAME.size:])


def with_manifest_bytes(data, raw_json, frame=None):
    """The file with its manifest replaced, header sizes fixed so only the manifest differs."""
    fields = list(HEADER.unpack_from(data))
    offset = fields[4]
    if frame is None:
        frame = zstandard.ZstdCompressor().compress(FRAME.pack(b"META", b"0000", len(raw_json)) + raw_json)
    fields[5], fields[7] = len(frame), offset + len(frame)
    return HEADER.pack(*fields) + data[HEADER.size:offset] + frame


def with_manifest(data, edit):
    doc = manifest(data)
    edit(doc)
    return with_manifest_bytes(data, json.dumps(doc).encode())


def chunk_records(data):
    return manifest(data)["raiiaf_metadata"]["chunks"]


def flipped(data, index, mask=0xFF):
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def assert_same_contents(got, want, names=True):
    """Same image, environment and tensor bytes; names=False when the (unhashed) manifest may differ."""
    assert got.image == want.image and got.environment == want.environment
    if names:
        assert got.tensors.keys() == want.tensors.keys()
    assert len(got.tensors) == len(want.tensors)
    for array, expected in zip(got.tensors.values(), want.tensors.values()):
        assert array.dtype == expected.dtype and array.shape == expected.shape
        assert array.tobytes() == expected.tobytes()


@pytest.fixture
def no_zfpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "zfpy", None)  # makes "import zfpy" raise ImportError


# --- reading the fixtures -------------------------------------------------------------------


@pytest.mark.parametrize("name", DECODABLE)
def test_fixture_values(name):
    want = EXPECTED[name]
    data = load(name)
    got = parse_v1(data, f"{name}.raiiaf")
    assert got.version == (1, 0)
    assert got.image == want["image"] and got.image_format == want["format"]
    assert got.tensors.keys() == want["tensors"].keys()
    for key, array in want["tensors"].items():
        assert got.tensors[key].dtype == array.dtype
        assert got.tensors[key].shape == SHAPE
        assert got.tensors[key].tobytes() == array.tobytes()
        assert got.tensors[key].flags.writeable
    v1 = manifest(data)
    info = v1["raiiaf_metadata"]["model_info"]
    assert got.metadata == {
        "created": info["date"],
        "prompt": want["prompt"],
        "seed": want["seed"],
        "steps": 20,
        "sampler": want["sampler"],
        "scheduler": "pndm",
        "guidance_scale": 7.5,
        "model": {"name": "stable-diffusion-v1-5", "revision": "1.5"},
        "sampler_settings": {"eta": 0.0},
        "tags": ["fixture", "v1"],
        "host": {"raiiaf_v1": v1},
    }
    assert got.environment["env_version"] == 1
    assert [c["component_id"] for c in got.environment["components"]] == ["torch", "numpy", "python", "cuda", "os"]


def test_committed_images_match_readme():
    readme = (DATA / "README.md").read_text()
    assert hashlib.sha256(PNG).hexdigest() in readme
    assert hashlib.sha256(JPEG).hexdigest() in readme


def test_zfp_fixture_decodes_or_names_zfpy():
    if HAVE_ZFPY:
        got = parse_v1(load("f32_zfp"), "f32_zfp.raiiaf")
        assert got.tensors["initial_noise"].tobytes() == NOISE.tobytes()
    else:
        with pytest.raises(MissingDependencyError, match="zfpy"):
            parse_v1(load("f32_zfp"), "f32_zfp.raiiaf")


def test_zfp_without_zfpy_names_it(no_zfpy):
    with pytest.raises(MissingDependencyError, match=r"f32_zfp\.raiiaf: latent 'initial_noise'.*pip install zfpy"):
        parse_v1(load("f32_zfp"), "f32_zfp.raiiaf")


def test_reader_imports_neither_torch_nor_zfpy():
    code = (
        "import sys; from raiiaf_core.v1 import parse_v1; "
        f"parse_v1(open({str(DATA / 'f32_raw.raiiaf')!r}, 'rb').read(), 'x'); "
        "assert 'torch' not in sys.modules and 'zfpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_is_v1():
    for name in EXPECTED:
        assert is_v1(load(name)[:7])
    assert not is_v1(b"raiiaf\x02")
    assert not is_v1(b"raiiaf")
    assert not is_v1(b"\x89PNG\r\n\x1a\n")


# --- damage -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DECODABLE)
def test_flipped_byte_in_each_chunk(name):
    data = load(name)
    records = chunk_records(data)
    for record in records:
        middle = record["offset"] + record["compressed_size"] // 2
        with pytest.raises(CorruptFileError, match=rf"{name}\.raiiaf: (chunk|latent)"):
            parse_v1(flipped(data, middle), f"{name}.raiiaf")
    with pytest.raises(CorruptFileError, match="header"):
        parse_v1(flipped(data, 17), f"{name}.raiiaf")  # chunk count
    with pytest.raises(CorruptFileError, match="manifest"):
        parse_v1(flipped(data, HEADER.unpack_from(data)[4] + 1), f"{name}.raiiaf")  # zstd magic


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_flipped_byte_is_caught_or_harmless(name):
    # v1 has no whole-file checksum: some bits are never read (zstd padding, zfp blocks past the
    # array edge) and the manifest JSON (prompt, latent names...) is unprotected. So a flip must
    # either raise, or leave every hashed payload (tensors, image, environment) bit-identical.
    data = load(name)
    manifest_start = HEADER.unpack_from(data)[4]
    want = parse_v1(data, "x") if name in DECODABLE else None
    for index in range(len(data)):
        for mask in (0xFF, 0x01, 0x80):
            try:
                got = parse_v1(flipped(data, index, mask), "x")
            except CorruptFileError:
                continue
            except MissingDependencyError:
                assert not HAVE_ZFPY
                continue
            assert want is not None, f"byte {index}: parsed without zfpy"
            in_manifest = index >= manifest_start
            assert_same_contents(got, want, names=not in_manifest)
            if not in_manifest:
                assert got.metadata == want.metadata


@pytest.mark.parametrize("name", list(EXPECTED))
def test_truncation_at_every_offset(name):
    data = load(name)
    for end in range(len(data)):
        with pytest.raises(CorruptFileError):
            parse_v1(data[:end], "x")
    with pytest.raises(CorruptFileError, match="header"):
        parse_v1(data + b"\0", "x")


def test_truncated_file_with_consistent_header():
    # Cut the manifest's last bytes and fix the header sizes to match: zstd must notice.
    data = load("f32_raw")
    fields = list(HEADER.unpack_from(data))
    for cut in (1, 4, 50):
        fields[5], fields[7] = fields[5] - cut, len(data) - cut
        with pytest.raises(CorruptFileError, match="manifest"):
            parse_v1(HEADER.pack(*fields) + data[HEADER.size:-cut], "x")


def test_unchanged_manifest_roundtrip_still_parses():
    data = load("f32_raw")
    assert_same_contents(parse_v1(with_manifest(data, lambda doc: None), "x"), parse_v1(data, "x"))


def _set(path, value):
    def edit(doc):
        target = doc["raiiaf_metadata"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(["chunks", 0, "hash"], "0" * 64), "sha256 mismatch"),
        (_set(["chunks", 2, "hash"], "0" * 64), "sha256 mismatch"),
        (_set(["chunks", 3, "hash"], None), "no sha256"),
        (_set(["chunks", 0, "offset"], 34), "starts at byte 34"),
        (_set(["chunks", 1, "compressed_size"], 10**12), "past the manifest"),
        (_set(["chunks", 3, "compressed_size"], 400), "chunk 3"),
        (_set(["chunks", 0, "compressed_size"], -1), "not a byte count"),
        (_set(["chunks", 0, "offset"], "33"), "not a byte count"),
        (_set(["chunks", 2, "uncompressed_size"], 2**40), "zstd frame holds"),
        (_set(["chunks", 0, "uncompressed_size"], 2**40), "uncompressed_size"),
        (_set(["chunks", 0, "extra", "shape"], [1, 4, 8, 9]), "uncompressed_size"),
        (_set(["chunks", 0, "extra", "shape"], [2**40, 2**40]), "uncompressed_size"),
        (_set(["chunks", 0, "extra", "shape"], ["1", 4, 8, 8]), "extra.shape"),
        (_set(["chunks", 0, "extra", "shape"], None), "extra.shape"),
        (_set(["chunks", 0, "extra", "dtype"], "float16"), "extra.dtype"),
        (_set(["chunks", 0, "extra", "key"], 7), "extra.key"),
        (_set(["chunks", 0, "extra"], []), "extra.key"),
        (_set(["chunks", 1, "extra", "key"], "initial_noise"), "second latent"),
        (_set(["chunks", 0, "flags"], "F64"), "dtype flags"),
        (_set(["chunks", 0, "type"], "XXXX"), "unknown"),
        (_set(["chunks", 3, "type"], "DATA"), "repeated"),
        (_set(["chunks", 0, "compressed"], "no"), "'compressed'"),
        (_set(["chunks", 0, "compressed"], True), "zstd"),
        (_set(["chunks", 2, "compressed"], False), "frame"),
        (_set(["chunks", 1], "LATN"), "not an object"),
        (_set(["chunks"], {}), "chunks list"),
        (lambda doc: doc["raiiaf_metadata"]["chunks"].pop(), "counts 4 chunks"),
        (lambda doc: doc.clear(), "chunks list"),
    ],
)
def test_damaged_manifest(edit, message):
    with pytest.raises(CorruptFileError, match=message):
        parse_v1(with_manifest(load("f32_raw"), edit), "x")


def test_manifest_that_is_not_json():
    data = load("f32_raw")
    for raw in (b"\xff\xfe not utf-8", b"{not json", b"[" * 100_000, b"[]"):
        with pytest.raises(CorruptFileError, match="manifest"):
            parse_v1(with_manifest_bytes(data, raw), "x")


def test_manifest_nan_is_read_as_null():
    data = load("f32_raw")
    raw = json.dumps(manifest(data)).replace('"cfg_scale": 7.5', '"cfg_scale": NaN').encode()
    got = parse_v1(with_manifest_bytes(data, raw), "x")
    assert "guidance_scale" not in got.metadata
    settings = got.metadata["host"]["raiiaf_v1"]["raiiaf_metadata"]["model_info"]["generation_settings"]
    assert settings["cfg_scale"] is None


def test_output_limit():
    data = load("f32_raw")
    with pytest.raises(LimitExceededError, match="max_v1_output"):
        parse_v1(data, "x", max_output=100)
    # A small manifest frame that inflates to 5 MB.
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 5_000_000)
    assert len(bomb) < 1000
    with pytest.raises(LimitExceededError, match="manifest"):
        parse_v1(with_manifest_bytes(data, b"", frame=bomb), "x", max_output=1_000_000)


def test_zstd_frame_claiming_impossible_size():
    # Frame header: single segment, 8-byte content size of 2**40, then one empty raw last block.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (2**40).to_bytes(8, "little") + b"\x01\x00\x00"
    with pytest.raises(CorruptFileError, match="impossible"):
        parse_v1(with_manifest_bytes(load("f32_raw"), b"", frame=frame), "x")


def test_zstd_frame_without_content_size():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"META")
    with pytest.raises(CorruptFileError, match="does not record"):
        parse_v1(with_manifest_bytes(load("f32_raw"), b"", frame=frame), "x")


def _zfp_stream_start(data, index=0):
    record = chunk_records(data)[index]
    return record["offset"] + record["len_header"]


@pytest.mark.parametrize(
    ("byte", "mask", "message"),
    [
        (0, 0x01, "no zfp magic"),
        (4, 0x03, "not float32"),  # scalar type bits
        (5, 0x10, "shape"),  # a size bit
        (10, 0x10, "reversible"),  # a mode bit
    ],
)
def test_zfp_header_is_checked_before_zfpy_runs(no_zfpy, byte, mask, message):
    # With zfpy unavailable, reaching the decoder would raise MissingDependencyError instead.
    data = load("f32_zfp")
    with pytest.raises(CorruptFileError, match=message):
        parse_v1(flipped(data, _zfp_stream_start(data) + byte, mask), "x")



@pytest.mark.parametrize("name", RAW)
def test_v1_files_open_through_the_public_api_and_cli(name, tmp_path, capsys):
    import raiiaf_core as rc
    from raiiaf_core.cli import main

    art = rc.open(DATA / f"{name}.raiiaf")
    want = EXPECTED[name]
    assert art.version == (1, 0)
    art.verify()
    assert art.image_bytes() == want["image"] and art.image_format == want["format"]
    assert art.metadata["seed"] == want["seed"] and art.metadata["prompt"] == want["prompt"]
    for tensor_name, expected in want["tensors"].items():
        got = art.load_tensor(tensor_name)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert main(["inspect", str(DATA / f"{name}.raiiaf")]) == 0
    assert "raiiaf 1.0" in capsys.readouterr().out
    assert main(["extract", str(DATA / f"{name}.raiiaf"), "-o", str(tmp_path)]) == 0
