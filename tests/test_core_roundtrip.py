"""Round trips through real files: tensors bit for bit, images byte for byte, metadata as given."""

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import raiiaf_core as rc
from raiiaf_core import layout
from conftest import FIXED_ENV, png_bytes

SHAPES = {1: (7,), 2: (3, 5), 3: (2, 3, 4), 4: (1, 4, 8, 8), 5: (2, 1, 3, 4, 5)}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits, so NaN payloads and -0.0 compare exactly too."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def special_values(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    t = torch.randn(shape, generator=g).to(dtype)
    flat = t.reshape(-1)
    for i, v in enumerate([float("nan"), float("inf"), -0.0, 1e-40]):
        if i < flat.numel():
            flat[i] = v
    return t


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_tensors_round_trip_bit_exact(tmp_path, rank, dtype):
    t = special_values(SHAPES[rank], dtype)
    path = rc.write(tmp_path / "t.raiiaf", image=png_bytes(), tensors={"x": t}, environment=FIXED_ENV)
    art = rc.open(path)
    assert art.tensor_info("x") == rc.TensorInfo("x", str(dtype).removeprefix("torch."), SHAPES[rank])
    back = art.load_tensor("x", framework="torch")
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(bits(back), bits(t))


@pytest.mark.parametrize("rank", sorted(SHAPES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.uint8, np.bool_])
def test_numpy_arrays_round_trip_bit_exact(tmp_path, rank, dtype):
    a = (np.random.default_rng(rank).standard_normal(SHAPES[rank]) * 50).astype(dtype)
    path = rc.write(tmp_path / "a.raiiaf", tensors={"x": a}, environment=FIXED_ENV)
    back = rc.open(path).load_tensor("x")
    assert back.dtype == a.dtype and back.tobytes() == a.tobytes() and back.shape == a.shape


def test_torch_and_numpy_views_agree(tmp_path):
    t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    art = rc.open(rc.write(tmp_path / "x.raiiaf", tensors={"noise": t}, environment=FIXED_ENV))
    assert art.load_tensor("noise", "numpy").tobytes() == t.numpy().tobytes()
    assert rc.tensor_sha256(t) == rc.tensor_sha256(t.numpy()) == rc.tensor_sha256(art.load_tensor("noise", "torch"))


@pytest.mark.parametrize("value", [np.array(3.5, np.float32), torch.tensor(3.5), np.arange(12.0)[::2]])
def test_scalars_and_strided_arrays_keep_their_shape(tmp_path, value):
    art = rc.open(rc.write(tmp_path / "s.raiiaf", tensors={"x": value}, environment=FIXED_ENV))
    back = art.load_tensor("x")
    assert back.shape == tuple(value.shape) and back.tobytes() == np.asarray(value).tobytes()
    assert rc.tensor_sha256(back) == rc.tensor_sha256(value)


def test_bfloat16_as_numpy_is_a_clear_error(tmp_path):
    art = rc.open(rc.write(tmp_path / "b.raiiaf", tensors={"x": torch.ones(3, dtype=torch.bfloat16)},
                           environment=FIXED_ENV))
    with pytest.raises(rc.TensorError, match="framework='torch'"):
        art.load_tensor("x", framework="numpy")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_image_bytes_are_stored_exactly_as_given(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 50)).save(buffer, format=fmt)
    data = buffer.getvalue()
    art = rc.open(rc.write(tmp_path / "i.raiiaf", image=data, environment=FIXED_ENV))
    assert art.image_bytes() == data
    assert art.image_format == fmt.lower()
    assert art.image_size == (40, 30)
    assert art.image().size == (40, 30)


def test_pil_image_is_encoded_to_png(tmp_path):
    im = Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(32, 48, 3))
    art = rc.open(rc.write(tmp_path / "p.raiiaf", image=im, environment=FIXED_ENV))
    assert art.image_format == "png"
    assert np.array_equal(np.asarray(art.image()), np.asarray(im))


def test_unicode_metadata_round_trips(tmp_path):
    meta = {"prompt": "猫が窓辺で眠る 🐈, «l'été», Ωmega", "negative_prompt": "mauvaise qualité",
            "tags": ["日本語", "émoji 🎨"], "notes": "line\nbreak\ttab \"quotes\" \\ back", "seed": 2**63 - 1,
            "guidance_scale": 7.5, "host": {"comfyui": {"workflow": {"nodes": [{"id": 1, "title": "ñ"}]}}}}
    art = rc.open(rc.write(tmp_path / "u.raiiaf", metadata=meta, environment=FIXED_ENV))
    assert art.metadata == {**meta, "schema_version": 1}


def test_large_json_is_compressed_and_round_trips(tmp_path):
    workflow = {"nodes": [{"id": i, "type": "KSampler", "widgets_values": [i, "euler", 20]} for i in range(3000)]}
    path = rc.write(tmp_path / "w.raiiaf", metadata={"host": {"comfyui": {"workflow": workflow}}},
                    environment=FIXED_ENV)
    art = rc.open(path)
    assert next(c for c in art.chunks if c.type == "metadata").codec == "zstd"
    assert art.metadata["host"]["comfyui"]["workflow"] == workflow
    assert path.stat().st_size < len(json.dumps(workflow)) / 3


def test_same_inputs_give_identical_bytes(tmp_path):
    kwargs = dict(image=png_bytes(), tensors={"noise": torch.randn(1, 4, 8, 8), "s": np.arange(3.0)},
                  metadata={"prompt": "x", "seed": 1, "tags": ["a"]}, environment=FIXED_ENV)
    a = rc.write(tmp_path / "a.raiiaf", **kwargs).read_bytes()
    b = rc.write(tmp_path / "b.raiiaf", **kwargs).read_bytes()
    assert a == b


def test_captured_environment_is_stable_within_a_process(tmp_path):
    a = rc.write(tmp_path / "a.raiiaf", image=png_bytes(), metadata={"seed": 1}).read_bytes()
    b = rc.write(tmp_path / "b.raiiaf", image=png_bytes(), metadata={"seed": 1}).read_bytes()
    assert a == b


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_metadata_read_of_a_50mb_image_file_reads_under_64k(tmp_path):
    big_image = png_bytes(16, 16) + b"\0" * (50 * 1024 * 1024)  # a valid PNG signature, 50 MB payload
    noise = np.zeros((1, 4, 128, 128), np.float32)
    path = rc.write(tmp_path / "big.raiiaf", image=big_image, tensors={"noise": noise},
                    metadata={"prompt": "big", "seed": 3}, environment=rc.capture_environment())
    with CountingFile(path, "r") as f:
        art = rc.open(f)
        assert art.metadata["prompt"] == "big"
        assert art.environment["python"]["version"]
        assert art.tensor_info("noise").shape == (1, 4, 128, 128)
        assert f.bytes_read < 64 * 1024


def test_one_tensor_loads_without_reading_the_others(tmp_path):
    tensors = {f"t{i}": np.full((256, 256), i, np.float32) for i in range(4)}
    path = rc.write(tmp_path / "many.raiiaf", tensors=tensors, environment=FIXED_ENV)
    with CountingFile(path, "r") as f:
        art = rc.open(f)
        assert np.array_equal(art.load_tensor("t2"), tensors["t2"])
        assert f.bytes_read < 256 * 256 * 4 + 32 * 1024


def test_reading_metadata_does_not_import_torch(small_file):
    code = ("import sys, raiiaf_core as rc; a = rc.open(sys.argv[1]); a.metadata; a.environment; "
            "a.load_tensor('noise'); a.verify(); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(small_file)], check=True)


def test_unknown_chunk_types_are_skipped_and_still_verified(tmp_path):
    """A file from a newer minor version with an extra chunk type opens and verifies here."""
    entries, payloads, offset = [], [], None
    parts = {"metadata": b'{"prompt":"future","schema_version":1}', "hologram": b"\x00\x01future data"}

    def assemble(index_length):
        nonlocal offset
        offset = layout.HEADER_SIZE + index_length
        out = []
        for kind, payload in parts.items():
            out.append(layout.ChunkEntry(kind, "", offset, len(payload), hashlib.sha256(payload).hexdigest(),
                                         "none", len(payload), {}))
            offset += len(payload)
        return out

    index = b""
    while len(layout.encode_index(assemble(len(index)))) != len(index):
        index = layout.encode_index(assemble(len(index)))
    index = layout.encode_index(assemble(len(index)))
    header = bytearray(layout.pack_header(layout.HEADER_SIZE, len(index), offset, hashlib.sha256(index).digest()))
    header[7] = 9  # minor version 9: newer, same major
    header[-4:] = __import__("zlib").crc32(bytes(header[:-4])).to_bytes(4, "little")
    path = tmp_path / "future.raiiaf"
    path.write_bytes(bytes(header) + index + b"".join(parts.values()))
    art = rc.open(path)
    assert art.version == (2, 9)
    assert art.metadata["prompt"] == "future"
    art.verify()
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(rc.CorruptFileError, match="hologram"):
        rc.open(path).verify()


def test_newer_major_version_is_refused_clearly(small_file):
    data = bytearray(small_file.read_bytes())
    data[6] = 3
    small_file.write_bytes(bytes(data))
    with pytest.raises(rc.UnsupportedVersionError, match=r"version 3\.0 is newer.*upgrade raiiaf"):
        rc.open(small_file)


def test_size_over_png_is_the_tensor_plus_a_few_kib(tmp_path):
    png = png_bytes(256, 256)
    noise = torch.randn(1, 4, 32, 32)
    path = rc.write(tmp_path / "s.raiiaf", image=png, tensors={"noise": noise},
                    metadata={"prompt": "p", "seed": 1, "noise": {"tensor": "noise", "source": "captured"}})
    assert path.stat().st_size - len(png) <= noise.numel() * 4 + 4096
