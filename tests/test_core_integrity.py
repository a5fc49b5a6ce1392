"""Damaged files, interrupted writes and bad input end in raiiaf's own errors, never in wrong data."""

import errno
import os

import numpy as np
import pytest

import raiiaf_core as rc
from raiiaf_core import atomic, writer
from conftest import FIXED_ENV, png_bytes


def read_everything(path):
    art = rc.open(path)
    art.verify()
    return art.metadata, art.environment, art.image_bytes(), art.load_tensors()


def assert_rejected(path, data: bytes):
    path.write_bytes(data)
    with pytest.raises(rc.RaiiafError) as info:
        read_everything(path)
    assert str(path) in str(info.value)
    return info.value


def test_every_single_byte_flip_is_rejected(small_file, tmp_path):
    original = small_file.read_bytes()
    target = tmp_path / "flipped.raiiaf"
    for offset in range(len(original)):
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(original)
            data[offset] ^= mask
            assert_rejected(target, bytes(data))


def test_every_truncation_is_rejected(small_file, tmp_path):
    original = small_file.read_bytes()
    target = tmp_path / "cut.raiiaf"
    for length in range(len(original)):
        error = assert_rejected(target, original[:length])
        assert isinstance(error, rc.CorruptFileError)


def test_trailing_bytes_are_rejected(small_file, tmp_path):
    assert_rejected(tmp_path / "long.raiiaf", small_file.read_bytes() + b"\0")


def test_damage_names_the_part(small_file):
    art = rc.open(small_file)
    chunk = next(c for c in art.chunks if c.type == "tensor" and c.name == "sigmas")
    data = bytearray(small_file.read_bytes())
    data[chunk.offset + chunk.length - 1] ^= 0x10
    small_file.write_bytes(bytes(data))
    art = rc.open(small_file)
    assert art.metadata["seed"] == 7  # undamaged parts stay readable
    with pytest.raises(rc.CorruptFileError, match="tensor chunk 'sigmas' is damaged"):
        art.load_tensor("sigmas")


def test_not_a_raiiaf_file(tmp_path):
    path = tmp_path / "photo.raiiaf"
    path.write_bytes(png_bytes())
    with pytest.raises(rc.CorruptFileError, match="not a .raiiaf file"):
        rc.open(path)


def test_missing_file_is_a_read_error(tmp_path):
    with pytest.raises(rc.ReadError, match="nope.raiiaf"):
        rc.open(tmp_path / "nope.raiiaf")


def test_json_nesting_bomb_is_refused(tmp_path):
    deep = current = {}
    for _ in range(300):
        current["x"] = {}
        current = current["x"]
    path = tmp_path / "deep.raiiaf"
    atomic.write_atomic(path, writer.build(None, {}, {"extra": deep}, FIXED_ENV))
    with pytest.raises(rc.LimitExceededError, match="max_json_depth"):
        rc.open(path).metadata
    assert rc.open(path, limits=rc.Limits(max_json_depth=400)).metadata["extra"]["x"]


def test_an_interrupted_write_leaves_the_previous_file_intact(small_file, monkeypatch):
    before = small_file.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(rc.WriteError, match="No space left on device"):
        rc.write(small_file, image=png_bytes(seed=9), environment=FIXED_ENV)
    monkeypatch.undo()
    assert small_file.read_bytes() == before
    assert sorted(p.name for p in small_file.parent.iterdir()) == [small_file.name]


def test_a_failure_while_building_touches_nothing(small_file):
    before = small_file.read_bytes()
    with pytest.raises(rc.TensorError, match="'bad'"):
        rc.write(small_file, tensors={"bad": [1, 2, 3]}, environment=FIXED_ENV)
    assert small_file.read_bytes() == before


def test_exclusive_write_never_replaces(small_file):
    before = small_file.read_bytes()
    with pytest.raises(rc.TargetExistsError, match="already exists"):
        rc.write(small_file, image=png_bytes(seed=2), environment=FIXED_ENV, exclusive=True)
    assert small_file.read_bytes() == before
    assert len(list(small_file.parent.iterdir())) == 1


def test_missing_folder_is_a_write_error(tmp_path):
    with pytest.raises(rc.WriteError, match="does not exist"):
        rc.write(tmp_path / "no" / "x.raiiaf", image=png_bytes(), environment=FIXED_ENV)


def test_temporaries_of_crashed_writers_are_cleaned_by_the_next_save(tmp_path):
    dead_pid = 2**22 + 12345  # above pid_max on Linux, so never a live process
    debris = tmp_path / f".img.raiiaf.{dead_pid}-abcd1234{atomic.TEMP_SUFFIX}"
    debris.write_bytes(b"partial")
    live = tmp_path / f".img.raiiaf.{os.getpid()}-abcd1234{atomic.TEMP_SUFFIX}"
    live.write_bytes(b"in progress")
    rc.write(tmp_path / "img.raiiaf", image=png_bytes(), environment=FIXED_ENV)
    assert not debris.exists()
    assert live.exists()


@pytest.mark.parametrize("metadata, field", [
    ({"seed": "42"}, "'seed'"),
    ({"steps": 2.5}, "'steps'"),
    ({"seeed": 1}, "'seeed' is not in schema"),
    ({"guidance_scale": float("nan")}, "'guidance_scale'"),
    ({"batch": {"index": 0}}, "'batch.size' is required"),
    ({"noise": {"tensor": "missing", "source": "captured"}}, "'noise.tensor'"),
    ({"noise": {"tensor": "noise", "source": "guessed"}}, "'noise.source'"),
    ({"host": {"comfyui": {"prompt": {"3": {"inputs": {"cfg": float("inf")}}}}}}, "'host.comfyui.prompt.3.inputs.cfg'"),
    ({"extra": {"when": object()}}, "'extra.when'"),
    ({"tags": ["ok", 3]}, "'tags'"),
    ({"schema_version": 2}, "'schema_version'"),
])
def test_metadata_breaking_the_schema_is_refused_naming_the_field(tmp_path, metadata, field):
    with pytest.raises(rc.MetadataError) as info:
        rc.write(tmp_path / "m.raiiaf", tensors={"noise": np.zeros(2, np.float32)}, metadata=metadata,
                 environment=FIXED_ENV)
    assert field in str(info.value)
    assert not list(tmp_path.iterdir())


def test_the_library_prints_nothing(tmp_path, capsys):
    path = rc.write(tmp_path / "q.raiiaf", image=png_bytes(), tensors={"n": np.zeros(3, np.float32)},
                    metadata={"prompt": "quiet"})
    read_everything(path)
    rc.drift(rc.open(path).environment)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_drift_says_what_can_change_the_output():
    stored = rc.capture_environment()
    current = {**stored, "torch": {**stored.get("torch", {}), "version": "9.9.9"},
               "os": {**stored["os"], "release": "0.0-other"}}
    report = rc.drift(stored, current)
    impacts = {d.key: d.impact for d in report.differences}
    assert impacts == {"torch.version": "yes", "os.release": "unlikely"}
    assert report.can_change_output
    assert "torch.version" in str(report)
    assert rc.drift(stored, stored).differences == ()


def test_drift_flags_determinism_switches_and_gpus():
    stored = {"determinism": {"matmul_allow_tf32": False}, "gpu": [], "env_vars": {"CUBLAS_WORKSPACE_CONFIG": None}}
    current = {"determinism": {"matmul_allow_tf32": True}, "gpu": [{"name": "NVIDIA H100"}],
               "env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}
    report = rc.drift(stored, current)
    assert {d.key for d in report.differences if d.impact == "yes"} == {
        "determinism.matmul_allow_tf32", "gpu", "gpu[0].name", "env_vars.CUBLAS_WORKSPACE_CONFIG"}
