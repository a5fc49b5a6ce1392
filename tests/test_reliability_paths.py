"""Paths beyond tests/test_core_naming.py: Windows separators, symlink chains and planted links, names the
filesystem refuses, and unicode names through the temporary-file cleanup."""

import os

import pytest

import raiiaf_core as rc
from raiiaf_core import atomic
from conftest import FIXED_ENV, png_bytes

DEAD_PID = 2**22 + 4321  # above Linux's pid_max, so never a live process


def save(output_dir, prefix, seed=0):
    return rc.write_numbered(output_dir, prefix, image=png_bytes(seed=seed), metadata={"seed": seed},
                             environment=FIXED_ENV)


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("prefix", ["..\\escape", "sub\\..\\..\\escape", "a/b/../../../escape", None, b"bytes",
                                    "nul\0byte", "   "])
def test_more_prefixes_are_refused(out, prefix):
    with pytest.raises(rc.WriteError):
        save(out, prefix)
    assert list(out.parent.rglob("*.raiiaf")) == []


def test_symlink_chains_and_dangling_links_leading_outside_are_refused(tmp_path, out):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, out / "hop2")
    os.symlink(out / "hop2", out / "hop1")  # out/hop1 -> out/hop2 -> ../outside
    os.symlink(tmp_path / "not-yet", out / "dangling")  # would be created outside by mkdir
    for prefix in ("hop1/img", "hop1/sub/img", "dangling/img"):
        with pytest.raises(rc.WriteError, match="outside the output folder"):
            save(out, prefix)
    assert list(outside.iterdir()) == [] and not (tmp_path / "not-yet").exists()


def test_links_that_stay_inside_are_followed(tmp_path):
    real = tmp_path / "real"
    (real / "deep").mkdir(parents=True)
    os.symlink(real, tmp_path / "output-link")  # ComfyUI's output folder is often a link to a bigger disk
    os.symlink(real / "deep", real / "shortcut")
    first = save(tmp_path / "output-link", "img")
    second = save(tmp_path / "output-link", "shortcut/img")
    assert first == real / "img_00001_.raiiaf" and second == real / "deep" / "img_00001_.raiiaf"
    rc.verify(first)
    rc.verify(second)


def test_a_planted_link_under_the_next_name_is_skipped_not_written_through(tmp_path, out):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.symlink(victim, out / "img_00001_.raiiaf")
    path = save(out, "img")
    assert path.name == "img_00002_.raiiaf"
    assert victim.read_bytes() == b"precious" and os.path.islink(out / "img_00001_.raiiaf")


def test_replacing_a_path_that_is_a_link_replaces_the_link_not_its_target(tmp_path, out):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.symlink(victim, out / "x.raiiaf")
    rc.write(out / "x.raiiaf", image=png_bytes(), environment=FIXED_ENV)
    assert victim.read_bytes() == b"precious"
    assert not os.path.islink(out / "x.raiiaf")
    rc.verify(out / "x.raiiaf")


def test_a_name_too_long_for_the_filesystem_is_a_write_error(out):
    with pytest.raises(rc.WriteError):
        save(out, "n" * 300)
    with pytest.raises(rc.WriteError):
        rc.write(out / ("n" * 300 + ".raiiaf"), image=png_bytes(), environment=FIXED_ENV)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["été 2026.v2 final", "e\u0301te\u0301 NFD", "猫 🐈", "-leading-dash", ".dotted.name"])
def test_unicode_and_odd_names_save_and_their_debris_is_cleaned(out, name):
    target = out / f"{name}.raiiaf"
    debris = out / f".{target.name}.{DEAD_PID}-0123abcd{atomic.TEMP_SUFFIX}"
    debris.write_bytes(b"partial")
    rc.write(target, image=png_bytes(), metadata={"prompt": name}, environment=FIXED_ENV)
    assert rc.verify(target).metadata["prompt"] == name
    numbered = save(out, f"sub dir/{name}")
    assert numbered.name == f"{name}_00001_.raiiaf"
    assert sorted(p.name for p in out.iterdir()) == sorted([target.name, "sub dir"])  # the debris is gone
