"""The node classes: what they declare to ComfyUI, and their functions run on real tensors and files.

ComfyUI is not installed here. The one module that talks to ComfyUI, raiiaf_nodes.comfy_bridge, is
replaced by a stand-in with the same functions over temporary folders; everything else is the real code.
The real bridge is exercised by tests/comfyui_real against a real ComfyUI.
"""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

import raiiaf_core as rc
import raiiaf_nodes
from raiiaf_nodes import nodes
from raiiaf_nodes.capture import CaptureStore
from raiiaf_nodes.errors import NodeInputError, NoiseShapeError
from raiiaf_nodes.noise import StoredNoise, reconstruct_noise

REPO = Path(__file__).resolve().parents[1]
ENV = {"schema_version": 1, "python": {"version": "3.11.7"}}


def sample_euler_ancestral():
    """Named like k-diffusion's sampler function."""


class StandInBridge(types.ModuleType):
    """comfy_bridge's functions over temporary folders; sampling is a fixed function of its inputs."""

    def __init__(self, root: Path):
        super().__init__("raiiaf_nodes.comfy_bridge")
        self.root = root
        self.context = ("prompt-1", None)
        self.wrappers = []
        self.failures = []
        self.samples = []
        self.sigma_requests = []
        self.launch = {"args": {"--cpu": True, "--fast": []}, "attention": "attention_pytorch"}
        self.dtypes = {"dtype": "float32", "manual_cast_dtype": None}

    def launch_settings(self):
        return json.loads(json.dumps(self.launch))

    def model_dtypes(self, model):
        return dict(self.dtypes)

    def input_dir(self):
        return str(self.root / "input")

    def output_dir(self):
        return str(self.root / "output")

    def temp_dir(self):
        return str(self.root / "temp")

    def user_dir(self):
        return str(self.root / "user")

    def model_path(self, folder, name):
        path = self.root / "models" / folder / name
        return str(path) if path.is_file() else None

    def metadata_enabled(self):
        return True

    def comfyui_version(self):
        return "0.3.64"

    def executing(self):
        return self.context

    def progress(self, node_id):
        return lambda done, total: None

    def blocked(self, message):
        return ("blocked", message)

    NOISE_MAKER = "stand-in prepare_noise"

    def capture_model(self, model, on_run, on_failure):
        # ComfyUI would call these from its OUTER_SAMPLE wrapper; the test calls them the same way.
        self.wrappers.append(on_run)
        self.failures.append(on_failure)
        return {"model": model, "captured": True}

    def prepare_noise(self, shape, seed, batch_index, dtype):
        return reconstruct_noise(shape, seed, batch_index, dtype) * 2  # distinct from the local copy

    def ksampler_sigmas(self, model, *, steps, sampler_name, scheduler, denoise):
        self.sigma_requests.append(dict(steps=steps, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise))
        return torch.linspace(10.0, 0.0, steps + 1)

    def make_sampler(self, name, options, inpaint_options):
        if name not in ("euler", "euler_ancestral", "dpmpp_2m_sde"):
            raise NodeInputError(f"the stored sampler {name!r} is not one of this ComfyUI's samplers")
        return {"sampler": name, "options": options, "inpaint": inpaint_options}

    def sample(self, model, positive, negative, *, noise, sigmas, seed, sampler, cfg, latent_in, denoise_mask):
        self.samples.append(dict(noise=noise, sigmas=sigmas, seed=seed, sampler=sampler, cfg=cfg, latent_in=latent_in,
                                 threads=torch.get_num_threads(),
                                 deterministic=torch.are_deterministic_algorithms_enabled()))
        return fake_sampling(noise, sigmas, latent_in, cfg)


def fake_sampling(noise, sigmas, latent_in, cfg):
    return latent_in + noise * sigmas[0] / (1 + cfg)


@pytest.fixture
def bridge(tmp_path, monkeypatch):
    stand_in = StandInBridge(tmp_path)
    for name in ("input", "output", "temp", "user", "models/checkpoints"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "raiiaf_nodes.comfy_bridge", stand_in)
    monkeypatch.setattr(raiiaf_nodes, "comfy_bridge", stand_in, raising=False)
    monkeypatch.setattr(rc, "capture_environment", lambda: dict(ENV))
    monkeypatch.setattr(nodes, "STORE", CaptureStore())  # runs of one test must not reach another's save
    return stand_in


@pytest.fixture
def graph():
    return json.loads((REPO / "workflows" / "raiiaf_capture_save_api.json").read_text())


def test_declarations_are_complete():
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "raiiaf" and len(cls.DESCRIPTION) > 40
        assert callable(getattr(cls, cls.FUNCTION))
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        if cls.RETURN_TYPES:
            assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert nodes.RaiiafSave.OUTPUT_NODE and nodes.RaiiafSave.RETURN_TYPES == ()
    assert nodes.RaiiafCapture.RETURN_TYPES == ("MODEL",)
    assert nodes.RaiiafResample.RETURN_TYPES == ("LATENT",)


def test_input_types_have_tooltips(bridge):
    for cls in nodes.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, (_, options) in spec.get(group, {}).items():
                assert options.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
    save = nodes.RaiiafSave.INPUT_TYPES()
    assert save["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}


def test_capture_save_load_and_resample_round_trip(bridge, graph):
    (bridge.root / "models" / "checkpoints" / graph["4"]["inputs"]["ckpt_name"]).write_bytes(b"weights")
    (model,) = nodes.RaiiafCapture().capture("the model")
    assert model == {"model": "the model", "captured": True}
    # What ComfyUI's OUTER_SAMPLE wrapper reports for KSampler node 3 in this queue run.
    noise, sigmas = reconstruct_noise([1, 4, 8, 8], 42), torch.linspace(14.6, 0, 5)
    latent_in = torch.zeros(1, 4, 8, 8)
    output = fake_sampling(noise, sigmas, latent_in, 7.0)
    bridge.context = ("prompt-1", "3")
    bridge.wrappers[0](noise=noise, sigmas=sigmas, seed=42, sampler_function=sample_euler_ancestral,
                       sampler_options={}, inpaint_options={}, cfg=7.0, guider="CFGGuider", denoise_mask=None,
                       latent_image=latent_in, model={"config": "SD15"}, output=output, prompt_id="prompt-1",
                       node_id="3")
    bridge.context = ("prompt-1", "9")
    ui = nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "raiiaf/fox", latent={"samples": output}, tags="t",
                                 prompt=graph, extra_pnginfo={"workflow": {"nodes": []}}, unique_id="9")
    assert ui["ui"]["raiiaf_files"] == ["raiiaf/fox_00001_.raiiaf"]
    assert ui["ui"]["images"] == [{"filename": "fox_00001_.raiiaf.png", "subfolder": "raiiaf_previews/raiiaf",
                                   "type": "temp"}]
    saved = bridge.root / "output" / "raiiaf" / "fox_00001_.raiiaf"
    assert rc.open(saved).metadata["model"]["files"][0]["sha256"] is not None
    assert (bridge.root / "user" / "raiiaf" / "model_sha256.json").is_file()

    file = "raiiaf/fox_00001_.raiiaf [output]"
    assert file in nodes.RaiiafLoad.INPUT_TYPES()["required"]["file"][0]
    assert nodes.RaiiafLoad.VALIDATE_INPUTS(file) is True
    assert nodes.RaiiafLoad.IS_CHANGED(file, 0) == nodes.RaiiafLoad.IS_CHANGED(file, 0)
    loaded = nodes.RaiiafLoad().load(file, 0)
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, loaded["result"], strict=True))
    assert isinstance(outs["noise"], StoredNoise) and outs["noise"].seed == 42
    assert torch.equal(outs["noise"].generate_noise(outs["latent_in"]), noise)
    assert torch.equal(outs["sigmas"], sigmas)
    assert outs["sampler"] == {"sampler": "euler_ancestral", "options": {}, "inpaint": {}}
    assert torch.equal(outs["latent_in"]["samples"], latent_in) and torch.equal(outs["latent"]["samples"], output)
    assert outs["image"].shape == (1, 64, 64, 3)
    assert (outs["seed"], outs["steps"], outs["cfg"], outs["sampler_name"], outs["scheduler"]) == (
        42, 4, 7.0, "euler_ancestral", "karras")
    assert outs["positive"] == graph["6"]["inputs"]["text"] and outs["negative"] == graph["7"]["inputs"]["text"]
    assert loaded["ui"]["raiiaf_report"][0].startswith("environment")
    (preview,) = loaded["ui"]["images"]  # the node's preview: the file's picture (raiiaf_core.view)
    assert preview["type"] == "temp" and preview["subfolder"] == "raiiaf_previews/view"
    shown = Image.open(bridge.root / "temp" / preview["subfolder"] / preview["filename"])
    assert shown.tobytes() == rc.open(saved).view().tobytes()

    result = nodes.RaiiafResample().resample("the model", "pos", "neg", file, 0)
    assert torch.equal(result["result"][0]["samples"], output)
    assert result["ui"]["raiiaf_identical"] == [True]
    assert result["ui"]["raiiaf_report"][0].startswith("run 0: bit-identical")
    used = bridge.samples[-1]
    assert used["seed"] == 42 and used["cfg"] == 7.0 and torch.equal(used["sigmas"], sigmas)


def test_without_capture_the_noise_comes_from_the_bridge_and_resample_rebuilds_the_sigmas(bridge, graph):
    bridge.context = ("prompt-2", "9")
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "plain", prompt=graph, unique_id="9")  # no capture, no latent
    name = "plain_00001_.raiiaf [output]"
    run = rc.open(bridge.root / "output" / "plain_00001_.raiiaf").metadata["runs"][0]
    # Inside ComfyUI the save node rebuilds the noise with ComfyUI's own prepare_noise (through the bridge).
    assert run["rebuilt_by"] == {"function": "stand-in prepare_noise", "comfyui_version": "0.3.64"}
    loaded = nodes.RaiiafLoad().load(name, 0)
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, loaded["result"], strict=True))
    assert torch.equal(outs["noise"].noise, reconstruct_noise([1, 4, 64, 64], 42) * 2)
    assert outs["sigmas"][0] == "blocked" and "Raiiaf Capture Sampling" in outs["sigmas"][1]
    assert outs["latent"][0] == "blocked" and "latent input" in outs["latent"][1]
    with pytest.raises(NoiseShapeError):
        outs["noise"].generate_noise({"samples": torch.zeros(1, 4, 8, 8)})
    # Resample takes a KSampler's sigmas from ComfyUI's KSampler for the recorded widgets.
    result = nodes.RaiiafResample().resample("m", "p", "n", name, 0)
    assert bridge.sigma_requests == [dict(steps=20, sampler_name="euler_ancestral", scheduler="karras", denoise=1.0)]
    assert torch.equal(bridge.samples[-1]["sigmas"], torch.linspace(10.0, 0.0, 21))
    assert result["ui"]["raiiaf_identical"] == [None]
    assert "cannot be checked: the file holds no sampled latent" in result["ui"]["raiiaf_report"][0]


def test_resample_refuses_rebuilt_noise_of_a_sampler_whose_sigmas_came_from_other_nodes(bridge):
    graph = json.loads((REPO / "workflows" / "raiiaf_replay_api.json").read_text())
    graph["6"]["inputs"]["noise"] = ["30", 0]
    graph["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    graph["6"]["inputs"]["latent_image"] = ["32", 0]
    graph["32"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["31"] = {"class_type": "RaiiafSave", "inputs": {"images": ["7", 0], "latent": ["6", 0]}}
    bridge.context = ("prompt-4", "31")
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "custom", latent={"samples": torch.zeros(1, 4, 8, 8)},
                            prompt=graph, unique_id="31")
    with pytest.raises(NodeInputError, match="not made by a KSampler"):
        nodes.RaiiafResample().resample("m", "p", "n", "custom_00001_.raiiaf [output]", 0)


def sample_my_custom():
    """A sampler function ComfyUI does not ship."""


def test_load_blocks_a_sampler_this_comfyui_does_not_have(bridge, graph):
    bridge.context = ("prompt-3", "3")
    nodes.RaiiafCapture().capture("m")
    bridge.wrappers[0](noise=torch.zeros(1, 4, 8, 8), sigmas=torch.ones(3), seed=1, sampler_function=sample_my_custom,
                       latent_image=torch.zeros(1, 4, 8, 8), prompt_id="prompt-3", node_id="3")
    bridge.context = ("prompt-3", "9")
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "custom", prompt=graph, unique_id="9")
    loaded = nodes.RaiiafLoad().load("custom_00001_.raiiaf [output]", 0)
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, loaded["result"], strict=True))
    assert outs["sampler"][0] == "blocked" and "'my_custom'" in outs["sampler"][1]
    assert outs["sampler_name"] == "euler_ancestral"  # the graph's name, for picking it by hand
    with pytest.raises(NodeInputError, match="my_custom"):
        nodes.RaiiafResample().resample("m", "p", "n", "custom_00001_.raiiaf [output]", 0)


def test_file_inputs_refuse_escapes_and_missing_files(bridge):
    assert "outside" in nodes.RaiiafLoad.VALIDATE_INPUTS("../../etc/passwd")
    assert "no such" in nodes.RaiiafLoad.VALIDATE_INPUTS("missing.raiiaf")
    with pytest.raises(NodeInputError):
        nodes.RaiiafLoad().load("../x.raiiaf", 0)


def test_comfyui_can_load_the_repository_as_a_custom_node(tmp_path):
    # As ComfyUI does: import custom_nodes/<dir>/__init__.py by file location, with custom_nodes not on
    # sys.path and this repository not installed; run in a fresh interpreter so sys.path starts clean.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('/comfy/custom_nodes/raiiaf', {str(REPO / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "import raiiaf_core\n"
        "print(sorted(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY, 'comfy' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['RaiiafCapture',", "'RaiiafLoad',", "'RaiiafResample',", "'RaiiafSave']",
                                   "./raiiaf_nodes/web", "False"]
    assert (REPO / "raiiaf_nodes" / "web" / "raiiaf.js").is_file()


def _workflows():
    for api_path in sorted((REPO / "workflows").glob("*_api.json")):
        ui_path = api_path.with_name(api_path.name.replace("_api.json", ".json"))
        yield pytest.param(json.loads(api_path.read_text()), json.loads(ui_path.read_text()), id=ui_path.stem)


@pytest.mark.parametrize("api, ui", list(_workflows()))
def test_workflow_nodes_exist_with_the_inputs_the_json_gives(bridge, api, ui):
    ours = [n for n in api.values() if n["class_type"].startswith("Raiiaf")]
    assert ours
    for node in ours:
        cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(declared), node
        assert set(spec.get("required", {})) <= set(node["inputs"]), node
        for name, value in node["inputs"].items():
            kind = declared[name][0]
            if isinstance(value, list):  # a link: the source's output type must be what the input takes
                source = api[value[0]]
                if source["class_type"].startswith("Raiiaf"):
                    assert nodes.NODE_CLASS_MAPPINGS[source["class_type"]].RETURN_TYPES[value[1]] == kind
            elif kind == "INT":
                assert isinstance(value, int)
            elif kind == "STRING":
                assert isinstance(value, str)
    for node in api.values():  # links leaving our nodes point at outputs that exist
        for value in node["inputs"].values():
            if isinstance(value, list) and api[value[0]]["class_type"].startswith("Raiiaf"):
                assert value[1] < len(nodes.NODE_CLASS_MAPPINGS[api[value[0]]["class_type"]].RETURN_TYPES)


@pytest.mark.parametrize("api, ui", list(_workflows()))
def test_ui_and_api_formats_describe_the_same_graph(api, ui):
    ui_nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: v["class_type"] for k, v in api.items()} == {k: v["type"] for k, v in ui_nodes.items()}
    api_links = {(value[0], value[1], node_id, name) for node_id, node in api.items()
                 for name, value in node["inputs"].items() if isinstance(value, list)}
    ui_links = set()
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        target = ui_nodes[str(dst)]["inputs"][dst_slot]
        assert target["link"] == link_id and target["type"] == kind
        assert ui_nodes[str(src)]["outputs"][slot]["type"] == kind
        ui_links.add((str(src), slot, str(dst), target["name"]))
    assert ui_links == api_links
    for node_id, node in api.items():
        if node["class_type"].startswith("Raiiaf"):
            widgets = [v for v in node["inputs"].values() if not isinstance(v, list)]
            assert ui_nodes[node_id]["widgets_values"] == widgets
    assert ui["last_link_id"] == len(ui["links"]) and ui["last_node_id"] == max(int(k) for k in api)


def test_comfyui_can_load_the_pip_installed_nodes_through_a_one_line_file(tmp_path):
    # After `pip install`, custom_nodes/raiiaf.py imports the installed package (here: the repo on PYTHONPATH).
    stub = tmp_path / "custom_nodes" / "raiiaf.py"
    stub.parent.mkdir()
    stub.write_text("from raiiaf_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, WEB_DIRECTORY\n")
    code = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location({str(stub.with_suffix(''))!r}, {str(stub)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "web = os.path.join(os.path.dirname(spec.origin), module.WEB_DIRECTORY)\n"
        "print(len(module.NODE_CLASS_MAPPINGS), os.path.isfile(os.path.join(web, 'raiiaf.js')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "True"]


def _captured_ksampler(bridge, prompt_id: str):
    """KSampler node 3 run with seed 42 under the capture node, as ComfyUI's OUTER_SAMPLE wrapper reports it;
    the bridge then executes save node 9. Returns (noise, sigmas, output)."""
    nodes.RaiiafCapture().capture("the model")
    noise, sigmas = reconstruct_noise([1, 4, 8, 8], 42), torch.linspace(14.6, 0, 5)
    output = fake_sampling(noise, sigmas, torch.zeros(1, 4, 8, 8), 7.0)
    bridge.context = (prompt_id, "3")
    bridge.wrappers[0](noise=noise, sigmas=sigmas, seed=42, sampler_function=sample_euler_ancestral,
                       sampler_options={}, inpaint_options={}, cfg=7.0, guider="CFGGuider", denoise_mask=None,
                       latent_image=torch.zeros(1, 4, 8, 8), model={"config": "SD15"}, output=output,
                       prompt_id=prompt_id, node_id="3")
    bridge.context = (prompt_id, "9")
    return noise, sigmas, output


def test_save_writes_the_shareable_png_and_the_replay_nodes_take_it(bridge, graph):
    noise, sigmas, output = _captured_ksampler(bridge, "prompt-1")
    assert nodes.RaiiafSave.INPUT_TYPES()["optional"]["save_as"][0] == [".raiiaf", "PNG", "both"]
    ui = nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "raiiaf/fox", latent={"samples": output}, save_as="both",
                                 prompt=graph, extra_pnginfo={"workflow": {"nodes": []}}, unique_id="9")
    assert ui["ui"]["raiiaf_files"] == ["raiiaf/fox_00001_.raiiaf", "raiiaf/fox_00001_.png"]
    file = "raiiaf/fox_00001_.png [output]"
    assert file in nodes.RaiiafLoad.INPUT_TYPES()["required"]["file"][0]
    assert nodes.RaiiafLoad.VALIDATE_INPUTS(file) is True
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, nodes.RaiiafLoad().load(file, 0)["result"], strict=True))
    assert torch.equal(outs["noise"].generate_noise(outs["latent_in"]), noise)
    assert torch.equal(outs["sigmas"], sigmas) and torch.equal(outs["latent"]["samples"], output)
    result = nodes.RaiiafResample().resample("the model", "pos", "neg", file, 0)
    assert result["ui"]["raiiaf_identical"] == [True]


def test_save_node_noise_storage_recipe_loads_the_same_noise(bridge, graph):
    assert nodes.RaiiafSave.INPUT_TYPES()["optional"]["noise_storage"][0] == ["raw", "recipe"]
    bridge.context = ("prompt-3", "9")
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "small", noise_storage="recipe", prompt=graph, unique_id="9")
    art = rc.open(bridge.root / "output" / "small_00001_.raiiaf")
    # The bridge's stand-in prepare_noise doubles the seed's draw: no seed recipe gives it, so it stays raw.
    assert art.tensor_stored_as("run0.noise") == "tensor"
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, nodes.RaiiafLoad().load("small_00001_.raiiaf [output]", 0)["result"],
                    strict=True))
    assert torch.equal(outs["noise"].noise, reconstruct_noise([1, 4, 64, 64], 42) * 2)
    # Noise the capture node saw KSampler draw from seed 42 is stored as its recipe.
    noise, _, output = _captured_ksampler(bridge, "prompt-4")
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), "small", latent={"samples": output}, noise_storage="recipe",
                            prompt=graph, unique_id="9")
    art = rc.open(bridge.root / "output" / "small_00002_.raiiaf")
    assert art.tensor_stored_as("run0.noise") == "tensor_recipe" and art.metadata["noise"]["source"] == "captured"
    outs = dict(zip(nodes.RaiiafLoad.RETURN_NAMES, nodes.RaiiafLoad().load("small_00002_.raiiaf [output]", 0)["result"],
                    strict=True))
    assert torch.equal(outs["noise"].generate_noise(outs["latent_in"]), noise)


def _captured_and_saved(bridge, graph, prefix: str, model: dict) -> str:
    noise, sigmas = reconstruct_noise([1, 4, 8, 8], 42), torch.linspace(14.6, 0, 5)
    latent_in = torch.zeros(1, 4, 8, 8)
    nodes.RaiiafCapture().capture("the model")
    bridge.context = ("prompt-1", "3")
    bridge.wrappers[-1](noise=noise, sigmas=sigmas, seed=42, sampler_function=sample_euler_ancestral,
                        sampler_options={}, inpaint_options={}, cfg=7.0, guider="CFGGuider", denoise_mask=None,
                        latent_image=latent_in, model=model, output=fake_sampling(noise, sigmas, latent_in, 7.0),
                        prompt_id="prompt-1", node_id="3")
    bridge.context = ("prompt-1", "9")
    output = fake_sampling(noise, sigmas, latent_in, 7.0)
    nodes.RaiiafSave().save(torch.rand(1, 64, 64, 3), prefix, latent={"samples": output}, prompt=graph,
                            unique_id="9")
    return f"{prefix}_00001_.raiiaf [output]"


def test_resample_samples_under_the_recorded_threads_and_determinism_and_names_launch_remedies(bridge, graph,
                                                                                             monkeypatch):
    threads = torch.get_num_threads()
    recorded = {**ENV, "torch": {"num_threads": threads + 1}, "determinism": {"deterministic_algorithms": True}}
    monkeypatch.setattr(rc, "capture_environment", lambda: json.loads(json.dumps(recorded)))
    bridge.launch = {"args": {"--cpu": True, "--use-pytorch-cross-attention": True, "--fp8_e4m3fn-unet": False,
                              "--fast": []}, "attention": "attention_pytorch"}
    file = _captured_and_saved(bridge, graph, "raiiaf/threads", {"config": "SD15", "dtype": "float16"})
    saved = rc.open(bridge.root / "output" / "raiiaf" / "threads_00001_.raiiaf")
    assert saved.metadata["host"]["comfyui"]["launch"] == bridge.launch
    assert saved.metadata["runs"][0]["model"]["dtype"] == "float16"

    # This ComfyUI was started differently, and this process runs other torch settings.
    bridge.launch = {"args": {"--cpu": True, "--use-pytorch-cross-attention": False, "--fp8_e4m3fn-unet": True,
                              "--fast": ["fp16_accumulation"]}, "attention": "attention_split"}
    monkeypatch.setattr(rc, "capture_environment", lambda: {**ENV, "torch": {"num_threads": torch.get_num_threads()},
                                                            "determinism": {"deterministic_algorithms":
                                                                            torch.are_deterministic_algorithms_enabled()}})
    result = nodes.RaiiafResample().resample("the model", "pos", "neg", file, 0)
    assert (bridge.samples[-1]["threads"], bridge.samples[-1]["deterministic"]) == (threads + 1, True)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, False)
    report = result["ui"]["raiiaf_report"][0]
    assert result["ui"]["raiiaf_identical"] == [True]
    assert (f"recreated for this call: torch.num_threads {threads} -> {threads + 1}; "
            "determinism.deterministic_algorithms False -> True") in report
    assert "remedy: start ComfyUI with --use-pytorch-cross-attention as the original did" in report
    assert "remedy: start ComfyUI without --fp8_e4m3fn-unet, as the original was started" in report
    assert "remedy: start ComfyUI without --fast fp16_accumulation, as the original was started" in report
    assert ("remedy: the original ComfyUI attended with attention_pytorch, this one with attention_split: start "
            "ComfyUI with --use-pytorch-cross-attention") in report
    assert "remedy: the original model's weights were float16, this one's float32" in report
    assert report.endswith("environment: identical")  # what was recreated no longer differs

    # Load Replay cannot set anything for the sampler downstream: it says what differs and what to do.
    loaded = nodes.RaiiafLoad().load(file, 0)["ui"]["raiiaf_report"][0]
    assert "remedy: start ComfyUI with --use-pytorch-cross-attention as the original did" in loaded
    assert f"[possible] torch.num_threads: {threads + 1} -> {threads}" in loaded


def test_a_differing_resample_that_nothing_recorded_explains_says_so(bridge, graph, monkeypatch):
    file = _captured_and_saved(bridge, graph, "raiiaf/odd", {"config": "SD15", "dtype": "float32"})
    bridge.sample = lambda model, positive, negative, **kw: fake_sampling(kw["noise"], kw["sigmas"], kw["latent_in"],
                                                                          kw["cfg"]) + 1e-3
    result = nodes.RaiiafResample().resample("the model", "pos", "neg", file, 0)
    report = result["ui"]["raiiaf_report"][0]
    assert result["ui"]["raiiaf_identical"] == [False]
    assert "environment: no recorded difference explains this" in report
    assert "environment: identical" not in report
