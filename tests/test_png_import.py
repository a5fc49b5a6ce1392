"""`raiiaf import` (raiiaf_core/png_import.py, raiiaf_nodes/from_saveimage.py) on real PNGs: ComfyUI's SaveImage
PNGs get the run Raiiaf Save writes for rebuilt noise, A1111/Forge PNGs their settings, exported PNGs their
.raiiaf back; the PNG bytes are stored unchanged; anything else is reported and skipped."""

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import raiiaf_core as rc
from raiiaf_core.cli import main
from raiiaf_nodes.capture import CaptureStore
from raiiaf_nodes.errors import NodeInputError
from raiiaf_nodes.noise import reconstruct_noise
from raiiaf_nodes.replay import load_run
from raiiaf_nodes.save import SaveContext, image_to_png, save_images
from conftest import FIXED_ENV, png_bytes

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
A1111 = ("a castle on a hill\nNegative prompt: lowres\nSteps: 28, Sampler: DPM++ 2M, Schedule type: Karras, "
         "CFG scale: 6.5, Seed: 123456, Size: 16x16, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
         "Version: v1.10.1")


def saveimage_graph() -> dict:
    """The shipped capture graph without the capture node, saved by SaveImage: what a plain ComfyUI runs."""
    graph = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    del graph["10"]
    graph["3"]["inputs"]["model"] = ["4", 0]
    graph["5"]["inputs"].update(width=24, height=16)
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}
    return graph


WORKFLOW = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
PIXELS = torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(3))


def saveimage_png(path: Path, graph: dict | None = None) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: the pixels, then tEXt prompt and workflow (json.dumps of each)."""
    data = image_to_png(PIXELS, {"prompt": json.dumps(graph or saveimage_graph()), "workflow": json.dumps(WORKFLOW)})
    path.write_bytes(data)
    return data


def a1111_png(path: Path) -> bytes:
    info = PngInfo()
    info.add_text("parameters", A1111)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes())).save(buffer, format="PNG", pnginfo=info)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_a_saveimage_png_gets_the_run_raiiaf_save_writes_for_rebuilt_noise(tmp_path):
    data = saveimage_png(tmp_path / "ComfyUI_00001_.png")
    result = rc.import_png(tmp_path / "ComfyUI_00001_.png", tmp_path / "imported.raiiaf")
    assert result.kind == "comfyui" and "noise rebuilt from seed 42 and latent size [1, 4, 2, 3]" in result.message
    level = torch.backends.cpu.get_cpu_capability()
    assert f"drawn at this machine's CPU kernel level, {level}: SaveImage does not record the machine" in result.message
    art = rc.open(tmp_path / "imported.raiiaf")
    art.verify()
    assert art.image_bytes() == data  # the PNG as it was, not re-encoded

    # The same graph saved by Raiiaf Save without a capture node (outside ComfyUI: the same noise maker).
    graph = saveimage_graph()
    graph["9"] = {"class_type": "RaiiafSave", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}
    ctx = SaveContext(output_dir=str(tmp_path / "out"), prompt=graph, extra_pnginfo={"workflow": WORKFLOW},
                      node_id="9", prompt_id="p")
    (saved,) = save_images(PIXELS[None], "x", ctx, store=CaptureStore(), environment=FIXED_ENV)
    by_save = rc.open(saved.path)
    assert art.metadata["runs"] == by_save.metadata["runs"]
    for key in ("noise", "seed", "prompt", "negative_prompt", "sampler", "scheduler", "steps", "guidance_scale",
                "strength", "width", "height", "batch", "model"):
        assert art.metadata[key] == by_save.metadata[key], key
    assert art.metadata["runs"][0]["source"] == "reconstructed" and art.metadata["noise"]["source"] == "reconstructed"
    assert torch.equal(art.load_tensor("run0.noise", "torch"), by_save.load_tensor("run0.noise", "torch"))
    assert torch.equal(art.load_tensor("run0.noise", "torch"), reconstruct_noise([1, 4, 2, 3], 42))
    assert art.metadata["host"]["comfyui"] == {"prompt": saveimage_graph(), "workflow": WORKFLOW}
    assert art.metadata["generator"] == {"name": "raiiaf import", "version": rc.__version__}
    assert art.metadata["extra"]["import"] == {"from": "comfyui", "file": "ComfyUI_00001_.png",
                                               "noise": result.message.removeprefix("noise ")}
    assert art.environment == {}  # the PNG does not say what machine made it
    # Raiiaf Load Replay reads it: the rebuilt noise, the seed, and the KSampler settings its sigmas come from.
    run = load_run(art, 0)
    assert torch.equal(run.noise, reconstruct_noise([1, 4, 2, 3], 42)) and run.seed == 42
    assert (run.record.class_type, run.sampler_name, run.record.scheduler, run.steps) == (
        "KSampler", "euler_ancestral", "karras", 20)
    # Importing again gives the same bytes.
    rc.import_png(tmp_path / "ComfyUI_00001_.png", tmp_path / "again.raiiaf")
    assert (tmp_path / "again.raiiaf").read_bytes() == (tmp_path / "imported.raiiaf").read_bytes()


def test_ksampler_advanced_and_a_batch(tmp_path):
    graph = saveimage_graph()
    inputs = graph["3"]["inputs"]
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **{k: inputs[k] for k in ("model", "positive", "negative", "latent_image", "steps", "cfg", "sampler_name",
                                  "scheduler")},
        "add_noise": "enable", "noise_seed": 9, "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    graph["5"]["inputs"]["batch_size"] = 2
    saveimage_png(tmp_path / "adv.png", graph)
    result = rc.import_png(tmp_path / "adv.png", tmp_path / "adv.raiiaf")
    assert "one image of a batch of 2" in result.message
    art = rc.open(tmp_path / "adv.raiiaf")
    assert torch.equal(art.load_tensor("run0.noise", "torch"), reconstruct_noise([2, 4, 2, 3], 9))
    assert art.metadata["runs"][0]["class_type"] == "KSamplerAdvanced" and "batch" not in art.metadata


def test_a_graph_whose_noise_cannot_be_rebuilt_keeps_its_settings_and_says_why(tmp_path):
    graph = saveimage_graph()
    graph["3"]["inputs"]["seed"] = ["50", 0]
    graph["50"] = {"class_type": "SeedFromSomewhere", "inputs": {"a": 1, "b": 2}}
    saveimage_png(tmp_path / "linked.png", graph)
    result = rc.import_png(tmp_path / "linked.png", tmp_path / "linked.raiiaf")
    assert result.kind == "comfyui" and "noise not rebuilt: cannot rebuild the noise of sampler node 3" in result.message
    art = rc.open(tmp_path / "linked.raiiaf")
    assert art.tensor_names == [] and "noise" not in art.metadata and art.metadata["seed"] is None
    assert art.metadata["sampler"] == "euler_ancestral" and art.metadata["steps"] == 20
    assert art.metadata["runs"][0]["source"] == "failed"
    with pytest.raises(NodeInputError, match="was not captured when the file was saved .*the noise was not rebuilt"):
        load_run(art, 0)


def test_without_torch_the_settings_are_imported_and_the_file_says_why_there_is_no_noise(tmp_path):
    saveimage_png(tmp_path / "c.png")
    a1111_png(tmp_path / "a.png")
    # A Python in which torch cannot be imported, as on a machine without it.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from raiiaf_core.cli import main\n"
            f"code = main(['import', {str(tmp_path)!r}, '-o', {str(tmp_path / 'out')!r}])\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "c.png -> " in done.stdout and "torch is not installed" in done.stdout
    art = rc.open(tmp_path / "out" / "c.raiiaf")
    assert art.tensor_names == [] and art.metadata["seed"] == 42 and art.metadata["prompt"].startswith("a watercolor")
    assert "torch is not installed" in art.metadata["extra"]["import"]["noise"]
    assert "torch is not installed" in art.metadata["runs"][0]["error"]
    assert rc.open(tmp_path / "out" / "a.raiiaf").metadata["seed"] == 123456


def test_an_a1111_png_gets_its_settings_and_no_noise(tmp_path):
    data = a1111_png(tmp_path / "00001-123456.png")
    result = rc.import_png(tmp_path / "00001-123456.png", tmp_path / "a.raiiaf")
    assert result.kind == "a1111"
    art = rc.open(tmp_path / "a.raiiaf")
    art.verify()
    meta = art.metadata
    assert art.image_bytes() == data and art.tensor_names == []
    assert {k: meta[k] for k in ("prompt", "negative_prompt", "steps", "sampler", "scheduler", "guidance_scale",
                                 "seed", "width", "height", "model")} == {
        "prompt": "a castle on a hill", "negative_prompt": "lowres", "steps": 28, "sampler": "DPM++ 2M",
        "scheduler": "Karras", "guidance_scale": 6.5, "seed": 123456, "width": 16, "height": 16,
        "model": {"name": "v1-5-pruned-emaonly"}}
    assert meta["host"]["a1111"]["parameters"] == A1111
    assert meta["host"]["a1111"]["settings"]["Model hash"] == "6ce0161689"
    assert meta["extra"]["import"]["noise"].startswith("none: an A1111/Forge PNG records the seed, not the noise")
    assert "noise" not in meta and "runs" not in meta
    with pytest.raises(NodeInputError, match="holds no sampling run"):
        load_run(art, 0)
    # Exported again, the PNG keeps its own parameters chunk, not a second one.
    exported = rc.export_png(tmp_path / "a.raiiaf")
    with Image.open(exported) as im:
        assert im.text == {"parameters": A1111}


def test_anything_else_is_skipped_with_the_reason(tmp_path):
    (tmp_path / "photo.png").write_bytes(png_bytes())
    (tmp_path / "notes.png").write_bytes(b"not a png at all")
    with pytest.raises(rc.NoArtifactError, match="holds no generation metadata"):
        rc.import_png(tmp_path / "photo.png", tmp_path / "p.raiiaf")
    with pytest.raises(rc.NoArtifactError, match="not a PNG file"):
        rc.import_png(tmp_path / "notes.png", tmp_path / "n.raiiaf")
    assert not (tmp_path / "p.raiiaf").exists() and not (tmp_path / "n.raiiaf").exists()


def test_a_folder_import_shows_progress_and_counts_each_kind(tmp_path, capsys):
    source = tmp_path / "library"
    (source / "comfy" / "day1").mkdir(parents=True)
    saveimage_png(source / "comfy" / "day1" / "ComfyUI_00001_.png")
    saveimage_png(source / "comfy" / "ComfyUI_00002_.png")
    a1111_png(source / "a1111.png")
    (source / "photo.PNG").write_bytes(png_bytes())
    (source / "readme.txt").write_text("not a png")
    made = rc.write(tmp_path / "made.raiiaf", image=png_bytes(seed=4), metadata={"seed": 5}, environment=FIXED_ENV)
    rc.export_png(made, source / "shared.png")
    good = (source / "shared.png").read_bytes()
    damaged = bytearray(good)
    damaged[-20] ^= 0xFF  # in the image's last chunk
    (source / "damaged.png").write_bytes(bytes(damaged))

    assert main(["import", str(source), "-o", str(tmp_path / "out")]) == 1  # one file failed
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and all(line.startswith(f"[{i}/6] ") for i, line in enumerate(lines[:6], 1))
    assert lines[-1] == ("imported 4 of 6 PNG(s): 1 raiiaf export, 2 ComfyUI, 1 A1111/Forge; 1 skipped (no "
                         "generation metadata); 1 failed")
    assert any(line.startswith("[") and "FAIL  " in line and "damaged.png" in line for line in lines)
    assert any("SKIP  " in line and "photo.PNG: holds no generation metadata" in line for line in lines)
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.raiiaf")) == [
        "a1111.raiiaf", "comfy/ComfyUI_00002_.raiiaf", "comfy/day1/ComfyUI_00001_.raiiaf", "shared.raiiaf"]
    assert (out / "shared.raiiaf").read_bytes() == made.read_bytes()
    assert not (out / "damaged.raiiaf").exists()


def test_two_pngs_for_one_output_name_are_not_silently_merged(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a1111_png(tmp_path / "a" / "x.png")
    saveimage_png(tmp_path / "b" / "x.png")
    report = rc.import_pngs([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"], tmp_path / "out")
    assert [r.kind for r in report.results] == ["a1111", None]
    assert report.results[1].failed and "another PNG of this import" in report.results[1].message
    assert rc.open(tmp_path / "out" / "x.raiiaf").metadata["extra"]["import"]["from"] == "a1111"


def test_the_graph_and_a_hostile_prompt_chunk_are_bounded(tmp_path):
    hostile = copy.deepcopy(saveimage_graph())
    hostile["3"]["inputs"]["seed"] = 2**70  # beyond any seed: settings kept, no noise
    saveimage_png(tmp_path / "big_seed.png", hostile)
    result = rc.import_png(tmp_path / "big_seed.png", tmp_path / "b.raiiaf")
    assert "noise not rebuilt" in result.message and rc.open(tmp_path / "b.raiiaf").metadata["seed"] is None
    nested = image_to_png(PIXELS, {"prompt": "[" * 100_000 + "]" * 100_000})
    (tmp_path / "nested.png").write_bytes(nested)
    with pytest.raises(rc.NoArtifactError, match="holds no generation metadata"):
        rc.import_png(tmp_path / "nested.png", tmp_path / "n.raiiaf")


def test_one_output_file_takes_one_png(tmp_path, capsys):
    saveimage_png(tmp_path / "a.png")
    a1111_png(tmp_path / "b.png")
    assert main(["import", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "x.raiiaf")]) == 1
    assert "names one .raiiaf, for one PNG" in capsys.readouterr().err and not (tmp_path / "x.raiiaf").exists()
    assert main(["import", str(tmp_path / "a.png"), "-o", str(tmp_path / "x.raiiaf")]) == 0
    assert rc.open(tmp_path / "x.raiiaf").metadata["extra"]["import"]["from"] == "comfyui"
