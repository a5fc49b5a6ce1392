"""File names: SaveImage-style prefixes on the save node (numbering, tokens, refusals) and LoadImage-style
annotated names on the replay nodes."""

import time

import pytest
import torch

import raiiaf_core as rc
from raiiaf_core.errors import RaiiafError
from raiiaf_nodes.capture import CaptureStore
from raiiaf_nodes.errors import UnsafePathError
from raiiaf_nodes.paths import expand_prefix, list_raiiaf_files, resolve_annotated
from raiiaf_nodes.save import SaveContext, save_images

ENV = {"schema_version": 1}


def save(tmp_path, prefix, batch=1):
    ctx = SaveContext(output_dir=str(tmp_path / "output"), node_id="9", prompt_id="p")
    return save_images(torch.rand(batch, 8, 8, 3), prefix, ctx, store=CaptureStore(), environment=ENV)


def test_names_count_up_like_save_image(tmp_path):
    folder = tmp_path / "output" / "raiiaf" / "day"
    folder.mkdir(parents=True)
    for name in ("fox_00001_.raiiaf", "fox_00007_.raiiaf", "foxes_00050_.raiiaf", "other.txt"):
        (folder / name).write_bytes(b"")
    saved = save(tmp_path, "raiiaf/day/fox", batch=2)
    assert [(s.subfolder, s.filename) for s in saved] == [("raiiaf/day", "fox_00008_.raiiaf"),
                                                         ("raiiaf/day", "fox_00009_.raiiaf")]
    assert all(rc.open(s.path).metadata["batch"]["size"] == 2 for s in saved)
    assert [s.filename for s in save(tmp_path, "top")] == ["top_00001_.raiiaf"]
    assert save(tmp_path, "top")[0].subfolder == ""


def test_tokens_are_expanded():
    now = time.struct_time((2024, 3, 5, 7, 8, 9, 0, 65, 0))
    assert expand_prefix("%year%-%month%-%day%/%hour%%minute%%second%_%width%x%height%_%batch_num%", 640, 480,
                         now) == "2024-03-05/070809_640x480_%batch_num%"


def test_batch_number_token(tmp_path):
    saved = save(tmp_path, "b/img_%batch_num%", batch=2)
    assert [s.filename for s in saved] == ["img_0_00001_.raiiaf", "img_1_00001_.raiiaf"]


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/etc/escape", "sub/..", "..", "", "dir/"])
def test_prefixes_escaping_the_output_folder_are_refused(tmp_path, prefix):
    (tmp_path / "output").mkdir()
    with pytest.raises(RaiiafError):
        save(tmp_path, prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]  # nothing created outside
    assert list((tmp_path / "output").iterdir()) == []


def test_symlinked_folder_leading_out_is_refused(tmp_path):
    (tmp_path / "output").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "output" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(RaiiafError):
        save(tmp_path, "link/x")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_annotated_names(tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    assert resolve_annotated("a.raiiaf", inp, out) == inp / "a.raiiaf"
    assert resolve_annotated("a.raiiaf [input]", inp, out) == inp / "a.raiiaf"
    assert resolve_annotated("sub/a.raiiaf [output]", inp, out) == out / "sub" / "a.raiiaf"


@pytest.mark.parametrize("name", ["../secret.raiiaf", "/etc/passwd", "sub/../../x [output]", " [output]"])
def test_annotated_names_escaping_are_refused(tmp_path, name):
    with pytest.raises(UnsafePathError) as info:
        resolve_annotated(name, tmp_path / "input", tmp_path / "output")
    assert isinstance(info.value, RaiiafError)


def test_listing_marks_output_files(tmp_path):
    inp, out = tmp_path / "input", tmp_path / "output"
    (inp / "up").mkdir(parents=True)
    (out / "raiiaf").mkdir(parents=True)
    for path in (inp / "b.raiiaf", inp / "up" / "a.raiiaf", inp / "c.png", out / "raiiaf" / "x_00001_.raiiaf"):
        path.write_bytes(b"")
    assert list_raiiaf_files(inp, out) == ["b.raiiaf", "up/a.raiiaf", "raiiaf/x_00001_.raiiaf [output]"]
    assert list_raiiaf_files(tmp_path / "missing", out) == ["raiiaf/x_00001_.raiiaf [output]"]
