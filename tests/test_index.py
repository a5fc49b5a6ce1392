"""`raiiaf index` on a real folder: v2 files made with rc.write, the v1 fixtures, damaged files; updates; DuckDB."""

import copy
import hashlib
import importlib.util
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

import raiiaf_core as rc  # noqa: E402
from raiiaf_core.cli import main  # noqa: E402
from raiiaf_core.index import EXAMPLE_QUERIES, build_index, environment_key  # noqa: E402
from raiiaf_core.layout import FIRST_READ  # noqa: E402

from conftest import png_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
V1 = Path(__file__).parent / "data" / "v1"
HAVE_ZFPY = importlib.util.find_spec("zfpy") is not None
CHECKPOINT_SHA, LORA_A, LORA_B = "1" * 64, "a" * 64, "b" * 64

HERE = rc.capture_environment()
OTHER_PYTHON = copy.deepcopy(HERE) | {"python": {"version": "3.12.0", "implementation": "CPython"}}
ON_A_GPU = copy.deepcopy(HERE) | {"torch": {**HERE.get("torch", {}), "version": "2.5.1+cu124", "cuda": "12.4"},
                                  "gpu": [{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "driver": "550.54"}]}


def comfy_metadata(seed, sampler, prompt):
    return {
        "generator": {"name": "raiiaf_nodes", "version": "2.0.0"}, "prompt": prompt, "negative_prompt": "blurry",
        "seed": seed, "sampler": sampler, "scheduler": "karras", "steps": 20, "guidance_scale": 7.0, "width": 64,
        "height": 48, "batch": {"index": 1, "size": 2}, "tags": ["cat", "test"], "created": "2026-11-30T10:00:00Z",
        "noise": {"tensor": "noise", "source": "captured"},
        "model": {"name": "sd_xl_base_1.0.safetensors", "sha256": CHECKPOINT_SHA, "files": [
            {"role": "checkpoint", "name": "sd_xl_base_1.0.safetensors", "sha256": CHECKPOINT_SHA, "size": 10},
            {"role": "lora", "name": "detail.safetensors", "sha256": LORA_A, "size": 3},
            {"role": "vae", "name": "vae.safetensors", "sha256": "c" * 64, "size": 2},
            {"role": "lora", "name": "style.safetensors", "sha256": LORA_B, "size": 4}]},
    }


def write(path, metadata, environment, image=None, noise_size=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).standard_normal((1, 4, noise_size, noise_size)).astype(np.float32)
    return rc.write(path, image=image or png_bytes(), tensors={"noise": noise}, metadata=metadata,
                    environment=environment)


def header_index_sha256(path):
    """The index checksum computed from the bytes, not through the reader."""
    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 20)
    return hashlib.sha256(data[72:72 + length]).hexdigest()


@pytest.fixture
def archive(tmp_path):
    """A mixed folder: three v2 files (two ComfyUI-style, one diffusers-style deeper down), the v1 fixtures,
    five damaged files and two files that are not .raiiaf files."""
    root = tmp_path / "archive"
    write(root / "comfy_0.raiiaf", comfy_metadata(2**64 - 1, "euler_ancestral", "a cat"), HERE)
    write(root / "comfy_1.raiiaf", comfy_metadata(5, "dpmpp_2m", "a dog"), OTHER_PYTHON)
    write(root / "sub" / "deep" / "diffusers.raiiaf",
          {"prompt": "a fox", "seed": -3, "sampler": "EulerAncestralDiscreteScheduler", "steps": 4,
           "model": {"name": "hf-internal-testing/tiny-sd", "id": "hf-internal-testing/tiny-sd",
                     "revision": "abc123"}, "noise": {"tensor": "noise", "source": "reconstructed"}}, ON_A_GPU,
          image=png_bytes(24, 20))
    rc.write(root / "bare.raiiaf", metadata={"seed": 2**70}, environment={})  # no image, no tensors
    shutil.copytree(V1, root / "v1", ignore=shutil.ignore_patterns("*.py", "*.md"))
    good = (root / "comfy_0.raiiaf").read_bytes()
    damaged = root / "damaged"
    damaged.mkdir()
    (damaged / "truncated.raiiaf").write_bytes(good[:-10])
    flipped = bytearray(good)
    flipped[72 + struct.unpack_from("<Q", good, 20)[0] + 3] ^= 0xFF  # inside the metadata chunk
    (damaged / "flipped.raiiaf").write_bytes(bytes(flipped))
    (damaged / "a_png.raiiaf").write_bytes(png_bytes())
    (damaged / "empty.raiiaf").write_bytes(b"")
    (damaged / "future.raiiaf").write_bytes(b"raiiaf\x03\x00" + bytes(64))
    (root / "notes.txt").write_text("not indexed")
    return root


def rows_by_name(output):
    return {Path(r["path"]).name: r for r in pq.read_table(output).to_pylist()}


ZFP_ERROR = [] if HAVE_ZFPY else ["f32_zfp.raiiaf"]
ERRORS = {"truncated.raiiaf": ("CorruptFileError", "truncated"),
          "flipped.raiiaf": ("CorruptFileError", "metadata chunk is damaged (sha256 mismatch)"),
          "a_png.raiiaf": ("NoArtifactError", "not a .raiiaf file"),  # a PNG without a raiiaf chunk, named .raiiaf
          "empty.raiiaf": ("CorruptFileError", "not a .raiiaf file"),
          "future.raiiaf": ("UnsupportedVersionError", "newer than this reader"),
          **{name: ("MissingDependencyError", "zfpy") for name in ZFP_ERROR}}


def test_index_of_a_mixed_folder_has_one_right_row_per_file_and_lists_every_failure(archive, tmp_path):
    output = tmp_path / "index.parquet"
    report = build_index([archive], output)

    rows = rows_by_name(output)
    assert set(rows) == {"comfy_0.raiiaf", "comfy_1.raiiaf", "diffusers.raiiaf", "bare.raiiaf", "f16_raw.raiiaf",
                         "f32_raw.raiiaf", "f32_zfp.raiiaf", *ERRORS}
    assert (report.rows, report.read, report.kept, report.dropped) == (len(rows), len(rows), 0, 0)
    assert [Path(p).name for p, _, _ in report.errors] == sorted(ERRORS, key=lambda n: str(
        next(archive.rglob(n))))
    for name, (error_type, words) in ERRORS.items():
        row = rows[name]
        assert row["error_type"] == error_type and words in row["error"], row
        assert row["error"].startswith(str(archive / row["path"]))  # the reason names the file
        assert row["prompt"] is None and row["size"] == os.path.getsize(row["path"])
    assert all(r["error"] is None for n, r in rows.items() if n not in ERRORS)

    comfy = rows["comfy_0.raiiaf"]
    path = archive / "comfy_0.raiiaf"
    assert comfy["path"] == str(path)
    assert comfy["size"] == path.stat().st_size
    assert comfy["modified"].timestamp() == pytest.approx(path.stat().st_mtime, abs=1e-6)
    assert comfy["etag"] is None
    assert comfy["index_sha256"] == header_index_sha256(path)
    assert {k: comfy[k] for k in ("format_version", "prompt", "negative_prompt", "sampler", "scheduler", "steps",
                                   "cfg", "width", "height", "model_name", "model_sha256", "lora_names",
                                   "lora_sha256", "tags", "created", "batch_index", "batch_size", "noise_source",
                                   "generator", "torch_version", "cuda_version", "gpu")} == {
        "format_version": "2.0", "prompt": "a cat", "negative_prompt": "blurry", "sampler": "euler_ancestral",
        "scheduler": "karras", "steps": 20, "cfg": 7.0, "width": 64, "height": 48,
        "model_name": "sd_xl_base_1.0.safetensors", "model_sha256": CHECKPOINT_SHA,
        "lora_names": ["detail.safetensors", "style.safetensors"], "lora_sha256": [LORA_A, LORA_B],
        "tags": ["cat", "test"], "created": "2026-11-30T10:00:00Z", "batch_index": 1, "batch_size": 2,
        "noise_source": "captured", "generator": "raiiaf_nodes 2.0.0",
        "torch_version": HERE.get("torch", {}).get("version"), "cuda_version": HERE.get("torch", {}).get("cuda"),
        "gpu": [g["name"] for g in HERE.get("gpu", [])]}
    assert int(comfy["seed"]) == 2**64 - 1  # past int64: ComfyUI seeds go up to 2^64-1
    assert comfy["environment_key"] == environment_key(HERE)

    diffusers = rows["diffusers.raiiaf"]
    assert (int(diffusers["seed"]), diffusers["model_name"], diffusers["model_revision"], diffusers["model_sha256"],
            diffusers["noise_source"]) == (-3, "hf-internal-testing/tiny-sd", "abc123", None, "reconstructed")
    assert (diffusers["width"], diffusers["height"]) == (24, 20)  # from the image entry of the file's index
    assert (diffusers["torch_version"], diffusers["cuda_version"], diffusers["gpu"]) == (
        "2.5.1+cu124", "12.4", ["NVIDIA H100 80GB HBM3"])
    assert "NVIDIA H100" in diffusers["environment_headline"]

    bare = rows["bare.raiiaf"]
    assert bare["seed"] is None  # 2^70: no torch generator takes it
    assert all(bare[k] is None for k in ("prompt", "sampler", "width", "model_name", "torch_version", "created"))
    assert (bare["tags"], bare["lora_sha256"], bare["gpu"]) == ([], [], [])
    assert (bare["environment_headline"], bare["environment_key"]) == ("not recorded", environment_key({}))

    for name, prompt, seed, sampler in (("f32_raw.raiiaf", "a red fox in the snow", 1234, "ddim"),
                                        ("f16_raw.raiiaf", "a lighthouse at dusk", 0, "euler_a")):
        v1 = rows[name]
        assert (v1["format_version"], v1["index_sha256"], v1["prompt"], int(v1["seed"]), v1["sampler"],
                v1["model_name"], v1["tags"]) == ("1.0", None, prompt, seed, sampler, "stable-diffusion-v1-5",
                                                  ["fixture", "v1"])


def test_index_reads_only_header_index_and_metadata(tmp_path):
    """Bytes read by the whole process while indexing files of 5 MB each (Linux /proc/self/io)."""
    if not os.path.exists("/proc/self/io"):
        pytest.skip("needs /proc/self/io")
    rng = np.random.default_rng(0)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(buffer, format="PNG")
    big = tmp_path / "big"
    for i in range(3):
        write(big / f"{i}.raiiaf", comfy_metadata(i, "euler", "big"), HERE, image=buffer.getvalue(), noise_size=512)
    total = sum(p.stat().st_size for p in big.iterdir())
    assert total > 3 * 5_000_000
    write(tmp_path / "warm" / "w.raiiaf", comfy_metadata(0, "euler", "warm-up"), HERE)
    build_index([tmp_path / "warm"], tmp_path / "warm.parquet")  # imports and first-use costs happen here

    def rchar():
        with open("/proc/self/io", "rb") as f:
            return int(next(line for line in f if line.startswith(b"rchar:")).split()[1])

    before = rchar()
    report = build_index([big], tmp_path / "big.parquet", workers=2)
    read = rchar() - before
    assert report.read == 3 and not report.errors
    # One first read per file (header, index, metadata, environment); the rest is reading /proc/self/io itself.
    assert read <= 3 * FIRST_READ + 4096, f"read {read:,} bytes of {total:,}"


def test_rerun_reads_only_what_changed(archive, tmp_path):
    output = tmp_path / "index.parquet"
    build_index([archive], output)
    first = rows_by_name(output)

    write(archive / "comfy_1.raiiaf", comfy_metadata(6, "dpmpp_2m", "a dog, changed"), OTHER_PYTHON)
    write(archive / "sub" / "new.raiiaf", comfy_metadata(7, "euler", "new"), HERE)
    (archive / "sub" / "deep" / "diffusers.raiiaf").unlink()
    # Same size and modification time: the index takes the file as unchanged and must not read it, so garbage
    # of the same length under the old mtime shows whether it was read.
    path = archive / "comfy_0.raiiaf"
    st = path.stat()
    path.write_bytes(b"x" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    report = build_index([archive], output)
    rows = rows_by_name(output)
    # Read again: the changed and the new file, and the failures that may pass (a newer raiiaf, zfpy installed).
    retried = {"future.raiiaf", *ZFP_ERROR}
    assert report.read == 2 + len(retried)
    assert report.dropped == 1 and report.kept == len(first) - 1 - 1 - len(retried)
    assert "diffusers.raiiaf" not in rows and rows["new.raiiaf"]["prompt"] == "new"
    assert rows["comfy_1.raiiaf"]["prompt"] == "a dog, changed" and int(rows["comfy_1.raiiaf"]["seed"]) == 6
    assert rows["comfy_0.raiiaf"] == first["comfy_0.raiiaf"]
    for name in ("truncated.raiiaf", "flipped.raiiaf", "f32_raw.raiiaf"):
        assert rows[name] == first[name]

    before = output.read_bytes()
    again = build_index([archive], output)
    assert (again.read, again.dropped, again.kept) == (len(retried), 0, len(rows) - len(retried))
    assert output.read_bytes() == before  # nothing changed: the same index, byte for byte


def test_example_queries_of_the_readme_answer_right(archive, tmp_path):
    output = tmp_path / "index.parquet"
    build_index([archive], output)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    def run(name, **params):
        assert EXAMPLE_QUERIES[name] in readme, f"README.md does not show the query {name!r} as run here"
        return [Path(r[0]).name for r in duckdb.execute(EXAMPLE_QUERIES[name], {"index": str(output), **params})
                .fetchall()]

    assert run("model_and_sampler", model_sha256=CHECKPOINT_SHA, sampler="euler_ancestral") == ["comfy_0.raiiaf"]
    assert run("model_and_sampler", model_sha256=CHECKPOINT_SHA, sampler="ddim") == []
    # Differs in a way that can change pixels: the GPU file, the file that records no environment and the v1
    # files (their environment is not in schema 1, so nothing is known to match). Another Python does not count.
    assert run("environment_differs", environment_key=environment_key()) == [
        "bare.raiiaf", "diffusers.raiiaf", "f16_raw.raiiaf", "f32_raw.raiiaf", *(["f32_zfp.raiiaf"] if HAVE_ZFPY else [])]
    assert run("with_lora", lora_sha256=LORA_B) == ["comfy_0.raiiaf", "comfy_1.raiiaf"]
    assert run("with_lora", lora_sha256="f" * 64) == []
    assert sorted(run("unreadable")) == sorted(ERRORS)
    assert set(EXAMPLE_QUERIES) == {"model_and_sampler", "environment_differs", "with_lora", "unreadable"}


@pytest.mark.parametrize("change, can_change_pixels", [
    (lambda env: env["torch"].update(version="2.4.0"), True),
    (lambda env: env.update(gpu=[{"name": "NVIDIA A100-SXM4-40GB"}]), True),
    (lambda env: env["env_vars"].update(CUBLAS_WORKSPACE_CONFIG=":4096:8"), True),
    (lambda env: env["python"].update(version="3.9.0"), False),
    (lambda env: env["cpu"].update(count=64), False),
])
def test_environment_key_differs_exactly_when_drift_says_pixels_can_change(change, can_change_pixels):
    here = rc.capture_environment()
    if "torch" not in here:
        pytest.skip("needs torch in the environment")
    other = copy.deepcopy(here)
    change(other)
    assert rc.drift(other, here).can_change_output is can_change_pixels
    assert (environment_key(other) != environment_key(here)) is can_change_pixels
    assert environment_key() == environment_key(here)


def test_command_line(archive, tmp_path, capsys):
    output = tmp_path / "index.parquet"
    assert main(["index", str(archive), "-o", str(output)]) == 1  # some files could not be read
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{output}: {len(rows_by_name(output))} files")
    assert sorted(Path(line.split(":")[0].removeprefix("FAIL  ")).name for line in out[1:]) == sorted(ERRORS)
    assert main(["index", str(archive / "comfy_0.raiiaf"), "-o", str(tmp_path / "one.parquet")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'one.parquet'}: 1 files (1 read, 0 unchanged, 0 dropped); " \
                                      "0 could not be read\n"
    assert main(["index", "--environment-key"]) == 0
    assert capsys.readouterr().out == environment_key() + "\n"
    assert main(["index", str(archive)]) == 2
    assert "-o INDEX.parquet" in capsys.readouterr().err


def test_progress_bar_only_when_asked_or_on_a_terminal(archive, tmp_path, capsys):
    build_index([archive], tmp_path / "a.parquet", progress=True)
    assert "files read (100%)" in capsys.readouterr().err
    build_index([archive], tmp_path / "b.parquet")  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_refuses_to_replace_what_is_not_its_index_and_keeps_the_index_when_a_source_is_missing(archive, tmp_path):
    other = tmp_path / "notes.parquet"
    other.write_text("my notes")
    with pytest.raises(rc.RaiiafError, match="not a readable Parquet file"):
        build_index([archive], other)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    with pytest.raises(rc.RaiiafError, match="not a raiiaf index"):
        build_index([archive], foreign)
    assert other.read_text() == "my notes" and pq.read_table(foreign).to_pylist() == [{"x": 1}]

    output = tmp_path / "index.parquet"
    build_index([archive], output)
    before = output.read_bytes()
    with pytest.raises(rc.ReadError, match="gone"):  # indexing without it would drop every row it had
        build_index([archive, tmp_path / "gone"], output)
    assert output.read_bytes() == before


def test_every_damaged_variant_becomes_a_row_with_the_projects_own_error(archive, tmp_path):
    """Bit flips and truncations anywhere in the header, index, metadata and environment of a real file."""
    good = (archive / "comfy_0.raiiaf").read_bytes()
    head = max(c.offset + c.length for c in rc.open(archive / "comfy_0.raiiaf").chunks
               if c.type in ("metadata", "environment"))  # every byte the index reads
    rng = np.random.default_rng(13)
    folder = tmp_path / "mutants"
    folder.mkdir()
    for i in range(120):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[:int(rng.integers(0, head))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, head))] ^= 1 << int(rng.integers(0, 8))
        (folder / f"{i:03d}.raiiaf").write_bytes(bytes(data))
    report = build_index([folder], tmp_path / "mutants.parquet", workers=4)
    rows = pq.read_table(tmp_path / "mutants.parquet").to_pylist()
    assert len(rows) == report.rows == 120
    own = {cls.__name__ for cls in (rc.RaiiafError, rc.CorruptFileError, rc.LimitExceededError,
                                    rc.UnsupportedVersionError, rc.ReadError)}
    assert {r["error_type"] for r in rows} <= own | {None}
    assert len(report.errors) == 120  # every byte read is under a checksum: no flip goes unnoticed


def test_failures_are_printed_with_terminal_controls_escaped(tmp_path, capsys):
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "clear\x1b[2J\u202e.raiiaf").write_bytes(b"raiiaf\x02\x00garbage")
    assert main(["index", str(folder), "-o", str(tmp_path / "i.parquet")]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "clear\\x1b[2J\\u202e.raiiaf" in out
    [row] = pq.read_table(tmp_path / "i.parquet").to_pylist()
    assert row["path"].endswith("clear\x1b[2J\u202e.raiiaf")  # the index keeps the real name


def test_exported_pngs_are_indexed_like_their_raiiaf_and_images_are_left_out(tmp_path):
    folder = tmp_path / "shared"
    made = write(folder / "comfy.raiiaf", comfy_metadata(5, "dpmpp_2m", "a dog"), HERE)
    rc.export_png(made)
    (folder / "photo.png").write_bytes(png_bytes())
    output = tmp_path / "index.parquet"
    report = build_index([folder], output)
    rows = rows_by_name(output)
    assert set(rows) == {"comfy.raiiaf", "comfy.png"} and report.images == 1 and report.errors == []
    assert "1 PNG images hold no .raiiaf (not indexed)" in report.format()
    file_columns = ("path", "size", "modified", "etag")
    assert {k: v for k, v in rows["comfy.png"].items() if k not in file_columns} == \
        {k: v for k, v in rows["comfy.raiiaf"].items() if k not in file_columns}
    # Named on the command line, an image is a row that says what it is.
    build_index([folder / "photo.png"], tmp_path / "one.parquet")
    (row,) = pq.read_table(tmp_path / "one.parquet").to_pylist()
    assert row["error_type"] == "NoArtifactError" and "not made by `raiiaf export`" in row["error"]
