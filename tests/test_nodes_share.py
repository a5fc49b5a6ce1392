"""Raiiaf Save's shareable PNG (save_as): ComfyUI-made files export and import back byte for byte, the PNG carries
SaveImage's prompt and workflow and A1111 parameters with Civitai's model hashes, and the replay side reads it."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import raiiaf_core as rc
from raiiaf_nodes.capture import CaptureStore, make_run
from raiiaf_nodes.errors import NodeInputError
from raiiaf_nodes.noise import reconstruct_noise
from raiiaf_nodes.paths import list_raiiaf_files
from raiiaf_nodes.replay import compare_output, load_run, stored_latent
from raiiaf_nodes.save import SaveContext, save_images
from conftest import png_bytes, undetected_private_chunk_flips

ENV = {"schema_version": 1, "python": {"version": "3.11.7"}, "torch": {"version": "2.13.0+cpu"}}
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
WORKFLOW = {"nodes": [{"id": 3, "type": "KSampler"}], "links": []}


def sample_euler_ancestral():
    """Named like k-diffusion's sampler function."""


@pytest.fixture
def graph():
    graph = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    graph["11"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "strength_model": 0.8,
                                                          "strength_clip": 0.8, "lora_name": "detail_tweaker.safetensors"}}
    graph["10"]["inputs"]["model"] = ["11", 0]
    return graph


def save(tmp_path, graph, save_as, prefix="raiiaf/fox"):
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name, data in (("v1-5-pruned-emaonly-fp16.safetensors", b"checkpoint"), ("detail_tweaker.safetensors", b"lora")):
        (models / name).write_bytes(data)
    store = CaptureStore()
    output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    store.add(make_run(noise=reconstruct_noise([1, 4, 8, 8], 42), sigmas=torch.linspace(14.6, 0, 5), seed=42,
                       sampler_function=sample_euler_ancestral, sampler_options={}, cfg=7.0, guider="CFGGuider",
                       latent_image=torch.zeros(1, 4, 8, 8), model={"config": "SD15"}, output=output, prompt_id="p",
                       node_id="3"))
    ctx = SaveContext(output_dir=str(tmp_path / "output"), temp_dir=str(tmp_path / "temp"), prompt=graph,
                      extra_pnginfo={"workflow": WORKFLOW}, node_id="9", prompt_id="p", comfyui_version="0.3.64",
                      model_path=lambda folder, name: str(models / name))
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    return save_images(pixels, prefix, ctx, latent={"samples": output}, store=store, environment=ENV,
                       save_as=save_as), output


def test_both_the_png_beside_the_raiiaf_exports_and_imports_back(tmp_path, graph):
    (item,), output = save(tmp_path, graph, "both")
    assert item.path.name == "fox_00001_.raiiaf" and item.png == item.path.with_suffix(".png")
    # What Raiiaf Save wrote is what `raiiaf export` makes of the .raiiaf, and import gives the .raiiaf back.
    assert rc.export_png(item.path, tmp_path / "exported.png").read_bytes() == item.png.read_bytes()
    rc.import_png(item.png, tmp_path / "back.raiiaf")
    assert (tmp_path / "back.raiiaf").read_bytes() == item.path.read_bytes()

    with Image.open(item.png) as im:
        texts = dict(im.text)
        pixels = np.asarray(im)
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(rc.open(item.path).image_bytes()))))
    assert json.loads(texts["prompt"]) == graph and json.loads(texts["workflow"]) == WORKFLOW
    checkpoint = hashlib.sha256(b"checkpoint").hexdigest()[:10]
    lora = hashlib.sha256(b"lora").hexdigest()[:10]
    assert texts["parameters"] == (
        f"{graph['6']['inputs']['text']}\nNegative prompt: {graph['7']['inputs']['text']}\n"
        f"Steps: 4, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.0, Seed: 42, Size: 64x64, Model hash: "
        f"{checkpoint}, Model: v1-5-pruned-emaonly-fp16, Lora hashes: \"detail_tweaker: {lora}\"")

    # The replay side reads the PNG as it reads the .raiiaf.
    a, b = rc.open(item.path), rc.open(item.png)
    assert a.metadata == b.metadata
    run_a, run_b = load_run(a, 0), load_run(b, 0)
    assert run_a.record == run_b.record
    for part in ("noise", "sigmas", "latent_in"):
        assert torch.equal(getattr(run_a, part), getattr(run_b, part)), part
    assert torch.equal(stored_latent(b)["samples"], output)
    assert compare_output(output.clone(), run_b, b) == (True, "bit-identical to the stored latent")


def test_png_only_and_what_the_load_node_lists(tmp_path, graph):
    (item,), _ = save(tmp_path, graph, "PNG")
    assert item.path.name == "fox_00001_.png" and item.png is None
    assert sorted(p.name for p in (tmp_path / "output" / "raiiaf").iterdir()) == ["fox_00001_.png"]
    rc.open(item.path).verify()
    (tmp_path / "output" / "raiiaf" / "photo.png").write_bytes(png_bytes())  # an image, not an exported file
    (tmp_path / "input").mkdir()
    assert list_raiiaf_files(tmp_path / "input", tmp_path / "output") == ["raiiaf/fox_00001_.png [output]"]
    # With both, the PNG takes the .raiiaf's name unless a file has it: here the first save's PNG, so it is
    # numbered as a PNG of its own.
    (item,), _ = save(tmp_path, graph, "both")
    assert (item.path.name, item.png.name) == ("fox_00001_.raiiaf", "fox_00002_.png")


def test_a_bad_choice_is_refused_before_anything_is_written(tmp_path, graph):
    with pytest.raises(NodeInputError, match="save_as is 'gif'"):
        save(tmp_path, graph, "gif")
    assert not (tmp_path / "output").exists()


def test_every_byte_of_the_private_chunk_and_every_truncation_is_caught(tmp_path, graph):
    (item,), _ = save(tmp_path, graph, "PNG")
    data = item.path.read_bytes()
    missed, length = undetected_private_chunk_flips(data)
    assert missed == [] and length > 5_000  # the graph, workflow, runs, tensors and environment
    for cut in range(len(data)):
        with pytest.raises(rc.RaiiafError):
            rc.open(io.BytesIO(data[:cut]))
