"""Well-formed files with hostile values (every checksum valid): each ends in a RaiiafError naming the file and
the part, in bounded memory, and nothing from a file reaches the terminal unescaped.

Files are written with rc.write; where a value the writer refuses is needed (NaN, a wrong type, a lying index),
one chunk is replaced and every checksum recomputed, as another tool could.
"""

import io
import json
import os
import re
import struct
import sys
import tracemalloc
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raiiaf_core as rc
from raiiaf_core import layout, report
from raiiaf_core.cli import main
from conftest import FIXED_ENV, png_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # bench/ is in the checkout, not in the installed package
from bench.fuzz import assemble, safetensors_blob, split_v2, v1_file, v1_parts  # noqa: E402

V1_FIXTURE = ROOT / "tests" / "data" / "v1" / "f32_raw.raiiaf"
MIB = 1 << 20


def rewritten(data: bytes, kind: str, payload: bytes | None = None, name: str = "", **fields) -> bytes:
    """The file with one chunk's payload and/or index fields replaced, every checksum valid again."""
    chunks, payloads = split_v2(data)
    [i] = [i for i, c in enumerate(chunks) if c["type"] == kind and c["name"] == name]
    if payload is not None:
        payloads[i] = payload
        fields.setdefault("codec", "none")
    chunks[i].update(fields)
    return assemble(chunks, payloads)


def peak_memory(fn):
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def raising(error, match: str, fn):
    """fn, as a call that must raise `error` with a message matching `match`."""
    def call():
        with pytest.raises(error, match=match):
            fn()
    return call


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- memory bombs ----------------------------------------------------------------------------------------------

def test_a_megabyte_key_over_a_thousand_items_flattens_in_bounded_memory(tmp_path, capsys):
    # 4 MiB of key over 1 000 items: under 1 KB on disk. Flattening once copied the key into every item's key.
    environment = {**FIXED_ENV, "k" * (4 * MIB): [{"v": i} for i in range(1000)]}
    path = rc.write(tmp_path / "bomb.raiiaf", environment=environment)
    other = rc.write(tmp_path / "plain.raiiaf", environment=FIXED_ENV)
    assert path.stat().st_size < 4096
    art = rc.open(path)
    peak, report_ = peak_memory(lambda: rc.drift(art.environment, FIXED_ENV))
    assert peak < 64 * MIB, peak
    keys = [d.key for d in report_.differences]
    assert len(keys) == 1000 and all(len(k) < 300 for k in keys)
    assert len(set(keys)) == 1000  # shortened keys stay distinct
    assert "4,194,304 chars" in keys[0]
    peak, code = peak_memory(lambda: main(["diff", str(path), str(other)]))
    assert code == 1 and peak < 96 * MIB, peak
    capsys.readouterr()


def test_flatten_is_bounded_in_entries_and_says_what_it_left_out():
    flat = report.flatten({"a": list(range(report.MAX_FLAT_KEYS + 10)), "b": {"c": [], "d": {}}})
    assert len(flat) == report.MAX_FLAT_KEYS + 1
    assert flat[report.OMITTED_KEY].startswith("12 more values")  # 10 list items, b.c and b.d
    assert report.flatten({"gpu": [{"name": "x"}], "e": [], "f": {}}) == {"gpu[0].name": "x", "e": [], "f": {}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab[]{}"\\\n/ué'), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='k[]{"\\', max_size=3), inner,
                                                                max_size=4),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(value=json_values, wrap=st.integers(0, 30), limit=st.integers(0, 12))
def test_nesting_depth_from_the_text_is_the_depth_of_the_value(value, wrap, limit):
    for _ in range(wrap):
        value = [value]
    for ensure_ascii in (True, False):
        text = json.dumps(value, ensure_ascii=ensure_ascii).encode()
        parsed = json.loads(text)
        true_depth = layout._walk_depth(parsed, 10_000)
        got = layout.nesting_depth(text, parsed, limit)
        assert (got > limit) == (true_depth > limit), (text, got, true_depth)
        if text.count(b"[") + text.count(b"{") > limit and got <= limit:
            assert got == true_depth


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=64) | st.text(alphabet="[{]}a", max_size=64).map(str.encode),
       limit=st.integers(-1, 70))
def test_the_bound_on_nesting_counts_opening_brackets_exactly(text, limit):
    # What every metadata read tests first (by bytes.replace with a count): wrong either way, it would let a
    # nesting bomb through or refuse a file for nothing.
    assert layout._more_openings_than(text, limit) == (text.count(b"[") + text.count(b"{") > limit)


def test_a_v1_manifest_inflating_past_the_json_limit_is_refused_before_decoding():
    header, chunk_bytes, manifest = v1_parts(V1_FIXTURE.read_bytes())
    manifest["raiiaf_metadata"]["model_info"]["prompt"] = "x" * (20 * MIB)
    data = v1_file(header, chunk_bytes, json.dumps(manifest).encode())
    assert len(data) < 64 * 1024
    peak, _ = peak_memory(raising(rc.LimitExceededError, r"manifest: decodes to .* over Limits.max_json_bytes",
                                  lambda: rc.open(io.BytesIO(data))))
    assert peak < 8 * MIB, peak
    art = rc.open(io.BytesIO(data), limits=rc.Limits(max_json_bytes=64 * MIB))
    assert len(art.metadata["prompt"]) == 20 * MIB


def test_an_uncompressed_json_chunk_is_held_to_the_json_limit(tmp_path):
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghij"), 3000))  # under the 4 KiB compression threshold: stored as is
    path = rc.write(tmp_path / "plain.raiiaf", metadata={"prompt": text}, environment=FIXED_ENV)
    assert next(c for c in rc.open(path).chunks if c.type == "metadata").codec == "none"
    with pytest.raises(rc.LimitExceededError, match=r"metadata chunk is 3,0\d\d bytes of JSON, over "
                                                     r"Limits.max_json_bytes=1,000") as info:
        rc.open(path, limits=rc.Limits(max_json_bytes=1000)).metadata
    assert str(path) in str(info.value)


def deep_then_wide(depth: int, wide: list) -> dict:
    value = leaf = {}
    for _ in range(depth):
        leaf["x"] = leaf = {}
    leaf["wide"] = wide
    return value


def test_extract_does_not_indent_deep_then_wide_json_into_gigabytes(tmp_path, capsys):
    path = rc.write(tmp_path / "deep.raiiaf", metadata={"extra": deep_then_wide(190, list(range(100_000)))},
                    environment=FIXED_ENV)
    assert path.stat().st_size < 300_000
    code, _, err = cli(capsys, "extract", path, "-o", tmp_path / "out")
    assert code == 0 and "deep.metadata.json: written compact" in err
    written = tmp_path / "out" / "deep.metadata.json"
    # Indented, each of the 100 000 items would sit behind 382 spaces: 38 MB from 0.6 MB.
    compact = rc.open(path).chunks[0].size
    assert written.stat().st_size <= 4 * compact + MIB + 1
    assert json.loads(written.read_text())["extra"]["x"]["x"]  # still the whole value
    small = rc.write(tmp_path / "small.raiiaf", metadata={"prompt": "p", "tags": ["a"]}, environment=FIXED_ENV)
    assert cli(capsys, "extract", small, "-o", tmp_path / "out2")[0] == 0
    assert (tmp_path / "out2" / "small.metadata.json").read_text().startswith('{\n  "prompt": "p"')


def test_inspect_json_does_not_indent_deep_then_wide_metadata_into_gigabytes(tmp_path, capsys):
    # Found by `python -m bench.fuzz --semantic`: 1.7 KB on disk, 75 MB of output and 390 MB of memory for
    # 200 000 items, ten times that for 2 000 000; the same file is still one valid JSON document.
    path = rc.write(tmp_path / "deep.raiiaf", metadata={"extra": deep_then_wide(190, [0] * 200_000)},
                    environment=FIXED_ENV)
    assert path.stat().st_size < 10_000
    compact = rc.open(path).chunks[0].size
    peak, (code, out, _) = peak_memory(lambda: cli(capsys, "inspect", "--json", path))
    assert code == 0 and len(out) <= 4 * compact + 2 * MIB
    assert peak < 12 * compact + 8 * MIB
    assert json.loads(out)[0]["metadata"]["extra"]["x"]["x"]
    small = rc.write(tmp_path / "small.raiiaf", metadata={"prompt": "p"}, environment=FIXED_ENV)
    assert '\n    "metadata": {\n      "prompt": "p"' in cli(capsys, "inspect", "--json", small)[1]  # still indented


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    # 13 000 x 13 000 is under Pillow's own bomb threshold: decoded, it would be a 4 GB IMAGE tensor in ComfyUI.
    path = rc.write(tmp_path / "huge.raiiaf", image=png_header_only(13000, 13000), environment=FIXED_ENV)
    art = rc.open(path)
    assert art.image_size == (13000, 13000)
    peak, _ = peak_memory(raising(rc.LimitExceededError, r"image chunk: the image is 13000x13000 .* over "
                                  r"Limits.max_image_pixels=67,108,864", art.image))
    assert peak < 8 * MIB
    from raiiaf_nodes.replay import image_tensor  # what the Load node calls

    with pytest.raises(rc.LimitExceededError, match=str(path)):
        image_tensor(art)
    small = rc.write(tmp_path / "small.raiiaf", image=png_bytes(40, 30), environment=FIXED_ENV)
    assert rc.open(small).image().size == (40, 30)
    with pytest.raises(rc.LimitExceededError, match="max_image_pixels=1,000"):
        rc.open(small, limits=rc.Limits(max_image_pixels=1000)).image()


# -- the terminal ------------------------------------------------------------------------------------------------

HOSTILE = {
    "osc52": "\x1b]52;c;Y3VybCBldmlsLnNofHNo\x07",  # sets the clipboard
    "rewrite": "a cat\r\x1b[2KOK    verified, signed by raiiaf",  # rewrites the line it is on
    "csi": "\x9b2J",  # C1 CSI: clears the screen on terminals that take 8-bit controls
    "bidi": "\u202eOK\u202c \u2066x\u2069",
    "newline": "p\n  environment: forged",
    "del": "a\x7fb",
}
# Raw characters that must never be printed; the escaped forms (\x1b, \u202e, \n) may be.
TERMINAL_ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


@pytest.fixture
def hostile_file(tmp_path):
    noise = np.zeros((1, 4, 2, 2), np.float32)
    environment = {**FIXED_ENV, "gpu": [{"name": HOSTILE["csi"] + "H100"}], "os": {"system": HOSTILE["bidi"]}}
    return rc.write(tmp_path / "hostile.raiiaf", image=png_bytes(), environment=environment,
                    tensors={"\x1b[31mnoise": noise},
                    metadata={"prompt": HOSTILE["osc52"] + HOSTILE["newline"], "negative_prompt": HOSTILE["rewrite"],
                              "model": {"name": HOSTILE["bidi"]}, "tags": [HOSTILE["csi"], HOSTILE["del"]],
                              "sampler": HOSTILE["rewrite"], "noise": {"tensor": "\x1b[31mnoise",
                                                                       "source": "captured"}})


def assert_inert(text: str) -> None:
    found = TERMINAL_ACTIVE.search(text)
    assert found is None, f"raw {found.group()!r} printed: {text[max(0, found.start() - 40):][:80]!r}"


def test_inspect_escapes_every_value_from_the_file(hostile_file, capsys):
    code, out, err = cli(capsys, "inspect", hostile_file)
    assert code == 0
    assert_inert(out)
    assert "\\x1b]52;c;" in out and "\\x9b2J" in out and "\\u202eOK" in out and "\\r\\x1b[2K" in out
    assert "p\\n  environment: forged" in out
    assert sum(line.lstrip().startswith("environment:") for line in out.splitlines()) == 1  # no forged line


def test_json_output_escapes_what_terminals_act_on_and_stays_exact(hostile_file, capsys):
    code, out, _ = cli(capsys, "inspect", "--json", hostile_file)
    assert code == 0
    assert_inert(out.replace("\n", " "))
    assert "\\u009b2J" in out and "\\u202e" in out and "\\u007f" in out
    [info] = json.loads(out)
    assert info["metadata"]["tags"] == [HOSTILE["csi"], HOSTILE["del"]]  # the escapes decode to the exact text
    assert report.to_json("\U000e0041") == '"\\udb40\\udc41"' and json.loads(report.to_json("\U000e0041")) == \
        "\U000e0041"
    assert report.to_json("été 猫") == '"été 猫"'  # readable non-ASCII is kept


def test_verify_and_diff_escape_names_values_and_errors(hostile_file, tmp_path, capsys):
    damaged = tmp_path / "OK\x1b[1A\x1b[2Kdamaged\u202e.raiiaf"
    data = bytearray(hostile_file.read_bytes())
    data[-10] ^= 1
    damaged.write_bytes(bytes(data))
    code, out, _ = cli(capsys, "verify", hostile_file, damaged)
    assert code == 1
    assert_inert(out.replace("\n", " "))
    assert out.splitlines()[1].startswith("FAIL  ") and "\\x1b[1A" in out
    code, _, err = cli(capsys, "inspect", damaged)
    assert code == 0 or "raiiaf: " in err
    plain = rc.write(tmp_path / "plain.raiiaf", image=png_bytes(), metadata={"prompt": "p"}, environment=FIXED_ENV)
    code, out, err = cli(capsys, "diff", hostile_file, plain)
    assert code == 1
    assert_inert(out.replace("\n", " ") + err.replace("\n", " "))
    assert "tensor   \\x1b[31mnoise: only in a" in out and "gpu[0].name" in out
    code, _, err = cli(capsys, "inspect", tmp_path / "missing\x1b]52;c;eA==\x07.raiiaf")
    assert code == 1 and err.startswith("raiiaf: ") and "\\x1b]52" in err
    assert_inert(err.replace("\n", " "))


def test_escape_names_every_dangerous_class():
    for char in ("\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u00ad", "\u061c", "\u200b", "\u200e", "\u2028",
                 "\u202a", "\u202e", "\u2066", "\u2069", "\ufeff", "\U000e0001", "\udcff"):
        shown = report.escape(f"a{char}b")
        assert shown.startswith("a\\") and shown.endswith("b") and char not in shown, (char, shown)
    assert report.escape("été 猫 🐈 \\x1b") == "été 猫 🐈 \\x1b"  # printable text and backslashes: as is
    assert report.escape(["\x1b"]) == "['\\x1b']"


# -- foreign exceptions ----------------------------------------------------------------------------------------

def test_pack_refuses_metadata_nested_too_deep_with_a_metadata_error(tmp_path, capsys):
    image = tmp_path / "i.png"
    image.write_bytes(png_bytes())
    for depth, message in ((900, "nests deeper than 200 levels"), (100_000, "is not valid JSON")):
        meta = tmp_path / f"m{depth}.json"
        meta.write_text('{"extra":' + '{"a":' * depth + "1" + "}" * (depth + 1))
        code, _, err = cli(capsys, "pack", "--image", image, "--metadata", meta, "-o", tmp_path / "x.raiiaf")
        assert code == 1 and message in err, err
    with pytest.raises(rc.MetadataError, match=r"'extra\.x\.x.*' nests deeper than 200"):
        rc.write(tmp_path / "x.raiiaf", metadata={"extra": deep_then_wide(250, [0])}, environment=FIXED_ENV)
    assert not (tmp_path / "x.raiiaf").exists()
    # The writer's limit is the reader's: the deepest value written (the metadata object, 'extra', 197 levels
    # and a list: 200) is read back, one more level is refused.
    path = rc.write(tmp_path / "y.raiiaf", metadata={"extra": deep_then_wide(197, [0])}, environment=FIXED_ENV)
    assert rc.verify(path).metadata["extra"]["x"]
    with pytest.raises(rc.MetadataError, match="nests deeper than 200"):
        rc.write(tmp_path / "z.raiiaf", metadata={"extra": deep_then_wide(198, [0])}, environment=FIXED_ENV)


WRONG_TYPES = {
    "metadata": {"model": [1, {"name": 2}], "batch": "3", "noise": [1], "tags": {"a": [None]}, "prompt": {"p": 1},
                 "negative_prompt": ["x"], "seed": "s", "steps": [], "width": {}, "height": None, "host": [1],
                 "runs": {"0": 1}, "sampler_settings": "x", "schema_version": "1"},
    "environment": {"gpu": {"name": 1}, "torch": [1], "os": "linux", "python": {"version": ["x"]}, "cpu": None,
                    "packages": [None, {"a": []}], "determinism": 5},
}


@pytest.mark.parametrize("part", ["metadata", "environment", "both"])
def test_values_of_the_wrong_type_never_raise_foreign_exceptions(small_file, tmp_path, capsys, part):
    data = small_file.read_bytes()
    for kind in ("metadata", "environment") if part == "both" else (part,):
        data = rewritten(data, kind, json.dumps(WRONG_TYPES[kind]).encode())
    odd = tmp_path / "odd.raiiaf"
    odd.write_bytes(data)
    art = rc.verify(odd)
    rc.drift(art.environment)
    report.summary(art)
    report.compare(art, rc.open(small_file))
    for args in (["inspect", odd], ["inspect", "--json", odd], ["diff", odd, small_file], ["diff", "--json", odd, odd],
                 ["extract", odd, "-o", tmp_path / "out"], ["verify", odd]):
        code, out, _ = cli(capsys, *args)
        assert code in (0, 1) and (code == 0 or args[0] == "diff"), args
        assert_inert(out.replace("\n", " "))


# -- what the spec forbids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("literal", [b"NaN", b"-Infinity", b"Infinity", b"1e400", b"-1E+400"])
@pytest.mark.parametrize("part", ["metadata", "environment"])
def test_non_finite_numbers_are_refused_in_json_chunks(small_file, literal, part):
    data = rewritten(small_file.read_bytes(), part, b'{"seed":' + literal + b"}")
    art = rc.open(io.BytesIO(data))
    with pytest.raises(rc.CorruptFileError, match=f"{part} chunk holds the number {re.escape(literal.decode())}, "
                                                  "which JSON cannot hold"):
        getattr(art, part)
    with pytest.raises(rc.CorruptFileError):
        art.verify()


def test_non_finite_numbers_are_refused_in_the_index_and_in_safetensors_headers(small_file):
    chunks, payloads = split_v2(small_file.read_bytes())
    chunks[0]["from_a_newer_writer"] = float("nan")
    index = assemble(chunks, payloads)  # json.dumps writes it as NaN
    assert b"NaN" in index[:2000]
    with pytest.raises(rc.CorruptFileError, match="index holds the number NaN"):
        rc.open(io.BytesIO(index))
    header = {"noise": {"dtype": "F32", "shape": [1, 4, 4, 4], "data_offsets": [0, 256]},
              "__metadata__": {"scale": float("inf")}}
    data = rewritten(small_file.read_bytes(), "tensor", safetensors_blob(header, bytes(256)), name="noise")
    with pytest.raises(rc.CorruptFileError, match="tensor chunk 'noise': safetensors header is not valid JSON"):
        rc.open(io.BytesIO(data)).load_tensor("noise")


def test_a_v1_manifest_with_an_out_of_range_number_is_refused():
    header, chunk_bytes, manifest = v1_parts(V1_FIXTURE.read_bytes())
    text = json.dumps(manifest).replace('"seed": 1234', '"seed": 1e400').encode()
    assert b"1e400" in text
    with pytest.raises(rc.CorruptFileError, match="manifest: not valid UTF-8 JSON"):
        rc.open(io.BytesIO(v1_file(header, chunk_bytes, text)))


def test_the_index_media_type_must_match_the_format(small_file):
    data = rewritten(small_file.read_bytes(), "image", media_type="text/html")
    with pytest.raises(rc.CorruptFileError, match=r"image chunk: index gives media_type 'text/html' for a png "
                                                  r"image \(expected 'image/png'\)"):
        rc.open(io.BytesIO(data))


def test_the_index_image_size_must_be_the_images_own(small_file, tmp_path, capsys):
    lying = tmp_path / "lying.raiiaf"
    lying.write_bytes(rewritten(small_file.read_bytes(), "image", width=8192, height=8192))
    art = rc.open(lying)  # the claim is checked against the image when the image is read
    for read in (art.image_bytes, art.verify, lambda: art.image_size):
        with pytest.raises(rc.CorruptFileError, match=r"image chunk: the index says 8192x8192, the image is 16x16"):
            read()
    code, out, err = cli(capsys, "inspect", lying)
    assert code == 1 and "8192" not in out and "the index says 8192x8192" in err
    # No size in the index: inspect shows the image's own.
    unsized = tmp_path / "unsized.raiiaf"
    chunks, payloads = split_v2(small_file.read_bytes())
    for c in chunks:
        c.pop("width", None), c.pop("height", None)
    unsized.write_bytes(assemble(chunks, payloads))
    code, out, _ = cli(capsys, "inspect", "--json", unsized)
    assert code == 0 and json.loads(out)[0]["image"]["width"] == 16
    for bad in ({"width": 0, "height": 16}, {"width": 16, "height": None}, {"width": "16", "height": 16},
                {"width": True, "height": 1}):
        data = rewritten(small_file.read_bytes(), "image", **bad)
        with pytest.raises(rc.CorruptFileError, match="'width' and 'height' must both be positive integers"):
            rc.open(io.BytesIO(data))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
@pytest.mark.parametrize("size", [(1, 1), (40, 30), (333, 17)])
def test_image_sizes_are_read_from_the_headers_as_pillow_reads_them(fmt, size, tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" and size[0] > 100 else {}
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt, **options)
    data = buffer.getvalue()
    path = rc.write(tmp_path / "x.raiiaf", image=data, environment=FIXED_ENV)
    art = rc.verify(path)
    assert art.image_size == size == art.image().size
    assert next(c for c in art.chunks if c.type == "image").info["width"] == size[0]


# -- ComfyUI's folders ----------------------------------------------------------------------------------------

@pytest.fixture
def folders(tmp_path):
    inp, out, temp, outside = (tmp_path / n for n in ("input", "output", "temp", "outside"))
    for folder in (inp, out, temp, outside):
        folder.mkdir()
    (outside / "secret.raiiaf").write_bytes(b"not yours")
    return types.SimpleNamespace(input=inp, output=out, temp=temp, outside=outside)


@pytest.fixture
def bridge(folders, monkeypatch):
    """The two folder functions of raiiaf_nodes.comfy_bridge the file inputs use, over real folders."""
    stand_in = types.SimpleNamespace(input_dir=lambda: str(folders.input), output_dir=lambda: str(folders.output))
    monkeypatch.setitem(sys.modules, "raiiaf_nodes.comfy_bridge", stand_in)
    import raiiaf_nodes

    monkeypatch.setattr(raiiaf_nodes, "comfy_bridge", stand_in, raising=False)
    return folders


def test_a_link_planted_in_the_input_folder_cannot_reach_outside(bridge):
    from raiiaf_nodes.errors import UnsafePathError
    from raiiaf_nodes.nodes import RaiiafLoad
    from raiiaf_nodes.paths import list_raiiaf_files, resolve_annotated

    os.symlink(bridge.outside / "secret.raiiaf", bridge.input / "exists.raiiaf")
    os.symlink(bridge.outside / "nothing-here.raiiaf", bridge.input / "dangling.raiiaf")
    os.symlink(bridge.outside, bridge.input / "dir")
    messages = []
    for name in ("exists.raiiaf", "dangling.raiiaf", "dir/secret.raiiaf", "dir/nothing-here.raiiaf"):
        with pytest.raises(UnsafePathError) as info:
            resolve_annotated(name, bridge.input, bridge.output)
        messages.append(str(info.value).replace(name, "NAME"))
        assert RaiiafLoad.VALIDATE_INPUTS(name) == str(info.value)
    # Whether something exists behind the link does not change the answer.
    assert len(set(messages)) == 1 and "points outside the input folder" in messages[0]
    assert list_raiiaf_files(bridge.input, bridge.output) == []
    # Links that stay inside are followed.
    (bridge.input / "real.raiiaf").write_bytes(b"")
    os.symlink(bridge.input / "real.raiiaf", bridge.input / "alias.raiiaf")
    assert resolve_annotated("alias.raiiaf", bridge.input, bridge.output) == bridge.input / "real.raiiaf"
    assert RaiiafLoad.VALIDATE_INPUTS("alias.raiiaf") is True


def test_names_the_filesystem_refuses_are_the_nodes_errors(bridge):
    from raiiaf_nodes.errors import NodeInputError
    from raiiaf_nodes.nodes import RaiiafLoad
    from raiiaf_nodes.paths import resolve_annotated

    for name in ("n" * 5000 + ".raiiaf", "/".join(["a"] * 2500) + "/x.raiiaf", "n" * 5000 + " [output]"):
        with pytest.raises(NodeInputError, match=r"cannot be used \(too long\)") as info:
            resolve_annotated(name, bridge.input, bridge.output)
        assert len(str(info.value)) < 400  # the name is shown, shortened
        assert RaiiafLoad.VALIDATE_INPUTS(name) == str(info.value)
    deep = "/".join(["a"] * 1500) + "/x.raiiaf"  # within PATH_MAX: simply not there
    assert RaiiafLoad.VALIDATE_INPUTS(deep).startswith("no such .raiiaf file")


def test_save_prefixes_too_deep_or_too_long_are_write_errors(folders):
    with pytest.raises(rc.WriteError, match="has 1,500 folder levels; at most 64") as info:
        rc.write_numbered(folders.output, "/".join(["a"] * 1500) + "/x", environment=FIXED_ENV)
    assert len(str(info.value)) < 500
    with pytest.raises(rc.WriteError, match=r"n{100}.*cannot be created \(File name too long\)"):
        rc.write_numbered(folders.output, "n" * 5000, environment=FIXED_ENV)
    assert list(folders.output.iterdir()) == []


def save_with_preview(folders, prefix="shot"):
    import torch

    from raiiaf_nodes.capture import CaptureStore
    from raiiaf_nodes.save import SaveContext, save_images

    ctx = SaveContext(output_dir=str(folders.output), temp_dir=str(folders.temp), node_id="9", prompt_id="p")
    return save_images(torch.rand(1, 8, 8, 3), prefix, ctx, store=CaptureStore(), environment=FIXED_ENV)


def test_a_link_planted_at_the_preview_path_is_replaced_not_written_through(folders):
    victim = folders.outside / "victim.txt"
    victim.write_bytes(b"precious")
    previews = folders.temp / "raiiaf_previews"
    previews.mkdir()
    os.symlink(victim, previews / "shot_00001_.raiiaf.png")
    [saved] = save_with_preview(folders)
    preview = folders.temp / saved.preview[0] / saved.preview[1]
    assert victim.read_bytes() == b"precious"
    assert not preview.is_symlink() and preview.read_bytes() == rc.open(saved.path).image_bytes()
    assert [p.name for p in previews.iterdir()] == ["shot_00001_.raiiaf.png"]  # no temporary left


def test_a_preview_folder_linking_out_of_the_temp_folder_gets_no_preview(folders, caplog):
    os.symlink(folders.outside, folders.temp / "raiiaf_previews")
    [saved] = save_with_preview(folders)
    assert saved.preview is None and "leads outside ComfyUI's temp folder" in caplog.text
    assert sorted(p.name for p in folders.outside.iterdir()) == ["secret.raiiaf"]
    rc.verify(saved.path)  # the file itself is saved
