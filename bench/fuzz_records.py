"""Semantic fuzzing: real diffusers and ComfyUI records with hostile values, every checksum valid.

    python -m bench.fuzz --semantic --minutes 26 --workers 1      # the run whose figures the README quotes
    python -m bench.fuzz --semantic --replay 17 --seed 1          # one input again, with its traceback

The seeds are real files: captures of a tiny diffusers pipeline (raiiaf_diffusers.tiny + RaiiafCapture) and
ComfyUI records written by raiiaf_nodes.save the way Raiiaf Save writes them (captured runs, two runs, noise
rebuilt from a KSampler graph). Each input decodes one, edits its record -- values set to huge, negative or
NaN-like numbers and texts, lists turned into objects and back, deep nesting, long texts and lists, values of
one field moved to another, tensor names that do not exist or name another tensor -- and its payloads (stored
tensors reshaped, cut, widened, cast, swapped or dropped; the image swapped, resized, re-encoded or dropped),
then writes it again with raiiaf_core.write, so every checksum is valid (metadata the writer refuses is
stored as is, like a file from another tool).

Each input then goes through what bench/fuzz.py runs (rc.open, every accessor, verify, inspect/verify/extract/
diff against its seed) and further through rc.drift, raiiaf_core.view.render, raiiaf_diffusers.replay on the
tiny pipeline, and the ComfyUI node logic: Raiiaf Load Replay's and Raiiaf Resample's functions, run with the
real comfy_bridge over stand-ins for ComfyUI's modules (folders in a temporary directory, sampling a fixed
function of its inputs), for every run the file holds.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import random
import sys
import tempfile
import types
from pathlib import Path

from . import fuzz

REPO = fuzz.REPO
GRAPH_FILE = REPO / "workflows" / "raiiaf_capture_save_api.json"
LONG = [300, 5000, 100_000]
TEXTS = ["", "NaN", "Infinity", "-Infinity", "1e400", "-1", "0", "3", "0x10", "none", "cpu", "cuda:99", "float16",
         "complex128", "noise", "latent", "final_latents", "run0.noise", "run0.sigmas", "rng.generator.0.at_start",
         "euler", "dpm_adaptive", "karras", "KSampler", "DPMSolverMultistepScheduler", "bogus", "os.system",
         "diffusers.schedulers.scheduling_ddim.DDIMScheduler", "\x1b]52;c;aGk=\x07", "\u202eevil", "\ud800", "../x"]


# -- seeds: real files -----------------------------------------------------------------------------------

def _diffusers_seed(folder: Path, seed: int, store_final_latents: bool) -> bytes:
    import torch

    from raiiaf_diffusers import RaiiafCapture, tiny

    pipe = tiny_pipe()
    capture = RaiiafCapture(folder / f"diffusers-{seed}.raiiaf", store_final_latents=store_final_latents)
    with capture.recording(pipe):
        pipe("a painting of a cat", num_inference_steps=3, generator=torch.Generator().manual_seed(seed),
             callback_on_step_end=capture, **{**tiny.CALL_ARGS["sd"], "height": 32, "width": 32})
    return Path(capture.paths[0]).read_bytes()


def _comfyui_seed(folder: Path, name: str, runs: list, latent) -> bytes:
    import torch

    from raiiaf_nodes.capture import CaptureStore
    from raiiaf_nodes.save import SaveContext, save_images

    store = CaptureStore()
    for run in runs:
        store.add(run)
    graph = json.loads(GRAPH_FILE.read_text())
    if len(runs) == 2:  # a second sampler after the first, as a hires-fix pass
        graph["13"] = dict(graph["3"], inputs=dict(graph["3"]["inputs"], latent_image=["3", 0]))
        graph["8"]["inputs"]["samples"] = ["13", 0]
    context = SaveContext(output_dir=str(folder / name), prompt=graph, node_id="9", prompt_id="p",
                          comfyui_version="0.8.0")
    images = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(len(runs)))
    (item,) = save_images(images, "rec", context, latent=latent, store=store, environment=fuzz.FIXED_ENV)
    return item.path.read_bytes()


def _comfyui_run(node_id: str, shape, seed: int, output, latent_image=None, sampler="euler", options=None):
    import torch

    from raiiaf_nodes.capture import make_run
    from raiiaf_nodes.noise import reconstruct_noise

    def function():
        """Named like k-diffusion's sampler function, which is what a capture records."""
    function.__name__ = f"sample_{sampler}"
    return make_run(noise=reconstruct_noise(list(shape), seed), sigmas=torch.linspace(14.6, 0, 5), seed=seed,
                    sampler_function=function, sampler_options=options, cfg=7.0, guider="CFGGuider",
                    latent_image=torch.zeros(shape) if latent_image is None else latent_image, output=output,
                    prompt_id="p", node_id=node_id)


def make_seeds(folder: Path) -> dict:
    """{name: bytes} of real records: diffusers captures and ComfyUI saves. Deterministic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers replay them (see Exercise)
    try:
        return _make_seeds(folder)
    finally:
        torch.set_num_threads(threads)


def _make_seeds(folder: Path) -> dict:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    out1 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out2 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    return {
        "diffusers_latents": _diffusers_seed(folder, 7, True),
        "diffusers_plain": _diffusers_seed(folder, 8, False),
        "comfyui_captured": _comfyui_seed(folder, "c1", [_comfyui_run("3", (1, 4, 8, 8), 42, out1)],
                                          {"samples": out1}),
        "comfyui_two_runs": _comfyui_seed(folder, "c2", [
            _comfyui_run("3", (1, 4, 8, 8), 42, out1, sampler="dpm_adaptive", options={"order": 2, "rtol": 0.05}),
            _comfyui_run("13", (1, 4, 16, 16), 43, out2, latent_image=torch.randn(1, 4, 16, 16),
                         sampler="euler_ancestral", options={"eta": 1.0})], {"samples": out2}),
        "comfyui_rebuilt": _comfyui_seed(folder, "c3", [], {"samples": out1}),  # noise rebuilt from the graph
    }


# -- decoding and re-writing a record ----------------------------------------------------------------------

class Parts:
    """A file taken apart: metadata, environment, tensors (torch), image bytes."""

    def __init__(self, data: bytes):
        import raiiaf_core as rc

        art = rc.open(io.BytesIO(data))
        self.metadata = copy.deepcopy(art.metadata)
        self.metadata.pop("schema_version", None)
        self.environment = copy.deepcopy(art.environment)
        self.tensors = {name: art.load_tensor(name, framework="torch") for name in art.tensor_names}
        self.image = art.image_bytes() if art.has_image else None

    def write(self, path: Path) -> bytes:
        """The file, every checksum computed by rc.write; metadata it refuses is put in as is afterwards."""
        import raiiaf_core as rc

        kwargs = dict(image=self.image, tensors=self.tensors, environment=self.environment)
        try:
            return rc.write(path, metadata=self.metadata, **kwargs).read_bytes()
        except (rc.MetadataError, RecursionError, ValueError):
            pass
        data = rc.write(path, metadata={}, **kwargs).read_bytes()
        chunks, payloads = fuzz.split_v2(data)
        [i] = [i for i, c in enumerate(chunks) if c["type"] == "metadata"]
        payloads[i] = json.dumps(self.metadata, separators=(",", ":")).encode("utf-8", "surrogatepass")
        chunks[i].update(codec="none", size=len(payloads[i]))
        return fuzz.assemble(chunks, payloads)


def _places(value, path=()):
    """Every (path, value) in a JSON tree, the root excepted."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return
    for key, item in items[:64]:
        yield path + (key,), item
        yield from _places(item, path + (key,))


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    if value is _DELETE:
        del tree[path[-1]]
    else:
        tree[path[-1]] = value


_DELETE = object()


def _nested(rng, value):
    depth = rng.choice([50, 150, 199, 250])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def hostile_value(rng: random.Random, old, tree):
    """A value for a field that held `old`: same type at an extreme, another type, another size."""
    roll = rng.random()
    if roll < 0.3 and isinstance(old, (int, float)) and not isinstance(old, bool):
        kind = rng.randrange(4)
        if kind == 0:
            return rng.choice([0, -1, 2**31, 2**63, 2**64, 10**30, 10**400, 1e300, -1e300, 5e-324, -0.0, float("nan"),
                               float("inf")])
        if kind == 1 or isinstance(old, int):
            return rng.choice([old * 10**rng.choice([3, 6, 9, 18]), -old, old + 1, old - 1])
        return rng.choice([old * 1e3, -old, old + 0.5, int(old) if math.isfinite(old) else 0])
    if roll < 0.45:
        return rng.choice(TEXTS + [str(old)[:200], str(old) * 2])
    if roll < 0.55:
        return rng.choice(["x", "é", "\x00", "\x1b[2J"]) * rng.choice(LONG)
    if roll < 0.65:  # lists <-> objects, a value wrapped or unwrapped
        if isinstance(old, list):
            return rng.choice([{str(i): v for i, v in enumerate(old)}, old[:1], old[1:], old[::-1], old + old, []])
        if isinstance(old, dict):
            return rng.choice([list(old.values()), list(old), [old], {}])
        return rng.choice([[old], {"value": old}, None, True, False])
    if roll < 0.72:
        return _nested(rng, old)
    if roll < 0.8:  # sizes
        size = rng.choice([1000, 100_000])
        return rng.choice([[old] * size, list(range(size)), {f"k{i}": old for i in range(min(size, 20_000))}])
    if roll < 0.92:  # a value from elsewhere in the same record
        places = list(_places(tree))
        return copy.deepcopy(rng.choice(places)[1]) if places else None
    return rng.choice([None, True, False, [], {}, [None], 0.5])


def mutate_metadata(rng: random.Random, meta: dict, focus: list) -> str:
    """One edit of the record; returns its name. `focus`: paths where the edits mostly go."""
    roots = [p for p in focus if _get(meta, p) is not None]
    root = rng.choice(roots) if roots and rng.random() < 0.8 else ()
    places = [(root + p, v) for p, v in _places(_get(meta, root))] if root else list(_places(meta))
    if not places:
        return "none"
    path, old = rng.choice(places)
    roll = rng.random()
    if roll < 0.1:
        _set(meta, path, _DELETE)
        return "delete"
    if roll < 0.17:
        parent = _get(meta, path[:-1])
        if isinstance(parent, dict):
            parent[rng.choice(["unknown_field", "latents", "timesteps", "sigmas", "extra", "noise_sampler",
                               "$tensor", "class"])] = hostile_value(rng, old, meta)
            return "add"
    _set(meta, path, hostile_value(rng, old, meta))
    return "value"


def _get(tree, path):
    for key in path:
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


def mutate_tensors(rng: random.Random, parts: Parts, seeds: dict) -> str:
    import torch

    if not parts.tensors:
        return "none"
    name = rng.choice(sorted(parts.tensors))
    t = parts.tensors[name]
    kind = rng.randrange(9)
    if kind == 0:
        shape = rng.choice([[-1], [1, -1], [t.shape[0], -1, 1] if t.dim() else [1], [*t.shape, 1]])
        parts.tensors[name] = t.reshape(shape).contiguous()
    elif kind == 1 and t.dim():
        parts.tensors[name] = t[: max(t.shape[0] // 2, 0)].contiguous() if rng.random() < 0.5 \
            else t.narrow(-1, 0, max(t.shape[-1] // 2, 1)).contiguous()
    elif kind == 2 and t.dim():
        parts.tensors[name] = torch.cat([t, t], dim=rng.choice([0, t.dim() - 1])).contiguous()
    elif kind == 3:
        parts.tensors[name] = t.to(rng.choice([torch.float16, torch.bfloat16, torch.float64, torch.int32,
                                               torch.uint8, torch.bool]))
    elif kind == 4:
        parts.tensors[name] = torch.zeros((0, *t.shape[1:]) if t.dim() else (0,), dtype=t.dtype)
    elif kind == 5 and t.is_floating_point():
        filled = t.clone()
        filled.view(-1)[: max(1, filled.numel() // 3)] = rng.choice([float("nan"), float("inf"), -1e30, 1e30])
        parts.tensors[name] = filled
    elif kind == 6:
        del parts.tensors[name]
    elif kind == 7:  # two tensors' contents swapped
        other = rng.choice(sorted(parts.tensors))
        parts.tensors[name], parts.tensors[other] = parts.tensors[other], t
    else:  # a tensor of the same name from another seed
        source = Parts(seeds[rng.choice(sorted(seeds))])
        if source.tensors:
            parts.tensors[name] = rng.choice(list(source.tensors.values()))
    return ["reshape", "cut", "widen", "cast", "empty", "nonfinite", "drop", "swap", "foreign"][kind]


def mutate_image(rng: random.Random, parts: Parts, seeds: dict) -> str:
    from PIL import Image

    kind = rng.randrange(4)
    if kind == 0:  # another seed's picture (a capture of another size or seed)
        parts.image = Parts(seeds[rng.choice(sorted(seeds))]).image
        return "swap"
    if kind == 3 or parts.image is None:
        parts.image = None
        return "drop"
    picture = Image.open(io.BytesIO(parts.image))
    if kind == 1:
        picture = picture.resize(rng.choice([(1, 1), (16, 16), (17, 33), (128, 128)]))
    buffer = io.BytesIO()
    fmt = rng.choice(["PNG", "WEBP", "JPEG"])
    picture.convert(rng.choice(["RGB", "L", "RGBA"]) if fmt != "JPEG" else "RGB").save(buffer, format=fmt)
    parts.image = buffer.getvalue()
    return "resize" if kind == 1 else "reencode"


FOCUS = {
    "diffusers": [("host", "diffusers", k) for k in ("call", "scheduler", "rng", "noise", "output", "final_latents",
                                                      "steps_run", "pipeline", "components")]
    + [("host", "diffusers"), ("batch",), ("model",)],
    "comfyui": [("runs", 0), ("runs", 1), ("runs",), ("host", "comfyui"), ("batch",), ("noise",)],
}


def generate(seed: int, index: int, seeds: dict):
    """(mutator name, bytes, Limits fields) of input `index` of the semantic run with this seed."""
    rng = random.Random(f"semantic:{seed}:{index}")
    name = rng.choice(sorted(seeds))
    target = name.split("_")[0]
    parts = Parts(seeds[name])
    edits = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        roll = rng.random()
        if roll < 0.7:
            edits.append("meta-" + mutate_metadata(rng, parts.metadata, FOCUS[target]))
        elif roll < 0.9:
            edits.append("tensor-" + mutate_tensors(rng, parts, seeds))
        else:
            edits.append("image-" + mutate_image(rng, parts, seeds))
    with tempfile.TemporaryDirectory(prefix="raiiaf-fuzz-gen-") as folder:
        data = parts.write(Path(folder) / "generated.raiiaf")
    return f"{target}:{'+'.join(sorted(set(edits)))}", data, {"seed_file": name}


def warm_up_seeds(seeds: dict) -> list:
    """One seed per target: enough to import everything and build the pipeline before the first input."""
    return list({name.split("_")[0]: data for name, data in sorted(seeds.items())}.values())


# -- ComfyUI stand-ins: the real comfy_bridge over fake ComfyUI modules -------------------------------------

def _k_diffusion_functions() -> dict:
    """Functions with the parameters of k-diffusion's samplers, which the bridge checks options against."""
    inf = float("inf")

    def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                     s_tmax=inf, s_noise=1.0):
        pass

    def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                               s_noise=1.0, noise_sampler=None):
        pass

    def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                            rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                            accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
        pass

    def dpm_adaptive_function(model, noise, sigmas, extra_args, callback, disable, **extra_options):
        pass  # ComfyUI's wrapper: forwards its options to sample_dpm_adaptive

    return {"euler": sample_euler, "euler_ancestral": sample_euler_ancestral,
            "dpm_adaptive": dpm_adaptive_function, "_k": {"sample_euler": sample_euler,
                                                          "sample_euler_ancestral": sample_euler_ancestral,
                                                          "sample_dpm_adaptive": sample_dpm_adaptive}}


class Blocked:
    """Stands for ComfyUI's ExecutionBlocker."""

    def __init__(self, message):
        self.message = message


def install_comfyui_stand_ins(root: Path):
    """Fake ComfyUI modules in sys.modules, folders under `root`; returns raiiaf_nodes.nodes over the real bridge."""
    import importlib

    import torch

    for name in ("input", "output", "temp", "user"):
        (root / name).mkdir(parents=True, exist_ok=True)
    functions = _k_diffusion_functions()

    class Sampler:
        def __init__(self, function, extra_options=None, inpaint_options=None):
            self.sampler_function, self.extra_options, self.inpaint_options = function, extra_options or {}, \
                inpaint_options or {}

    class KSampler:  # the sigmas ComfyUI's KSampler would compute: one more than the steps, stretched by denoise
        def __init__(self, model, steps, device, sampler, scheduler, denoise, model_options):
            total = steps if not denoise or denoise >= 1 else int(steps / denoise)
            self.sigmas = torch.linspace(14.6, 0, total + 1)[-(steps + 1):]

    def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                      disable_pbar=False, seed=None):
        # What SamplerCustomAdvanced needs of its inputs: noise and latent of one shape, sigmas to step over.
        return latent_image + noise * sigmas[0] / (1 + cfg)

    def module(name, **attrs):
        made = types.ModuleType(name)
        made.__dict__.update(attrs)
        return made

    names = ["euler", "euler_ancestral", "dpm_adaptive"]
    modules = {
        "comfy": module("comfy"),
        "comfy.patcher_extension": module("comfy.patcher_extension",
                                          WrappersMP=types.SimpleNamespace(OUTER_SAMPLE="outer_sample")),
        "comfy.sample": module("comfy.sample", sample_custom=sample_custom, prepare_noise=lambda latent, seed,
                               noise_inds=None: torch.randn(latent.size(), dtype=latent.dtype,
                                                            generator=torch.manual_seed(seed))),
        "comfy.samplers": module("comfy.samplers", KSAMPLER_NAMES=names, SAMPLER_NAMES=names + ["ddim", "uni_pc"],
                                 SCHEDULER_NAMES=["normal", "karras"], KSampler=KSampler,
                                 sampler_object=lambda name: Sampler(name),
                                 ksampler=lambda name, extra_options={}, inpaint_options={}: Sampler(
                                     functions[name], extra_options, inpaint_options)),
        "comfy.utils": module("comfy.utils", PROGRESS_BAR_ENABLED=False),
        "comfy.cli_args": module("comfy.cli_args", args=types.SimpleNamespace(disable_metadata=False,
                                                                              max_upload_size=100)),
        "comfy.k_diffusion": module("comfy.k_diffusion"),
        "comfy.k_diffusion.sampling": module("comfy.k_diffusion.sampling", **functions["_k"]),
        "folder_paths": module("folder_paths", get_input_directory=lambda: str(root / "input"),
                               get_output_directory=lambda: str(root / "output"),
                               get_temp_directory=lambda: str(root / "temp"),
                               get_user_directory=lambda: str(root / "user"), get_full_path=lambda f, n: None),
        "comfy_execution": module("comfy_execution"),
        "comfy_execution.graph_utils": module("comfy_execution.graph_utils", ExecutionBlocker=Blocked),
        "comfy_execution.utils": module("comfy_execution.utils", get_executing_context=lambda: None),
        "comfyui_version": module("comfyui_version", __version__="0.8.0"),
    }
    for name, made in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, made)
    sys.modules.update(modules)
    sys.modules.pop("raiiaf_nodes.comfy_bridge", None)
    importlib.import_module("raiiaf_nodes.comfy_bridge")
    return importlib.import_module("raiiaf_nodes.nodes")


# -- exercising replay and the node logic ----------------------------------------------------------------

_STATE: dict = {}


def tiny_pipe():
    """The tiny SD pipeline the diffusers seeds are captured with (built once per process)."""
    if "pipe" not in _STATE:
        from raiiaf_diffusers import tiny

        pipe = tiny.tiny_sd()
        pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        _STATE["pipe"] = pipe
    return _STATE["pipe"]


class Exercise(fuzz.Exercise):
    """bench.fuzz's read entry points, then drift, view, diffusers replay and the ComfyUI node functions."""

    def __init__(self, work: Path, reference: Path, limits: dict | None = None):
        limits = dict(limits or {})
        seed_file = limits.pop("seed_file", None)
        if seed_file is not None:
            reference = reference.with_name(f"{seed_file}.raiiaf")
        super().__init__(work, reference, limits)
        if "nodes" not in _STATE:
            import torch

            # One thread, as the seeds were captured: replays can be bit-exact, and the CPU time the parent
            # measures is the input's own (on a busy machine, torch's idle OpenMP threads spin for many seconds).
            torch.set_num_threads(1)
            # The nodes log each file's drift report as a warning: thousands of them would only fill the log.
            logging.getLogger("raiiaf_nodes").setLevel(logging.ERROR)
            # In the worker's scratch folder, which the parent removes even when it kills the worker.
            _STATE["comfy_root"] = work / "comfyui"
            _STATE["nodes"] = install_comfyui_stand_ins(_STATE["comfy_root"])
        self.nodes = _STATE["nodes"]

    def run(self, data: bytes) -> dict:
        import raiiaf_core as rc
        from raiiaf_core.view import render

        result = super().run(data)
        path = self.work / "input.raiiaf"
        ok, art = self.attempt("rc.open", lambda: rc.open(path))
        if ok:
            self.attempt("rc.drift", lambda: str(rc.drift(art.environment)))
            self.attempt("view.render", lambda: render(art).png())
        outcome = [result["outcome"]]
        outcome.append("replay " + self._replay(path))
        outcome.append("nodes " + self._nodes(data))
        return {"outcome": ", ".join(outcome)}

    def _replay(self, path: Path) -> str:
        from raiiaf_diffusers import replay

        ok, result = self.attempt("diffusers replay", lambda: replay(tiny_pipe(), path))
        if not ok:
            return type(result).__name__
        self.attempt("replay report", lambda: (result.report(), json.dumps(result.to_dict())))
        return "bit-exact" if result.bit_exact else "not bit-exact"

    def _nodes(self, data: bytes) -> str:
        import torch

        root = _STATE["comfy_root"]
        (root / "input" / "input.raiiaf").write_bytes(data)
        nodes, file = self.nodes, "input.raiiaf"
        self.attempt("RaiiafLoad.VALIDATE_INPUTS", lambda: nodes.RaiiafLoad.VALIDATE_INPUTS(file))
        self.attempt("RaiiafLoad.IS_CHANGED", lambda: nodes.RaiiafLoad.IS_CHANGED(file, 0))
        outcomes = []
        # What the nodes read of a ComfyUI ModelPatcher: its device, options, and the model's dtypes.
        model = types.SimpleNamespace(load_device="cpu", model_options={}, model_dtype=lambda: torch.float32,
                                      model=types.SimpleNamespace(manual_cast_dtype=None))
        for run in (0, 1, 2):
            ok, loaded = self.attempt(f"RaiiafLoad.load run {run}", lambda: nodes.RaiiafLoad().load(file, run))
            outcomes.append("loaded" if ok else type(loaded).__name__)
            if not ok:
                continue
            noise, sigmas = loaded["result"][0], loaded["result"][1]
            if not isinstance(sigmas, Blocked) and sigmas.numel() > 10_001:
                self.inconsistent.append(f"load run {run}: {sigmas.numel()} sigmas")
            latent_in = loaded["result"][3]
            if not isinstance(latent_in, Blocked):
                self.attempt(f"NOISE.generate_noise run {run}", lambda: noise.generate_noise(latent_in))
            ok, resampled = self.attempt(f"RaiiafResample.resample run {run}",
                                         lambda: nodes.RaiiafResample().resample(model, [], [], file, run))
            outcomes.append("resampled" if ok else type(resampled).__name__)
        return "/".join(outcomes)



