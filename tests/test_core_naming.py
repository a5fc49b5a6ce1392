"""Numbered saves: ComfyUI-style names, never an overwrite, never a path outside the output folder."""

import os
import threading

import pytest

import raiiaf_core as rc
from conftest import FIXED_ENV, png_bytes


def save(output_dir, prefix, seed=0):
    return rc.write_numbered(output_dir, prefix, image=png_bytes(seed=seed), metadata={"seed": seed},
                             environment=FIXED_ENV)


def test_names_count_up_like_saveimage(tmp_path):
    assert save(tmp_path, "ComfyUI").name == "ComfyUI_00001_.raiiaf"
    assert save(tmp_path, "ComfyUI").name == "ComfyUI_00002_.raiiaf"
    (tmp_path / "ComfyUI_00041_.raiiaf").write_bytes(b"someone else's")
    assert save(tmp_path, "ComfyUI").name == "ComfyUI_00042_.raiiaf"
    assert (tmp_path / "ComfyUI_00041_.raiiaf").read_bytes() == b"someone else's"


def test_subfolders_unicode_and_spaces(tmp_path):
    path = save(tmp_path, "portraits/été 2026/chat noir")
    assert path == tmp_path / "portraits" / "été 2026" / "chat noir_00001_.raiiaf"
    assert rc.open(path).metadata["seed"] == 0


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/etc/raiiaf", "..", "sub/", ""])
def test_prefixes_leaving_the_folder_are_refused(tmp_path, prefix):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(rc.WriteError):
        save(out, prefix)
    assert list(tmp_path.rglob("*.raiiaf")) == []


def test_symlinked_folder_pointing_outside_is_refused(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "link")
    with pytest.raises(rc.WriteError, match="outside the output folder"):
        save(out, "link/img")
    assert list(outside.iterdir()) == []


def test_concurrent_threads_never_overwrite_each_other(tmp_path):
    paths, errors = [], []

    def worker(k):
        try:
            for i in range(10):
                paths.append(save(tmp_path, "batch", seed=k * 100 + i))
        except Exception as exc:  # collected so the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(paths)) == 80
    seeds = {rc.verify(p).metadata["seed"] for p in paths}
    assert seeds == {k * 100 + i for k in range(8) for i in range(10)}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".raiiaf-tmp")]
