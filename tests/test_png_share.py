"""The shareable PNG (raiiaf_core/png_share.py) on real files: what viewers and ComfyUI read in it, that rc.open
reads it like the .raiiaf, that import gives the .raiiaf back byte for byte, and that damage anywhere is caught."""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import raiiaf_core as rc
from raiiaf_core import png, png_share
from raiiaf_core.cli import main
from conftest import FIXED_ENV, png_bytes

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NOISE = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
META = {"prompt": "a fox, in snow", "negative_prompt": "blurry", "seed": 7, "steps": 20, "sampler": "euler_ancestral",
        "scheduler": "karras", "guidance_scale": 7.0, "width": 16, "height": 16,
        "model": {"name": "sd15/v1-5-pruned-emaonly.safetensors", "sha256": "6ce0161689" + "0" * 54},
        "noise": {"tensor": "noise", "source": "captured"}}


def frontend_texts(data: bytes) -> dict:
    """The text chunks as ComfyUI's frontend reads a dropped PNG (getFromPngBuffer in scripts/metadata/png.ts, the
    same in frontends 1.27.10 and 1.35.9): every tEXt, iTXt or comf chunk, keyword up to NUL, the rest as UTF-8."""
    found, offset = {}, 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset:offset + 4])[0]
        kind = data[offset + 4:offset + 8]
        if kind in (b"tEXt", b"comf", b"iTXt"):
            end = data.index(b"\0", offset + 8)
            found[data[offset + 8:end].decode("latin-1")] = data[end + 1:offset + 8 + length].decode("utf-8")
        offset += 12 + length
    return found


def chunk_types(data: bytes) -> list:
    types, offset = [], 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset:offset + 4])[0]
        types.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return types


@pytest.fixture
def stored(tmp_path):
    """A small .raiiaf (16x16 PNG, one tensor, settings) and its shareable PNG."""
    path = rc.write(tmp_path / "fox.raiiaf", image=png_bytes(), tensors={"noise": NOISE}, metadata=META,
                    environment=FIXED_ENV)
    return path, rc.export_png(path)


def test_the_png_shows_the_stored_pixels_and_carries_a1111_parameters(stored):
    path, exported = stored
    assert exported == path.with_suffix(".png")
    with Image.open(exported) as im:
        im.verify()  # Pillow's own check of the PNG structure and every chunk's CRC
    with Image.open(exported) as im, Image.open(io.BytesIO(png_bytes())) as original:
        assert im.tobytes() == original.tobytes() and im.size == (16, 16)
        assert im.text == {"parameters": (
            "a fox, in snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Karras, "
            "CFG scale: 7.0, Seed: 7, Size: 16x16, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")}
    data = exported.read_bytes()
    # The stored PNG's chunks, with the text chunk and the private one inserted right after IHDR: cut out, the
    # stored PNG is left, byte for byte.
    assert chunk_types(data) == [b"IHDR", b"tEXt", b"raIf", *chunk_types(png_bytes())[1:]]
    start = data.index(b"raIf") - 4
    assert data[:33] + data[start + 12 + struct.unpack(">I", data[start:start + 4])[0]:] == png_bytes()


def test_open_reads_the_png_like_the_raiiaf(stored):
    path, exported = stored
    a, b = rc.open(path), rc.open(exported)
    b.verify()
    assert b.metadata == a.metadata and b.environment == a.environment and b.index_sha256 == a.index_sha256
    assert b.tensor_names == ["noise"] and np.array_equal(b.load_tensor("noise"), NOISE)
    assert b.image_bytes() == png_bytes() and b.chunks == a.chunks
    assert b.path == exported and b.name == str(exported)
    with open(exported, "rb") as f:  # a file object too, as the ComfyUI route reads uploads
        assert rc.open(f).metadata == a.metadata


def test_import_gives_the_raiiaf_back_byte_for_byte(stored, tmp_path):
    path, exported = stored
    result = rc.import_png(exported, tmp_path / "back.raiiaf")
    assert result.kind == "raiiaf" and result.output == tmp_path / "back.raiiaf"
    assert (tmp_path / "back.raiiaf").read_bytes() == path.read_bytes()
    # Exporting the exported PNG again gives the same PNG.
    assert rc.export_png(exported, tmp_path / "again.png").read_bytes() == exported.read_bytes()


def test_writing_the_png_directly_gives_the_exported_bytes(stored, tmp_path):
    path, exported = stored
    direct = rc.write(tmp_path / "direct.png", image=png_bytes(), tensors={"noise": NOISE}, metadata=META,
                      environment=FIXED_ENV, png=True)
    assert direct.read_bytes() == exported.read_bytes()
    numbered = rc.write_numbered(tmp_path / "out", "sub/fox", image=png_bytes(), metadata=META,
                                 tensors={"noise": NOISE}, environment=FIXED_ENV, png=True)
    assert numbered == tmp_path / "out" / "sub" / "fox_00001_.png"
    rc.open(numbered).verify()


def test_every_single_byte_change_of_the_png_is_caught(stored):
    """The private chunk, the text chunk, the image's chunks: any byte changed is caught by open or verify."""
    data = stored[1].read_bytes()
    start = data.index(b"raIf") - 4
    private = range(start, start + 12 + struct.unpack(">I", data[start:start + 4])[0])
    missed = []
    for i in range(len(data)):
        for flip in (0xFF, 0x01):
            damaged = bytearray(data)
            damaged[i] ^= flip
            try:
                rc.open(io.BytesIO(bytes(damaged))).verify()
            except rc.RaiiafError:
                continue
            missed.append((i, flip))
    assert missed == []
    assert len(private) > 1000  # the private chunk was covered, every byte of it


def test_every_truncation_is_caught(stored):
    data = stored[1].read_bytes()
    for length in range(len(data)):
        with pytest.raises(rc.RaiiafError):
            rc.open(io.BytesIO(data[:length])).verify()


def test_a_chunk_added_by_another_tool_is_a_clear_error(stored):
    data = stored[1].read_bytes()
    text = b"Comment\0edited"
    added = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    with pytest.raises(rc.CorruptFileError, match="does not fit the file"):
        rc.open(io.BytesIO(data[:-12] + added + data[-12:]))


def test_a_plain_png_is_not_an_artifact(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes())
    with pytest.raises(rc.NoArtifactError, match="not made by `raiiaf export`"):
        rc.open(path)
    assert not png_share.holds_artifact(path)


def test_comfyui_graph_goes_into_prompt_and_workflow_chunks_that_the_frontend_loads(tmp_path):
    workflow = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    prompt = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    meta = {**META, "host": {"comfyui": {"prompt": prompt, "workflow": workflow}}}
    path = rc.write(tmp_path / "c.raiiaf", image=png_bytes(), metadata=meta, tensors={"noise": NOISE},
                    environment=FIXED_ENV)
    data = rc.export_png(path).read_bytes()
    texts = frontend_texts(data)
    assert set(texts) == {"prompt", "workflow", "parameters"}
    assert json.loads(texts["workflow"]) == workflow and json.loads(texts["prompt"]) == prompt
    with Image.open(io.BytesIO(data)) as im:
        assert json.loads(im.text["workflow"]) == workflow
    # A stored PNG that holds them already (Raiiaf Save's, SaveImage's) does not get them twice.
    stored_png = Image.open(io.BytesIO(png_bytes()))
    buffer = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(workflow))
    stored_png.save(buffer, format="PNG", pnginfo=info)
    path = rc.write(tmp_path / "d.raiiaf", image=buffer.getvalue(), metadata=meta, tensors={"noise": NOISE},
                    environment=FIXED_ENV)
    data = rc.export_png(path).read_bytes()
    assert chunk_types(data).count(b"tEXt") == 3 and set(frontend_texts(data)) == {"prompt", "workflow", "parameters"}


def test_prompts_beyond_latin1_go_into_itxt(tmp_path):
    path = rc.write(tmp_path / "u.raiiaf", image=png_bytes(), metadata={**META, "prompt": "狐, snow ❄"},
                    tensors={"noise": NOISE}, environment=FIXED_ENV)
    data = rc.export_png(path).read_bytes()
    assert b"iTXt" in chunk_types(data)
    with Image.open(io.BytesIO(data)) as im:
        assert im.text["parameters"].startswith("狐, snow ❄\n")


@pytest.mark.parametrize("fmt", ["WEBP", "JPEG"])
def test_webp_and_jpeg_are_refused_with_the_reason(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format=fmt)
    path = rc.write(tmp_path / "w.raiiaf", image=buffer.getvalue(), metadata=META, tensors={"noise": NOISE},
                    environment=FIXED_ENV)
    name = {"WEBP": "WebP", "JPEG": "JPEG"}[fmt]
    with pytest.raises(rc.RaiiafError, match=f"the stored image is {name}; export writes PNGs only: .*re-encoding"):
        rc.export_png(path)
    assert not (tmp_path / "w.png").exists()


def test_a_damaged_file_is_not_exported(stored, tmp_path):
    path, _ = stored
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the image
    damaged = tmp_path / "damaged.raiiaf"
    damaged.write_bytes(bytes(data))
    with pytest.raises(rc.CorruptFileError, match="image chunk is damaged"):
        rc.export_png(damaged)
    assert not (tmp_path / "damaged.png").exists()


def test_the_commands_read_the_png(stored, tmp_path, capsys):
    path, exported = stored
    assert main(["verify", str(exported)]) == 0
    assert main(["inspect", "--json", str(exported)]) == 0
    capsys.readouterr()
    assert main(["diff", str(path), str(exported)]) == 0
    assert main(["extract", str(exported), "-o", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "fox.png").read_bytes() == png_bytes()
    assert json.loads((tmp_path / "x" / "fox.metadata.json").read_text())["seed"] == 7
    assert main(["view", str(exported)]) == 0
    assert (exported.parent / "fox.view.png").is_file()


def test_export_command(stored, tmp_path, capsys):
    path, _ = stored
    other = rc.write(tmp_path / "other.raiiaf", image=png_bytes(seed=3), metadata={"seed": 1}, environment=FIXED_ENV)
    assert main(["export", str(path), str(other), "-d", str(tmp_path / "shared")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "shared" / "fox.png"),
                                               str(tmp_path / "shared" / "other.png")]
    assert main(["export", str(path), "-o", str(tmp_path / "one.png")]) == 0
    assert rc.open(tmp_path / "one.png").metadata == rc.open(path).metadata
    assert main(["export", str(path), str(other), "-o", str(tmp_path / "x.png")]) == 2
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.raiiaf"), str(path), "-d", str(tmp_path / "d2")]) == 1
    assert "missing.raiiaf" in capsys.readouterr().err and (tmp_path / "d2" / "fox.png").is_file()


def with_header(data: bytes, **fields) -> bytes:
    """The exported PNG with raIf header fields replaced and every checksum made right again (header CRC and
    the chunk's CRC): a well-formed file with hostile values."""
    start = data.index(b"raIf") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    body = bytearray(data[start + 8:start + 8 + length])
    names = ("magic", "major", "minor", "inserted_at", "image_offset", "image_length", "texts_sha256")
    values = dict(zip(names, png_share._HEADER_BODY.unpack_from(body)))
    values.update(fields)
    header = png_share._HEADER_BODY.pack(*(values[n] for n in names))
    body[:png_share.HEADER_SIZE] = header + struct.pack("<I", zlib.crc32(header))
    chunk = data[start:start + 8] + bytes(body) + struct.pack(">I", zlib.crc32(b"raIf" + bytes(body)))
    return data[:start] + chunk + data[start + 12 + length:]


@pytest.mark.parametrize("fields, message", [
    ({"inserted_at": 0}, "does not fit the file"),
    ({"inserted_at": 10**12}, "does not fit the file"),
    ({"image_offset": 2**63}, "does not fit the file"),
    ({"image_length": 5}, "does not fit the file"),
    ({"major": 2}, "newer than this reader"),
    ({"magic": b"raiiaf.jpg"}, "does not start with"),
    ({"image_offset": 100}, "damaged"),  # fits, but puts the image in the wrong place: the chunks' sha256 fail
    ({"texts_sha256": bytes(32)}, "text chunks before its raiiaf chunk were changed"),
])
def test_hostile_header_values_with_valid_checksums_are_refused(stored, fields, message):
    data = with_header(stored[1].read_bytes(), **fields)
    with pytest.raises(rc.RaiiafError, match=message):
        rc.open(io.BytesIO(data)).verify()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"tEXt", b"zTXt", b"iTXt", b"raIf", b"IDAT", b"IEND", b"x\x00yz"]),
                          st.binary(max_size=120), st.booleans()), max_size=6), st.binary(max_size=40))
def test_random_chunks_after_the_header_only_raise_raiiaf_errors(chunks, tail):
    data = png_bytes()[:33] + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) if good_crc else 0)
        for kind, body, good_crc in chunks) + tail
    for attempt in (lambda: rc.open(io.BytesIO(data)).verify(),
                    lambda: png.texts(data, "fuzz.png", max_text=1 << 16, max_chunks=100)):
        try:
            attempt()
        except rc.RaiiafError:
            pass


def test_compressed_text_is_bounded(tmp_path):
    bomb = b"prompt\0\0" + zlib.compress(b"{" * (20 << 20), 9)
    data = png_bytes()[:33] + struct.pack(">I", len(bomb)) + b"zTXt" + bomb + struct.pack(
        ">I", zlib.crc32(b"zTXt" + bomb)) + png_bytes()[33:]
    with pytest.raises(rc.LimitExceededError, match="max_json_bytes"):
        png.texts(data, "bomb.png", max_text=16 << 20, max_chunks=100)
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(rc.LimitExceededError):
        rc.import_png(tmp_path / "bomb.png", tmp_path / "bomb.raiiaf")


def test_a_file_whose_image_is_not_the_last_chunk(tmp_path):
    """Readers may not rely on chunk order (docs/FORMAT.md): a file from a writer that puts the image before a
    tensor exports and reads back the same way."""
    import hashlib

    from raiiaf_core import chunks, layout

    built = [chunks.METADATA.build({"schema_version": 1, "seed": 3}), chunks.ENVIRONMENT.build(FIXED_ENV),
             chunks.IMAGE.build(png_bytes()), chunks.TENSOR.build("noise", NOISE)]
    index_length = 0
    while True:  # offsets depend on the index's length, as in writer.build
        offset, entries = layout.HEADER_SIZE + index_length, []
        for item in built:
            entries.append(layout.ChunkEntry(item.type, item.name, offset, len(item.payload),
                                             hashlib.sha256(item.payload).hexdigest(), item.codec, item.size,
                                             item.info))
            offset += len(item.payload)
        index = layout.encode_index(entries)
        if len(index) == index_length:
            break
        index_length = len(index)
    data = layout.pack_header(layout.HEADER_SIZE, len(index), offset, hashlib.sha256(index).digest()) + index + \
        b"".join(item.payload for item in built)
    path = tmp_path / "image_first.raiiaf"
    path.write_bytes(data)
    rc.open(path).verify()
    exported = rc.export_png(path)
    art = rc.open(exported)
    art.verify()
    assert np.array_equal(art.load_tensor("noise"), NOISE) and art.image_bytes() == png_bytes()
    rc.import_png(exported, tmp_path / "back.raiiaf")
    assert (tmp_path / "back.raiiaf").read_bytes() == data
    for i in range(0, len(exported.read_bytes()), 7):  # damage after the image lands in the tensor
        damaged = bytearray(exported.read_bytes())
        damaged[i] ^= 0xFF
        with pytest.raises(rc.RaiiafError):
            rc.open(io.BytesIO(bytes(damaged))).verify()


def test_the_image_gives_the_size_when_the_metadata_does_not(tmp_path):
    path = rc.write(tmp_path / "p.raiiaf", image=png_bytes(24, 8), metadata={"prompt": "p", "seed": 1},
                    environment=FIXED_ENV)
    with Image.open(rc.export_png(path)) as im:
        assert im.text["parameters"] == "p\nSeed: 1, Size: 24x8"
