"""Opt-in compatibility matrix in real ComfyUIs: capture + save, then replay, through ComfyUI's HTTP API.

Skipped unless a ComfyUI is named (comfyui_server.targets()): RAIIAF_COMFYUI_HARNESS lists harness folders
written by build_harness.py, one per ComfyUI checkout, and every check below runs on each of them, with one
server per ComfyUI. Without a harness, RAIIAF_COMFYUI_PATH (+ RAIIAF_COMFYUI_PYTHON, RAIIAF_COMFYUI_CHECKPOINT)
names a single checkout.

    python tests/comfyui_real/build_harness.py /path/to/ComfyUI /path/to/harness
    RAIIAF_COMFYUI_HARNESS=/path/to/harness[:/path/to/another] python -m pytest tests/comfyui_real -v

Each graph is captured and saved, then every run that made the saved image is replayed twice in one queue
run: through Raiiaf Load Replay -> SamplerCustomAdvanced, and through Raiiaf Resample. Both replayed latents
must be torch.equal to the latent the file stores, and, decoded by VAEDecode, pixel-identical to the PNG the
file stores (for a batch: the file's own image of the batch). Images are 64x64, a few steps, on the CPU, with
a random-weight SD1.5-type checkpoint built from the running ComfyUI's own classes.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import raiiaf_core as rc
from raiiaf_nodes.noise import reconstruct_noise

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # pytest's default import mode puts it there already; importlib mode does not
    sys.path.insert(0, str(HERE))

from comfyui_server import CKPT, REPO, Comfy, start, targets  # noqa: E402

WORKFLOWS = REPO / "workflows"
TARGETS = targets()
SEED = 123456789
STEPS = 4

pytestmark = pytest.mark.skipif(not TARGETS, reason="set RAIIAF_COMFYUI_HARNESS (or RAIIAF_COMFYUI_PATH) to run "
                                                    "against a real ComfyUI")


@pytest.fixture(scope="module", params=TARGETS, ids=lambda t: f"comfyui-{t.version}")
def comfy(request, tmp_path_factory):
    # Server start and stop live in comfyui_server.py, which bench/bench_comfyui.py uses too.
    target = request.param
    with start(tmp_path_factory.mktemp(f"comfyui-{target.version}"), comfy=target.comfyui, python=target.python,
               checkpoint=target.checkpoint) as server:
        server.version = target.version
        yield server


# -- graphs ---------------------------------------------------------------------------------------------

def capture_graph(prefix: str, *, sampler: str = "euler", capture: bool = True, tags: str = "test",
                  batch: int = 1) -> dict:
    """The shipped capture workflow at 64x64: checkpoint -> capture -> KSampler -> VAEDecode -> Raiiaf Save."""
    graph = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = CKPT
    graph["5"]["inputs"].update(width=64, height=64, batch_size=batch)
    graph["3"]["inputs"].update(sampler_name=sampler, scheduler="normal", steps=STEPS, seed=SEED)
    graph["9"]["inputs"].update(filename_prefix=prefix, tags=tags)
    if not capture:
        del graph["10"]
        graph["3"]["inputs"]["model"] = ["4", 0]
    return graph


def final_sampler(graph: dict, node: str, inputs: dict) -> dict:
    """`graph` with sampler node `node` added; it makes the decoded, saved latent."""
    graph[node] = {"class_type": inputs.pop("class_type"), "inputs": inputs}
    graph["8"]["inputs"]["samples"] = [node, 0]
    graph["9"]["inputs"]["latent"] = [node, 0]
    return graph


def from_image(graph: dict, image: str, *, denoise: float, mask: bool = False) -> dict:
    """img2img: the KSampler starts from an uploaded picture (LoadImage -> VAEEncode), optionally masked."""
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["4", 2]}}
    latent = ["21", 0]
    if mask:  # LoadImage's MASK is 1 where the PNG is transparent: only that part is sampled again
        graph["22"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["21", 0], "mask": ["20", 1]}}
        latent = ["22", 0]
    graph["3"]["inputs"].update(latent_image=latent, denoise=denoise)
    del graph["5"]
    return graph


def replay_graph(file: str, prefix: str, run: int, *, scheduler_steps: int | None = None) -> dict:
    """The shipped replay workflow for run `run` of `file`, saving both replayed latents and decoded images.

    scheduler_steps: the file has no sigmas (rebuilt noise), so SamplerCustomAdvanced gets them from a
    BasicScheduler with the recorded scheduler and steps.
    """
    graph = json.loads((WORKFLOWS / "raiiaf_replay_api.json").read_text())
    graph["2"]["inputs"]["ckpt_name"] = CKPT
    graph["1"]["inputs"].update(file=file, run=run)
    graph["9"]["inputs"].update(file=file, run=run)
    graph["8"]["inputs"]["filename_prefix"] = f"{prefix}_custom"
    graph["11"]["inputs"]["filename_prefix"] = f"{prefix}_resample"
    graph["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"{prefix}_custom"}}
    graph["21"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": f"{prefix}_resample"}}
    if scheduler_steps is not None:
        graph["22"] = {"class_type": "BasicScheduler", "inputs": {"model": ["2", 0], "scheduler": "normal",
                                                                  "steps": scheduler_steps, "denoise": 1.0}}
        graph["6"]["inputs"]["sigmas"] = ["22", 0]
    return graph


# -- reading results ------------------------------------------------------------------------------------

def saved_files(comfy: Comfy, outputs: dict, node: str = "9") -> list[Path]:
    paths = [comfy.base / "output" / f for f in outputs[node]["raiiaf_files"]]
    assert paths and all(p.is_file() for p in paths)
    return paths


def picked(comfy: Comfy, path: Path) -> str:
    """The name Raiiaf Load Replay's file widget gives a file in the output folder."""
    return f"{path.relative_to(comfy.base / 'output').as_posix()} [output]"


def saved_latent(comfy: Comfy, outputs: dict, node: str) -> torch.Tensor:
    item = outputs[node]["latents"][0]
    return load_file(comfy.base / "output" / item["subfolder"] / item["filename"])["latent_tensor"]


def saved_pixels(comfy: Comfy, outputs: dict, node: str, index: int) -> np.ndarray:
    item = outputs[node]["images"][index]
    return np.asarray(Image.open(comfy.base / "output" / item["subfolder"] / item["filename"]).convert("RGB"))


def stored_pixels(art: rc.Artifact) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(art.image_bytes())).convert("RGB"))


def assert_replays(comfy: Comfy, path: Path, run: int | None = None, *, scheduler_steps: int | None = None) -> dict:
    """Replay run `run` (default: the last one, which made the stored latent) both ways; both must give the
    stored latent (torch.equal) and, decoded, the stored PNG's pixels. Returns the replay's outputs."""
    art = rc.open(path)
    art.verify()
    meta = art.metadata
    run = len(meta["runs"]) - 1 if run is None else run
    outputs = comfy.run(replay_graph(picked(comfy, path), f"replay/{path.stem}_{run}", run,
                                     scheduler_steps=scheduler_steps))
    stored = art.load_tensor("latent", framework="torch")
    assert torch.equal(saved_latent(comfy, outputs, "20"), stored), "Load Replay -> SamplerCustomAdvanced differs"
    assert torch.equal(saved_latent(comfy, outputs, "21"), stored), "Raiiaf Resample differs"
    assert outputs["9"]["raiiaf_identical"] == [True]
    assert f"run {run}: bit-identical to the stored latent" in outputs["9"]["raiiaf_report"][0]
    index = meta["batch"]["index"]
    for node in ("8", "11"):  # the SaveImage of each route: the file's own image of the batch
        assert np.array_equal(saved_pixels(comfy, outputs, node, index), stored_pixels(art)), f"pixels of {node}"
    return outputs


def assert_captured(comfy: Comfy, art: rc.Artifact, run: int = 0) -> dict:
    record = art.metadata["runs"][run]
    assert record["source"] == "captured"
    assert (record["noise_dtype"], record["latent_dtype"]) == ("float32", "float32")
    shape = list(art.tensor_info(record["noise"]).shape)
    assert record["latent_shape"] == shape
    if comfy.version == "0.8.0":  # ComfyUI passes latent_shapes to the wrapper since October 2025
        assert record["latent_shapes"] == [shape]
    assert art.metadata["host"]["comfyui"]["version"] == comfy.version
    return record


def upload_png(comfy: Comfy, tmp_path: Path, name: str, *, transparent_centre: bool = False) -> str:
    pixels = np.random.default_rng(5).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    if transparent_centre:
        pixels[16:48, 16:48, 3] = 0
    path = tmp_path / name
    Image.fromarray(pixels, "RGBA").save(path)
    return comfy.upload(path)


# -- the matrix -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "uni_pc", "ddim",
                                     "lcm"])
def test_ksampler(comfy, sampler):
    workflow = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    outputs = comfy.run(capture_graph(f"ksampler/{sampler}", sampler=sampler), workflow)
    (path,) = saved_files(comfy, outputs)
    art = rc.open(path)
    meta = art.metadata
    record = assert_captured(comfy, art)
    assert meta["noise"]["source"] == "captured"
    # ddim is euler with random inpaint noise, uni_pc's function is named unipc: the record keeps both names.
    assert [r["sampler_name"] for r in meta["runs"]] == [sampler]
    assert (record["seed"], record["steps"], record["node_id"]) == (SEED, STEPS, "3")
    assert meta["prompt"].startswith("a watercolor painting") and meta["negative_prompt"] == "blurry, low quality"
    assert meta["host"]["comfyui"]["workflow"] == workflow
    noise = art.load_tensor("run0.noise", framework="torch")
    assert torch.equal(noise, reconstruct_noise(noise.shape, SEED))  # what KSampler drew
    # The UI preview is served by ComfyUI and is the stored PNG.
    preview = outputs["9"]["images"][0]
    query = urllib.parse.urlencode({k: preview[k] for k in ("filename", "subfolder", "type")})
    assert comfy.fetch(f"/view?{query}") == art.image_bytes()
    replay = assert_replays(comfy, path)
    assert replay["1"]["raiiaf_report"]


def test_ksampler_advanced_split_over_two_samplers(comfy):
    # The first sampler stops half way and returns its leftover noise; the second adds none and finishes.
    graph = capture_graph("split/first")
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["10", 0], "add_noise": "enable", "noise_seed": SEED, "steps": STEPS, "cfg": 7.0,
        "sampler_name": "dpmpp_2m", "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0], "start_at_step": 0, "end_at_step": STEPS // 2,
        "return_with_leftover_noise": "enable"}}
    final_sampler(graph, "13", {**copy.deepcopy(graph["3"]["inputs"]), "class_type": "KSamplerAdvanced",
                                "add_noise": "disable", "latent_image": ["3", 0], "start_at_step": STEPS // 2,
                                "end_at_step": 10000, "return_with_leftover_noise": "disable"})
    (path,) = saved_files(comfy, comfy.run(graph))
    art = rc.open(path)
    runs = art.metadata["runs"]
    assert [(r["node_id"], r["steps"]) for r in runs] == [("3", STEPS // 2), ("13", STEPS - STEPS // 2)]
    assert_captured(comfy, art, 0)
    assert not art.load_tensor("run1.noise", framework="torch").any()  # add_noise=disable
    assert_replays(comfy, path)
    # The first run's replay is the latent the second one started from (which the file stores).
    first = comfy.run(replay_graph(picked(comfy, path), "replay/split_0", 0))
    assert torch.equal(saved_latent(comfy, first, "21"), art.load_tensor("run1.latent_in", framework="torch"))
    assert torch.equal(saved_latent(comfy, first, "20"), art.load_tensor("run1.latent_in", framework="torch"))
    assert first["9"]["raiiaf_identical"] == [None]  # the file stores no latent that proves run 0 by itself


def test_sampler_custom_advanced(comfy):
    graph = capture_graph("custom/adv")
    del graph["3"]
    graph.update({
        "30": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "31": {"class_type": "CFGGuider", "inputs": {"model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 6.0}},
        "32": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "33": {"class_type": "BasicScheduler", "inputs": {"model": ["10", 0], "scheduler": "karras", "steps": STEPS,
                                                          "denoise": 1.0}},
    })
    final_sampler(graph, "34", {"class_type": "SamplerCustomAdvanced", "noise": ["30", 0], "guider": ["31", 0],
                                "sampler": ["32", 0], "sigmas": ["33", 0], "latent_image": ["5", 0]})
    (path,) = saved_files(comfy, comfy.run(graph))
    art = rc.open(path)
    record = assert_captured(comfy, art)
    assert (record["class_type"], record["sampler_name"], record["scheduler"], record["cfg"], record["seed"]) == (
        "SamplerCustomAdvanced", "euler_ancestral", "karras", 6.0, SEED)
    assert_replays(comfy, path)


def test_hires_fix(comfy):
    graph = capture_graph("hires/pass")
    graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                             "scale_by": 2.0}}
    final_sampler(graph, "13", {**copy.deepcopy(graph["3"]["inputs"]), "class_type": "KSampler", "seed": 7,
                                "sampler_name": "euler_ancestral", "latent_image": ["12", 0], "denoise": 0.5})
    (path,) = saved_files(comfy, comfy.run(graph))
    art = rc.open(path)
    runs = art.metadata["runs"]
    assert [(r["node_id"], r["seed"], r["denoise"]) for r in runs] == [("3", SEED, 1.0), ("13", 7, 0.5)]
    assert runs[1]["latent_shape"] == [1, 4, 16, 16] and runs[1]["latent_in"] == "run1.latent_in"
    assert_captured(comfy, art, 1)
    assert torch.equal(art.load_tensor("run1.noise", framework="torch"), reconstruct_noise([1, 4, 16, 16], 7))
    assert_replays(comfy, path)


def test_batch_of_two_each_file_replays_its_own_image(comfy):
    outputs = comfy.run(capture_graph("batch/two", sampler="euler_ancestral", batch=2))
    paths = saved_files(comfy, outputs)
    assert len(paths) == 2
    arts = [rc.open(p) for p in paths]
    assert [a.metadata["batch"] for a in arts] == [{"index": 0, "size": 2}, {"index": 1, "size": 2}]
    assert not np.array_equal(stored_pixels(arts[0]), stored_pixels(arts[1]))
    for path in paths:
        assert_replays(comfy, path)


def test_img2img(comfy, tmp_path):
    image = upload_png(comfy, tmp_path, "img2img.png")
    (path,) = saved_files(comfy, comfy.run(from_image(capture_graph("img2img/pass"), image, denoise=0.6)))
    art = rc.open(path)
    record = assert_captured(comfy, art)
    assert record["latent_in"] == "run0.latent_in" and record["denoise"] == 0.6
    assert_replays(comfy, path)


def test_inpainting_with_a_noise_mask(comfy, tmp_path):
    image = upload_png(comfy, tmp_path, "inpaint.png", transparent_centre=True)
    (path,) = saved_files(comfy, comfy.run(from_image(capture_graph("inpaint/pass", sampler="euler_ancestral"),
                                                      image, denoise=1.0, mask=True)))
    art = rc.open(path)
    record = assert_captured(comfy, art)
    assert record["denoise_mask_tensor"] == "run0.denoise_mask"
    assert_replays(comfy, path)


def test_without_the_capture_node_the_noise_is_rebuilt_by_comfyui(comfy):
    (path,) = saved_files(comfy, comfy.run(capture_graph("nocapture/pass", capture=False)))
    art = rc.open(path)
    assert art.metadata["noise"]["source"] == "reconstructed"
    record = art.metadata["runs"][0]
    assert record["source"] == "reconstructed" and "sigmas" not in record and record["seed"] == SEED
    # Rebuilt inside ComfyUI by ComfyUI's own prepare_noise; the file says which version rebuilt it.
    assert record["rebuilt_by"] == {"function": "comfy.sample.prepare_noise", "comfyui_version": comfy.version}
    assert torch.equal(art.load_tensor("run0.noise", framework="torch"), reconstruct_noise([1, 4, 8, 8], SEED))
    assert_replays(comfy, path, scheduler_steps=STEPS)


# -- behaviour around the matrix ------------------------------------------------------------------------

def test_cached_sampler_still_gives_captured_runs(comfy):
    # Only the save node's tags change: ComfyUI reuses the cached latent, the sampler does not run again.
    first = rc.open(saved_files(comfy, comfy.run(capture_graph("cache/pass", tags="one")))[0])
    second = rc.open(saved_files(comfy, comfy.run(capture_graph("cache/pass", tags="two")))[0])
    assert second.metadata["tags"] == ["two"]
    assert second.metadata["noise"]["source"] == "captured"
    assert torch.equal(first.load_tensor("run0.noise", framework="torch"),
                       second.load_tensor("run0.noise", framework="torch"))
    assert first.metadata["runs"][0]["output_sha256"] == second.metadata["runs"][0]["output_sha256"]


def test_uploaded_file_replays(comfy, tmp_path):
    (path,) = saved_files(comfy, comfy.run(capture_graph("upload/pass", sampler="euler_ancestral")))
    local = tmp_path / "from my disk.raiiaf"
    shutil.copyfile(path, local)
    name = comfy.upload(local)
    assert name in comfy.request("/object_info/RaiiafLoad")["RaiiafLoad"]["input"]["required"]["file"][0]
    replay = comfy.run(replay_graph(name, "replay/upload", 0))
    assert torch.equal(saved_latent(comfy, replay, "21"), rc.open(path).load_tensor("latent", framework="torch"))


def test_shape_mismatch_is_a_clear_error(comfy):
    (path,) = saved_files(comfy, comfy.run(capture_graph("shape/pass")))
    graph = replay_graph(picked(comfy, path), "replay/shape", 0)
    graph["30"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}}
    graph["6"]["inputs"]["latent_image"] = ["30", 0]
    with pytest.raises(AssertionError, match="stored noise has shape"):
        comfy.run(graph)


def test_a_saveimage_png_imported_with_raiiaf_import_replays_to_its_pixels(comfy):
    """A PNG written by ComfyUI's own SaveImage (no raiiaf node in the graph), turned into a .raiiaf by `raiiaf
    import` (noise rebuilt outside ComfyUI), replays through Raiiaf Load Replay -> SamplerCustomAdvanced and
    through Raiiaf Resample to the PNG's own pixels; so does the PNG `raiiaf export` makes of that file."""
    graph = capture_graph("unused", capture=False)
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "plain/saveimage"}}
    workflow = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    item = comfy.run(graph, workflow)["9"]["images"][0]
    png = comfy.base / "output" / item["subfolder"] / item["filename"]
    original = np.asarray(Image.open(png).convert("RGB"))

    folder = comfy.base / "input" / "imported"
    folder.mkdir(parents=True, exist_ok=True)
    result = rc.import_png(png, folder / "saveimage.raiiaf")
    assert result.kind == "comfyui", result
    art = rc.open(folder / "saveimage.raiiaf")
    art.verify()
    assert art.image_bytes() == png.read_bytes()
    assert art.metadata["host"]["comfyui"]["workflow"] == workflow
    record = art.metadata["runs"][0]
    assert (record["source"], record["class_type"], record["seed"], record["steps"]) == (
        "reconstructed", "KSampler", SEED, STEPS)
    assert torch.equal(art.load_tensor("run0.noise", framework="torch"), reconstruct_noise([1, 4, 8, 8], SEED))
    shared = rc.export_png(folder / "saveimage.raiiaf", folder / "shared.png")
    listed = comfy.request("/object_info/RaiiafLoad")["RaiiafLoad"]["input"]["required"]["file"][0]
    assert "imported/saveimage.raiiaf" in listed and "imported/shared.png" in listed
    assert f"{item['subfolder']}/{item['filename']} [output]" not in listed  # SaveImage's PNG holds no .raiiaf

    for name in ("imported/saveimage.raiiaf", "imported/shared.png"):
        outputs = comfy.run(replay_graph(name, f"replay/{Path(name).stem}", 0, scheduler_steps=STEPS))
        for node in ("8", "11"):  # Load Replay -> SamplerCustomAdvanced, and Resample
            assert np.array_equal(saved_pixels(comfy, outputs, node, 0), original), f"{name}: pixels of {node}"
        assert outputs["9"]["raiiaf_identical"] == [None]  # SaveImage kept no latent to compare with
    assert rc.import_png(shared, folder / "back.raiiaf").kind == "raiiaf"
    assert (folder / "back.raiiaf").read_bytes() == (folder / "saveimage.raiiaf").read_bytes()


def zeroed_conditioning(graph: dict, encoders: tuple, users: tuple) -> dict:
    """`graph` with both text encodings zeroed (ConditioningZeroOut), so the conditioning is the same whatever
    torch settings the text encoder ran under; `users` are the nodes that take positive and negative."""
    for node, encoder in zip(("30", "31"), encoders, strict=True):
        graph[node] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": [encoder, 0]}}
    for user in users:
        graph[user]["inputs"].update(positive=["30", 0], negative=["31", 0])
    return graph


def test_another_thread_count_is_recreated_by_resample_and_the_launch_is_recorded(comfy, tmp_path_factory):
    """A file made by this server, resampled in a second one of the same ComfyUI that computes with another
    torch thread count: Raiiaf Resample samples at the recorded count and gives the stored latent, while
    SamplerCustomAdvanced, which nothing recreates for, samples at this server's count. Resample recreates for
    its own sampling only: the text encoders run before it, so the conditioning is zeroed on both sides."""
    graph = zeroed_conditioning(capture_graph("conditions/threads", sampler="euler_ancestral"), ("6", "7"), ("3",))
    (path,) = saved_files(comfy, comfy.run(graph))
    art = rc.open(path)
    launch = art.metadata["host"]["comfyui"]["launch"]
    assert launch["args"]["--cpu"] is True  # comfyui_server starts every ComfyUI with --cpu
    assert launch["args"]["--deterministic"] is False and launch["args"]["--fast"] == []
    assert isinstance(launch["attention"], str) and launch["attention"].startswith("attention_")
    assert art.metadata["runs"][0]["model"]["dtype"] == "float32"
    threads = art.environment["torch"]["num_threads"]
    other = 1 if threads > 1 else 2
    target = next(t for t in TARGETS if t.version == comfy.version)
    with start(tmp_path_factory.mktemp(f"comfyui-{target.version}-threads"), comfy=target.comfyui,
               python=target.python, checkpoint=target.checkpoint, env={"RAIIAF_TEST_TORCH_THREADS": str(other)},
               extra_nodes=[HERE / "torch_threads"]) as second:
        name = second.upload(path)
        replay = zeroed_conditioning(replay_graph(name, "replay/threads", 0), ("3", "4"), ("5", "9"))
        outputs = second.run(replay)
        stored = art.load_tensor("latent", framework="torch")
        report = outputs["9"]["raiiaf_report"][0]
        assert torch.equal(saved_latent(second, outputs, "21"), stored), report
        assert outputs["9"]["raiiaf_identical"] == [True], report
        assert f"recreated for this call: torch.num_threads {other} -> {threads}" in report
        # Load Replay cannot set the thread count of the sampler downstream: it names the difference.
        assert f"torch.num_threads: {threads} -> {other}" in outputs["1"]["raiiaf_report"][0]
        assert not torch.equal(saved_latent(second, outputs, "20"), stored)  # so the thread count matters here
