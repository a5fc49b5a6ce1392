"""Saving images with their runs into .raiiaf files and reading them back for replay, on real tensors/files."""

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
from raiiaf_nodes.errors import NodeInputError, ReconstructionError
from raiiaf_nodes.noise import reconstruct_noise
from raiiaf_nodes.replay import compare_output, image_tensor, load_run, stored_latent
from raiiaf_nodes.save import SaveContext, save_images

ENV = {"schema_version": 1, "python": {"version": "3.11.7"}, "torch": {"version": "2.13.0+cpu"}}
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def sample_dpmpp_2m_sde():
    """Named like k-diffusion's sampler function, which is how a record names the sampler."""


@pytest.fixture
def graph():
    return json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())


def images(batch=1, h=16, w=24):
    return torch.rand(batch, h, w, 3, generator=torch.Generator().manual_seed(batch))


def captured(node_id, prompt_id, shape, seed, latent_image=None, sigmas=None, output=None):
    sigmas = torch.linspace(14.6, 0, 7) if sigmas is None else sigmas
    latent_image = torch.zeros(shape) if latent_image is None else latent_image
    return make_run(noise=reconstruct_noise(shape, seed), sigmas=sigmas, seed=seed,
                    sampler_function=sample_dpmpp_2m_sde, sampler_options={"eta": 1.0, "s_noise": 1.0}, cfg=7.0,
                    guider="CFGGuider",
                    latent_image=latent_image, model={"config": "SD15"}, output=output, prompt_id=prompt_id,
                    node_id=node_id)


def ctx_for(tmp_path, graph, prompt_id, **kw):
    return SaveContext(output_dir=str(tmp_path / "output"), temp_dir=str(tmp_path / "temp"), prompt=graph,
                       extra_pnginfo={"workflow": {"nodes": [], "links": []}}, node_id="9", prompt_id=prompt_id,
                       comfyui_version="0.3.64", **kw)


def test_save_then_replay_gives_the_identical_tensors(tmp_path, graph):
    store = CaptureStore()
    output = torch.randn(2, 4, 8, 8)
    run = captured("3", "p1", [2, 4, 8, 8], 42, output=output)
    store.add(run)
    saved = save_images(images(2), "raiiaf/fox", ctx_for(tmp_path, graph, "p1"), latent={"samples": output},
                        tags="a, b\nc", notes="first try", store=store, environment=ENV)
    assert [s.filename for s in saved] == ["fox_00001_.raiiaf", "fox_00002_.raiiaf"]
    assert all(s.subfolder == "raiiaf" for s in saved)
    for index, item in enumerate(saved):
        art = rc.open(item.path)
        art.verify()
        meta = art.metadata
        assert meta["batch"] == {"index": index, "size": 2}
        assert meta["noise"] == {"tensor": "run0.noise", "source": "captured"}
        assert (meta["seed"], meta["sampler"], meta["scheduler"], meta["steps"]) == (42, "euler_ancestral", "karras", 6)
        assert meta["guidance_scale"] == 7.0 and meta["strength"] == 1.0
        assert meta["prompt"] == graph["6"]["inputs"]["text"]
        assert meta["negative_prompt"] == graph["7"]["inputs"]["text"]
        assert meta["tags"] == ["a", "b", "c"] and meta["notes"] == "first try"
        assert (meta["width"], meta["height"]) == (24, 16)
        assert meta["generator"]["name"] == "raiiaf_nodes"
        comfy = meta["host"]["comfyui"]
        assert comfy["prompt"] == graph and comfy["workflow"] == {"nodes": [], "links": []}
        assert comfy["version"] == "0.3.64" and comfy["node_id"] == "9"
        assert art.environment == ENV
        replay = load_run(art, 0)
        assert torch.equal(replay.noise, run.tensors["noise"]) and replay.noise.dtype == torch.float32
        assert torch.equal(replay.sigmas, run.tensors["sigmas"])
        assert torch.equal(replay.latent_in, torch.zeros(2, 4, 8, 8))
        record = replay.record
        assert (replay.seed, record.sampler, record.sampler_options, replay.cfg) == (
            42, "dpmpp_2m_sde", {"eta": 1.0, "s_noise": 1.0}, 7.0)
        assert (replay.sampler_name, record.scheduler, replay.steps) == ("euler_ancestral", "karras", 6)
        assert (record.noise_dtype, record.latent_dtype) == ("float32", "float32")
        assert (replay.batch_index, replay.batch_size) == (index, 2)
        assert torch.equal(stored_latent(art)["samples"], output)
        assert compare_output(output.clone(), replay, art) == (True, "bit-identical to the stored latent")
        assert compare_output(output + 1e-3, replay, art)[0] is False
        # The image is the PNG SaveImage would write, with the graph in its text chunks.
        expected = np.clip(255.0 * images(2)[index].numpy(), 0, 255).astype(np.uint8)
        png = Image.open(io.BytesIO(art.image_bytes()))
        assert np.array_equal(np.asarray(png), expected)
        assert json.loads(png.text["prompt"]) == graph
        assert torch.equal(image_tensor(art)[0], torch.from_numpy(expected.astype(np.float32) / 255.0))
        assert item.preview == ("raiiaf_previews/raiiaf", item.filename + ".png")
        preview = tmp_path / "temp" / item.preview[0] / item.preview[1]
        assert preview.read_bytes() == art.image_bytes()


def test_runs_of_a_two_pass_graph_keep_their_order_and_latents(tmp_path, graph):
    # A hires-fix pass: a second sampler (node 13) starts from the upscaled latent of the first.
    graph = dict(graph)
    graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": 2.0}}
    graph["13"] = dict(graph["3"], inputs=dict(graph["3"]["inputs"], latent_image=["12", 0], seed=7, denoise=0.5))
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}}
    store = CaptureStore()
    upscaled = torch.randn(1, 4, 16, 16)
    first, second = captured("3", "p", [1, 4, 8, 8], 42), captured("13", "p", [1, 4, 16, 16], 7, latent_image=upscaled,
                                                                     sigmas=torch.tensor([3.0, 1.0, 0.0]))
    store.add(first)
    store.add(captured("77", "p", [1, 4, 8, 8], 1))  # another branch of the graph: not this image's
    store.add(second)
    (item,) = save_images(images(), "two", ctx_for(tmp_path, graph, "p"), store=store, environment=ENV)
    art = rc.open(item.path)
    assert len(art.metadata["runs"]) == 2
    assert [r["node_id"] for r in art.metadata["runs"]] == ["3", "13"]
    assert art.metadata["runs"][1]["denoise"] == 0.5 and art.metadata["runs"][1]["steps"] == 2
    assert art.metadata["seed"] == 42  # top-level fields describe the first run, the one from pure noise
    replay = load_run(art, 1)
    assert torch.equal(replay.latent_in, upscaled) and torch.equal(replay.noise, second.tensors["noise"])
    assert torch.equal(replay.sigmas, torch.tensor([3.0, 1.0, 0.0])) and replay.seed == 7
    with pytest.raises(NodeInputError, match="holds 2 sampling run"):
        load_run(art, 2)
    assert stored_latent(art) is None
    assert compare_output(torch.zeros(1), load_run(art, 0), art)[0] is None


def test_without_capture_the_noise_is_rebuilt_from_the_graph(tmp_path, graph):
    (item,) = save_images(images(), "plain", ctx_for(tmp_path, graph, "p"), store=CaptureStore(), environment=ENV)
    art = rc.open(item.path)
    assert art.metadata["noise"] == {"tensor": "run0.noise", "source": "reconstructed"}
    run = art.metadata["runs"][0]
    assert (run["source"], run["seed"], run["sampler"]) == ("reconstructed", 42, "euler_ancestral")
    assert "sigmas" not in run and run["empty_start"] is True
    # Outside ComfyUI the local copy of KSampler's rules rebuilds it, and the file says which one did.
    assert run["rebuilt_by"] == {"function": "raiiaf_nodes.noise.reconstruct_noise", "comfyui_version": "0.3.64"}
    assert torch.equal(art.load_tensor("run0.noise", framework="torch"), reconstruct_noise([1, 4, 64, 64], 42))
    replay = load_run(art, 0)
    assert replay.sigmas is None and replay.steps == 20


def test_rebuilt_noise_follows_the_latent_batch_index(tmp_path, graph):
    latent = {"samples": torch.randn(2, 4, 8, 8), "batch_index": [3, 1]}
    (first, _) = save_images(images(2), "picked", ctx_for(tmp_path, graph, "p"), latent=latent, store=CaptureStore(),
                             environment=ENV)
    art = rc.open(first.path)
    assert torch.equal(art.load_tensor("run0.noise", framework="torch"), reconstruct_noise([2, 4, 8, 8], 42, [3, 1]))
    assert art.metadata["runs"][0]["batch_index"] == [3, 1]
    assert stored_latent(art)["batch_index"] == [3, 1]


def test_rebuilding_needs_a_literal_seed(tmp_path, graph):
    graph["3"]["inputs"]["seed"] = ["50", 0]
    graph["50"] = {"class_type": "RandomSeedFromSomewhere", "inputs": {"a": 1, "b": 2}}
    with pytest.raises(ReconstructionError, match="Raiiaf Capture Sampling"):
        save_images(images(), "x", ctx_for(tmp_path, graph, "p"), store=CaptureStore(), environment=ENV)


def test_metadata_disabled_leaves_out_graph_and_workflow(tmp_path, graph):
    (item,) = save_images(images(), "private", ctx_for(tmp_path, graph, "p", metadata_enabled=False),
                          store=CaptureStore(), environment=ENV)
    art = rc.open(item.path)
    assert "prompt" not in art.metadata["host"]["comfyui"] and "workflow" not in art.metadata["host"]["comfyui"]
    assert "prompt" not in Image.open(io.BytesIO(art.image_bytes())).text
    assert art.metadata["seed"] == 42  # the record itself is still there


def test_model_files_are_hashed(tmp_path, graph):
    ckpt = tmp_path / "models" / "v1-5-pruned-emaonly-fp16.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not really a checkpoint")
    progress = []
    ctx = ctx_for(tmp_path, graph, "p", model_path=lambda folder, name: str(ckpt) if folder == "checkpoints" else None,
                  hash_progress=lambda done, total: progress.append((done, total)))
    (item,) = save_images(images(), "hashed", ctx, store=CaptureStore(), environment=ENV)
    model = rc.open(item.path).metadata["model"]
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    size = ckpt.stat().st_size
    assert model == {"name": ckpt.name, "sha256": digest,
                     "files": [{"role": "checkpoint", "name": ckpt.name, "sha256": digest, "size": size}]}
    assert progress[-1] == (ckpt.stat().st_size,) * 2


def test_saves_without_any_sampler_upstream(tmp_path):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
             "9": {"class_type": "RaiiafSave", "inputs": {"images": ["1", 0]}}}
    (item,) = save_images(images(), "loaded", ctx_for(tmp_path, graph, "p"), store=CaptureStore(), environment=ENV)
    art = rc.open(item.path)
    assert art.metadata["runs"] == [] and "noise" not in art.metadata
    with pytest.raises(NodeInputError, match="holds no sampling run"):
        load_run(art, 0)


def test_files_from_other_hosts_replay_from_top_level_fields(tmp_path):
    noise = torch.randn(1, 4, 8, 8)
    path = rc.write(tmp_path / "d.raiiaf", image=Image.new("RGB", (8, 8)), tensors={"noise": noise},
                    metadata={"seed": 3, "sampler": "EulerDiscreteScheduler", "steps": 4, "guidance_scale": 5.0,
                              "prompt": "p", "noise": {"tensor": "noise", "source": "captured"}}, environment=ENV)
    replay = load_run(rc.open(path), 0)
    assert torch.equal(replay.noise, noise)
    assert (replay.seed, replay.steps, replay.cfg, replay.record.positive) == (3, 4, 5.0, "p")
    assert replay.sigmas is None


def _prepare_noise(shape, seed, batch_index=None):
    """comfy.sample.prepare_noise's draw, written out here apart from the code under test."""
    generator = torch.Generator().manual_seed(seed)
    if batch_index is None:
        return torch.randn(shape, generator=generator)
    unique, inverse = np.unique(batch_index, return_inverse=True)
    noises = [torch.randn([1, *shape[1:]], generator=generator) for _ in range(unique[-1] + 1)]
    return torch.cat([noises[unique[i]] for i in inverse], dim=0)


@pytest.mark.parametrize("batch_index", [None, [3, 1]])
def test_noise_storage_recipe_stores_the_seeds_draw_and_loads_it_bit_for_bit(tmp_path, graph, batch_index):
    latent = {"samples": torch.randn(2, 4, 8, 8), **({"batch_index": batch_index} if batch_index else {})}
    store = CaptureStore()
    store.add(captured("3", "p1", [2, 4, 8, 8], 42))  # captured noise: KSampler's draw without the batch_index
    sizes = {}
    for storage in ("raw", "recipe"):
        for source, kept_store in (("captured", store), ("reconstructed", CaptureStore())):
            if source == "captured" and batch_index:
                continue
            (item, _) = save_images(images(2), f"{storage}_{source}", ctx_for(tmp_path, graph, "p1"), latent=latent,
                                    store=kept_store, environment=ENV, noise_storage=storage)
            art = rc.open(item.path)
            assert art.verify() == [] and art.metadata["noise"]["source"] == source
            assert art.tensor_stored_as("run0.noise") == ("tensor_recipe" if storage == "recipe" else "tensor")
            assert art.tensor_stored_as("latent") == "tensor"
            want = _prepare_noise([2, 4, 8, 8], 42, batch_index if source == "reconstructed" else None)
            assert torch.equal(art.load_tensor("run0.noise", "torch"), want)
            assert torch.equal(load_run(art, 0).noise, want)
            sizes[storage, source] = item.path.stat().st_size
    for source in ("captured", "reconstructed"):
        if (source == "captured") and batch_index:
            continue
        assert sizes["raw", source] - sizes["recipe", source] > 2 * 4 * 8 * 8 * 4 - 400


def test_noise_storage_recipe_keeps_noise_its_seed_does_not_draw_raw(tmp_path, graph, caplog):
    store = CaptureStore()
    run = make_run(noise=torch.randn(1, 4, 8, 8), sigmas=torch.linspace(14.6, 0, 7), seed=42,
                   sampler_function=sample_dpmpp_2m_sde, latent_image=torch.zeros(1, 4, 8, 8), prompt_id="p",
                   node_id="3")
    store.add(run)
    (item,) = save_images(images(), "odd", ctx_for(tmp_path, graph, "p"), store=store, environment=ENV,
                          noise_storage="recipe")
    art = rc.open(item.path)
    assert art.tensor_stored_as("run0.noise") == "tensor"
    assert torch.equal(art.load_tensor("run0.noise", "torch"), run.tensors["noise"])
    assert "stores run0.noise raw" in caplog.text
    with pytest.raises(NodeInputError, match="noise_storage"):
        save_images(images(), "odd", ctx_for(tmp_path, graph, "p"), store=store, environment=ENV,
                    noise_storage="zip")
