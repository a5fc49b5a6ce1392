"""Opt-in end-to-end test in a real ComfyUI: capture + save, then replay, through ComfyUI's HTTP API.

Skipped unless RAIIAF_COMFYUI_PATH names a ComfyUI checkout. RAIIAF_COMFYUI_PYTHON is the python that runs
it (default: this one). The test builds a small random-weight SD1.5-type checkpoint with ComfyUI's own model
classes (or uses RAIIAF_COMFYUI_CHECKPOINT), lays out a scratch base directory with this repository linked
into custom_nodes/, starts ComfyUI on 127.0.0.1 (CPU), runs workflows/ through the API, and stops it.

    RAIIAF_COMFYUI_PATH=/path/to/ComfyUI RAIIAF_COMFYUI_PYTHON=/path/to/venv/bin/python \
        python -m pytest tests/comfyui_real -v
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import raiiaf_core as rc
from raiiaf_nodes.noise import reconstruct_noise

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # pytest's default import mode puts it there already; importlib mode does not
    sys.path.insert(0, str(HERE))

from comfyui_server import CKPT, COMFY, REPO, Comfy, start  # noqa: E402

WORKFLOWS = REPO / "workflows"

pytestmark = pytest.mark.skipif(not COMFY, reason="set RAIIAF_COMFYUI_PATH (and RAIIAF_COMFYUI_PYTHON) to run "
                                                  "against a real ComfyUI")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    # Server start and stop live in comfyui_server.py, which bench/bench_comfyui.py uses too.
    with start(tmp_path_factory.mktemp("comfyui_base")) as server:
        yield server


def capture_graph(sampler: str, prefix: str, *, capture: bool = True, tags: str = "test") -> dict:
    graph = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = CKPT
    graph["5"]["inputs"].update(width=64, height=64, batch_size=1)
    graph["3"]["inputs"].update(sampler_name=sampler, steps=6, seed=123456789)
    graph["9"]["inputs"].update(filename_prefix=prefix, tags=tags)
    if not capture:
        del graph["10"]
        graph["3"]["inputs"]["model"] = ["4", 0]
    return graph


def replay_graph(file: str, prefix: str) -> dict:
    graph = json.loads((WORKFLOWS / "raiiaf_replay_api.json").read_text())
    graph["2"]["inputs"]["ckpt_name"] = CKPT
    graph["1"]["inputs"]["file"] = graph["9"]["inputs"]["file"] = file
    # The example ends in SaveImage; the latents themselves are what must be equal, so save them too.
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"{prefix}_custom"}}
    graph["21"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": f"{prefix}_resample"}}
    return graph


def saved_raiiaf(comfy: Comfy, outputs: dict, node: str = "9") -> Path:
    files = outputs[node]["raiiaf_files"]
    assert len(files) == 1
    path = comfy.base / "output" / files[0]
    assert path.is_file()
    return path


def saved_latent(comfy: Comfy, outputs: dict, node: str) -> torch.Tensor:
    item = outputs[node]["latents"][0]
    return load_file(comfy.base / "output" / item["subfolder"] / item["filename"])["latent_tensor"]


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde", "ddim", "uni_pc"])
def test_capture_save_then_replay_is_bit_identical(comfy, sampler):
    workflow = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    outputs = comfy.run(capture_graph(sampler, f"test/{sampler}"), workflow)
    path = saved_raiiaf(comfy, outputs)
    art = rc.open(path)
    art.verify()
    meta = art.metadata
    assert meta["noise"]["source"] == "captured"
    # ddim is euler with random inpaint noise, uni_pc's function is named unipc: the record keeps both names.
    assert [r["sampler_name"] for r in meta["runs"]] == [sampler]
    run = meta["runs"][0]
    assert run["seed"] == 123456789 and run["steps"] == 6 and run["node_id"] == "3"
    assert meta["prompt"].startswith("a watercolor painting") and meta["negative_prompt"] == "blurry, low quality"
    assert meta["host"]["comfyui"]["prompt"]["3"]["class_type"] == "KSampler"
    assert meta["host"]["comfyui"]["workflow"] == workflow
    assert meta["host"]["comfyui"]["version"]
    ckpt = comfy.base / "models" / "checkpoints" / CKPT
    assert meta["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    noise = art.load_tensor("run0.noise", framework="torch")
    # The noise KSampler really used (captured) is what the reconstruction gives from seed and size.
    assert torch.equal(noise, reconstruct_noise(noise.shape, 123456789))
    original = art.load_tensor("latent", framework="torch")
    # The UI preview is served by ComfyUI and is the stored PNG.
    preview = outputs["9"]["images"][0]
    query = urllib.parse.urlencode({"filename": preview["filename"], "subfolder": preview["subfolder"],
                                    "type": preview["type"]})
    assert comfy.fetch(f"/view?{query}") == art.image_bytes()

    replay = comfy.run(replay_graph(f"{path.relative_to(comfy.base / 'output').as_posix()} [output]",
                                    f"replay/{sampler}"))
    assert torch.equal(saved_latent(comfy, replay, "20"), original), "SamplerCustomAdvanced replay differs"
    assert torch.equal(saved_latent(comfy, replay, "21"), original), "Raiiaf Resample replay differs"
    assert replay["9"]["raiiaf_identical"] == [True]
    assert "run 0: bit-identical" in replay["9"]["raiiaf_report"][0]
    assert replay["1"]["raiiaf_report"]


def test_without_capture_node_noise_is_reconstructed(comfy):
    outputs = comfy.run(capture_graph("euler", "test/nocapture", capture=False))
    art = rc.open(saved_raiiaf(comfy, outputs))
    assert art.metadata["noise"]["source"] == "reconstructed"
    run = art.metadata["runs"][0]
    assert run["source"] == "reconstructed" and run["sigmas"] is None and run["seed"] == 123456789
    noise = art.load_tensor("run0.noise", framework="torch")
    assert torch.equal(noise, reconstruct_noise([1, 4, 8, 8], 123456789))


def test_cached_sampler_still_gives_captured_runs(comfy):
    # Only the save node's tags change: ComfyUI reuses the cached latent, the sampler does not run again.
    first = rc.open(saved_raiiaf(comfy, comfy.run(capture_graph("euler", "test/cache", tags="one"))))
    second = rc.open(saved_raiiaf(comfy, comfy.run(capture_graph("euler", "test/cache", tags="two"))))
    assert second.metadata["tags"] == ["two"]
    assert second.metadata["noise"]["source"] == "captured"
    assert torch.equal(first.load_tensor("run0.noise", framework="torch"),
                       second.load_tensor("run0.noise", framework="torch"))
    assert first.metadata["runs"][0]["output_sha256"] == second.metadata["runs"][0]["output_sha256"]


def test_uploaded_file_replays(comfy, tmp_path):
    outputs = comfy.run(capture_graph("euler_ancestral", "test/upload"))
    original = rc.open(saved_raiiaf(comfy, outputs)).load_tensor("latent", framework="torch")
    local = tmp_path / "from my disk.raiiaf"
    shutil.copyfile(saved_raiiaf(comfy, outputs), local)
    name = comfy.upload(local)
    assert name in comfy.request("/object_info/RaiiafLoad")["RaiiafLoad"]["input"]["required"]["file"][0]
    replay = comfy.run(replay_graph(name, "replay/upload"))
    assert torch.equal(saved_latent(comfy, replay, "21"), original)


def test_shape_mismatch_is_a_clear_error(comfy):
    outputs = comfy.run(capture_graph("euler", "test/shape"))
    name = saved_raiiaf(comfy, outputs).relative_to(comfy.base / "output").as_posix() + " [output]"
    graph = replay_graph(name, "replay/shape")
    graph["30"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}}
    graph["6"]["inputs"]["latent_image"] = ["30", 0]
    with pytest.raises(AssertionError, match="stored noise has shape"):
        comfy.run(copy.deepcopy(graph))


def test_two_samplers_give_two_runs_in_order_and_each_replays(comfy):
    # A hires-fix graph: KSampler, latent upscale, then KSamplerAdvanced on the upscaled latent.
    graph = capture_graph("euler", "test/hires")
    graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                             "scale_by": 2.0}}
    graph["13"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["10", 0], "add_noise": "enable", "noise_seed": 7, "steps": 6, "cfg": 5.0,
        "sampler_name": "euler_ancestral", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["12", 0], "start_at_step": 3, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    graph["9"]["inputs"]["latent"] = ["13", 0]
    path = saved_raiiaf(comfy, comfy.run(graph))
    art = rc.open(path)
    runs = art.metadata["runs"]
    assert [(r["node_id"], r["sampler"], r["seed"]) for r in runs] == [("3", "euler", 123456789),
                                                                        ("13", "euler_ancestral", 7)]
    assert runs[1]["latent_shape"] == [1, 4, 16, 16] and runs[1]["latent_in"] == "run1.latent_in"
    assert runs[1]["steps"] == 3 and runs[1]["cfg"] == 5.0
    assert torch.equal(art.load_tensor("run1.noise", framework="torch"), reconstruct_noise([1, 4, 16, 16], 7))
    name = f"{path.relative_to(comfy.base / 'output').as_posix()} [output]"
    replay = replay_graph(name, "replay/hires")
    replay["1"]["inputs"]["run"] = replay["9"]["inputs"]["run"] = 1
    outputs = comfy.run(replay)
    final = art.load_tensor("latent", framework="torch")
    assert torch.equal(saved_latent(comfy, outputs, "20"), final)
    assert torch.equal(saved_latent(comfy, outputs, "21"), final)
    assert outputs["9"]["raiiaf_identical"] == [True]
