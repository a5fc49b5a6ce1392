"""The real comfy_bridge, driven without ComfyUI: its OUTER_SAMPLE wrapper, noise rebuilt by ComfyUI's
prepare_noise, sampler rebuilding and the supported-version declaration.

ComfyUI's modules are replaced by small stand-ins (only at this layer, the one module that imports ComfyUI).
The sampling calls mimic the signatures of the guider's outer_sample in ComfyUI v0.3.64, in 0.8.0 (which adds
`latent_shapes`) and in a hypothetical later version with more arguments; the real ComfyUI runs in
tests/comfyui_real.
"""

import argparse
import enum
import importlib
import inspect
import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

import raiiaf_nodes
from raiiaf_nodes.capture import failed_run, make_run
from raiiaf_nodes.noise import reconstruct_noise

ROOT = Path(__file__).resolve().parents[1]


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_noise=1.0):
    """Stands for k-diffusion's sample_euler: a fixed set of options."""


def dpm_fast_function(model, noise, sigmas, extra_args, callback, disable):
    """Stands for ComfyUI's dpm_fast wrapper, which takes no options at all."""


class Sampler:
    """Stands for ComfyUI's KSAMPLER."""

    def __init__(self, function, extra_options=None, inpaint_options=None):
        self.sampler_function, self.extra_options, self.inpaint_options = function, extra_options or {}, \
            inpaint_options or {}


def attention_pytorch(q, k, v, heads, mask=None):
    """Named like the attention function ComfyUI picks under --use-pytorch-cross-attention."""


class PerformanceFeature(enum.Enum):
    """Stands for comfy.cli_args.PerformanceFeature, the values --fast takes."""

    Fp16Accumulation = "fp16_accumulation"
    CublasOps = "cublas_ops"


def _launch():
    """ComfyUI's argument parser as v0.8.0 declares these flags, and the args of one launch."""
    parser = argparse.ArgumentParser()
    for flag in ("--cpu", "--fp8_e4m3fn-unet", "--use-pytorch-cross-attention", "--deterministic", "--disable-metadata",
                 "--listen"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--fast", nargs="*")
    args = parser.parse_args(["--cpu", "--fp8_e4m3fn-unet", "--listen"])
    args.fast = {PerformanceFeature.CublasOps, PerformanceFeature.Fp16Accumulation}
    return parser, args


launch_parser, launch_args = _launch()


def stand_in_modules(executing=("prompt-1", "3")) -> dict:
    def module(name, **attrs):
        made = types.ModuleType(name)
        made.__dict__.update(attrs)
        return made

    def prepare_noise(latent_image, seed, noise_inds=None):
        generator = torch.manual_seed(seed)  # ComfyUI reseeds the global generator
        return torch.randn(latent_image.size(), dtype=latent_image.dtype, generator=generator)

    samplers = module("comfy.samplers", KSAMPLER_NAMES=["euler", "dpm_fast"], SAMPLER_NAMES=["euler", "dpm_fast",
                      "uni_pc"], SCHEDULER_NAMES=["normal"], sampler_object=lambda name: Sampler(name))
    samplers.ksampler = lambda name, extra_options={}, inpaint_options={}: Sampler(
        {"euler": sample_euler, "dpm_fast": dpm_fast_function}[name], extra_options, inpaint_options)
    context = types.SimpleNamespace(prompt_id=executing[0], node_id=executing[1])
    modules = {
        "comfy": module("comfy"),
        "comfy.patcher_extension": module("comfy.patcher_extension",
                                          WrappersMP=types.SimpleNamespace(OUTER_SAMPLE="outer_sample")),
        "comfy.sample": module("comfy.sample", prepare_noise=prepare_noise),
        "comfy.samplers": samplers,
        "comfy.utils": module("comfy.utils", PROGRESS_BAR_ENABLED=False),
        "comfy.cli_args": module("comfy.cli_args", args=launch_args, parser=launch_parser),
        "comfy.ldm": module("comfy.ldm"),
        "comfy.ldm.modules": module("comfy.ldm.modules"),
        "comfy.ldm.modules.attention": module("comfy.ldm.modules.attention", optimized_attention=attention_pytorch),
        "comfy.k_diffusion": module("comfy.k_diffusion"),
        "comfy.k_diffusion.sampling": module("comfy.k_diffusion.sampling", sample_euler=sample_euler),
        "folder_paths": module("folder_paths"),
        "comfy_execution": module("comfy_execution"),
        "comfy_execution.graph_utils": module("comfy_execution.graph_utils", ExecutionBlocker=str),
        "comfy_execution.utils": module("comfy_execution.utils", get_executing_context=lambda: context),
        "comfyui_version": module("comfyui_version", __version__="0.8.0"),
    }
    for name, made in modules.items():  # `import comfy.sample` reaches the module as an attribute of `comfy`
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, made)
    return modules


@pytest.fixture
def bridge(monkeypatch):
    """raiiaf_nodes.comfy_bridge imported over the stand-ins; removed again after the test."""
    for name, stand_in in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setitem(sys.modules, "raiiaf_nodes.comfy_bridge", None)
    monkeypatch.setattr(raiiaf_nodes, "comfy_bridge", None, raising=False)
    del sys.modules["raiiaf_nodes.comfy_bridge"]
    return importlib.import_module("raiiaf_nodes.comfy_bridge")


class Model:
    """Stands for a ModelPatcher: clone() and the wrapper registry."""

    def __init__(self):
        self.wrappers = {}

    def clone(self):
        copy = Model()
        copy.wrappers = dict(self.wrappers)
        return copy

    def remove_wrappers_with_key(self, kind, key):
        self.wrappers.pop((kind, key), None)

    def add_wrapper_with_key(self, kind, key, wrapper):
        self.wrappers[(kind, key)] = wrapper


class Guider:
    """Stands for CFGGuider; its outer_sample, in the signature of one ComfyUI version, samples in place."""

    cfg = 7.5

    def __init__(self, version):
        self.model_patcher = types.SimpleNamespace(
            model=types.SimpleNamespace(model_config=types.SimpleNamespace(), model_type="EPS"),
            model_dtype=lambda: torch.float16)
        self.outer_sample = getattr(self, f"outer_sample_{version}")
        self.received = None
        self.error = None

    def _sample(self, received: dict):
        self.received = {k: v for k, v in received.items() if k != "self"}
        if self.error is not None:
            raise self.error
        out = received["latent_image"] + received["noise"] * received["sigmas"][0]
        received["noise"].mul_(0)  # samplers may write into what they were given
        return out

    def outer_sample_v0364(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                           disable_pbar=False, seed=None):
        return self._sample(locals())

    def outer_sample_v080(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                          disable_pbar=False, seed=None, latent_shapes=None):
        return self._sample(locals())

    def outer_sample_later(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                           disable_pbar=False, seed=None, latent_shapes=None, preview_every=4, *, rescale=0.0,
                           **more):
        return self._sample(locals())


class Executor:
    """Stands for ComfyUI's WrapperExecutor as the last wrapper sees it: it calls the original function."""

    def __init__(self, guider):
        self.original, self.class_obj = guider.outer_sample, guider

    def __call__(self, *args, **kwargs):
        return self.original(*args, **kwargs)


def wrapper_of(bridge, runs, failures):
    model = bridge.capture_model(Model(), on_run=lambda **v: runs.append(make_run(**v)),
                                 on_failure=lambda **f: failures.append(failed_run(**f)))
    return model.wrappers[("outer_sample", bridge.WRAPPER_KEY)]


def inputs():
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return noise, torch.zeros(1, 4, 8, 8), Sampler(sample_euler, {"s_noise": 1.0}), torch.tensor([14.6, 1.0, 0.0])


CALLS = [  # (version, extra positional arguments, keyword arguments), as each ComfyUI calls the wrapper
    pytest.param("v0364", (None, None, True, 42), {}, id="v0.3.64"),
    pytest.param("v080", (None, None, True, 42), {"latent_shapes": [torch.Size([1, 4, 8, 8])]}, id="v0.8.0"),
    pytest.param("later", (None, None, True, 42, [torch.Size([1, 4, 8, 8])], 2),
                 {"rescale": 0.7, "hooks": object()}, id="later"),
    pytest.param("v080", (), {"seed": 42, "disable_pbar": True, "latent_shapes": [[1, 4, 8, 8]]}, id="by-keyword"),
]


@pytest.mark.parametrize("version, more, kwargs", CALLS)
def test_the_wrapper_passes_everything_through_and_records_by_name(bridge, version, more, kwargs):
    runs, failures = [], []
    guider = Guider(version)
    noise, latent, sampler, sigmas = inputs()
    drawn = noise.clone()
    args = (noise, latent, sampler, sigmas, *more)
    expected = latent + drawn * sigmas[0]
    output = wrapper_of(bridge, runs, failures)(Executor(guider), *args, **kwargs)

    # Every argument reached the sampler as the very object given, in the parameter it was given for.
    sent = inspect.signature(guider.outer_sample).bind(*args, **kwargs).arguments
    sent_more, got_more = sent.pop("more", {}), guider.received.pop("more", {})
    flat, got = {**sent, **sent_more}, {**guider.received, **got_more}
    assert flat and all(got[name] is value for name, value in flat.items())
    assert torch.equal(output, expected)
    assert failures == []
    (run,) = runs
    assert torch.equal(run.tensors["noise"], drawn)  # copied before the sampler wrote into it
    record = run.record
    assert (record.seed, record.sampler, record.sampler_options, record.cfg, record.guider) == (
        42, "euler", {"s_noise": 1.0}, 7.5, "Guider")
    assert (run.prompt_id, run.node_id, record.steps) == ("prompt-1", "3", 2)
    assert record.model == {"config": "SimpleNamespace", "model_type": "EPS", "dtype": "float16",
                            "manual_cast_dtype": None}
    assert record.latent_shapes == (None if version == "v0364" else [[1, 4, 8, 8]])
    if version == "later":
        assert record.arguments == {"preview_every": 2, "rescale": 0.7} and record.unstored_arguments == ["hooks"]


def test_a_sampling_call_that_raises_passes_the_exception_through_untouched(bridge):
    runs, failures = [], []
    guider = Guider("v080")
    guider.error = RuntimeError("out of memory")
    with pytest.raises(RuntimeError) as info:
        wrapper_of(bridge, runs, failures)(Executor(guider), *inputs(), latent_shapes=[[1, 4, 8, 8]])
    assert info.value is guider.error
    assert runs == [] and failures == []


def test_a_record_that_fails_costs_nothing_and_is_saved_as_a_failed_run(bridge, caplog):
    failures = []
    guider = Guider("v080")
    noise, latent, sampler, sigmas = inputs()
    expected = latent + noise * sigmas[0]

    def broken(**values):
        raise ValueError("disk on fire")

    model = bridge.capture_model(Model(), on_run=broken, on_failure=lambda **f: failures.append(failed_run(**f)))
    output = model.wrappers[("outer_sample", bridge.WRAPPER_KEY)](Executor(guider), noise, latent, sampler, sigmas)
    assert torch.equal(output, expected)
    (failure,) = failures
    assert failure.record.error == "ValueError: disk on fire" and failure.node_id == "3"
    assert "could not record a sampling run of node 3" in caplog.text


def test_arguments_that_cannot_be_read_by_name_give_a_failed_run_not_a_failed_sampling(bridge):
    runs, failures = [], []

    class Opaque(Guider):
        def outer_sample_opaque(self, *args, **kwargs):
            return self._sample({"noise": args[0], "latent_image": args[1], "sigmas": args[3]})

    guider = Opaque("opaque")
    output = wrapper_of(bridge, runs, failures)(Executor(guider), *inputs())
    assert isinstance(output, torch.Tensor) and runs == []
    assert "has no argument named noise or sigmas" in failures[0].record.error


def test_a_nested_latent_is_sampled_and_saved_as_not_captured(bridge):
    runs, failures = [], []
    packed = torch.randn(1, 1, 100)
    shapes = [torch.Size([1, 4, 4, 5]), torch.Size([1, 1, 20])]
    output = wrapper_of(bridge, runs, failures)(Executor(Guider("v080")), packed, torch.zeros(1, 1, 100),
                                                 Sampler(sample_euler), torch.ones(3), latent_shapes=shapes)
    assert output.shape == (1, 1, 100)
    assert runs[0].record.source == "failed" and "nested latent of 2 parts" in runs[0].record.error


def test_rebuilt_noise_is_comfyuis_own_and_leaves_the_global_generator_alone(bridge):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    noise = bridge.prepare_noise([2, 4, 8, 8], 99, None, torch.float32)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(noise, reconstruct_noise([2, 4, 8, 8], 99))
    assert bridge.NOISE_MAKER == "comfy.sample.prepare_noise"


def test_a_sampler_is_rebuilt_only_with_options_its_function_takes(bridge):
    assert bridge.make_sampler("euler", {"s_noise": 0.5}, {}).extra_options == {"s_noise": 0.5}
    with pytest.raises(bridge.NodeInputError, match="options eta are not options of this ComfyUI's sampler 'euler'"):
        bridge.make_sampler("euler", {"eta": 1.0}, {})
    with pytest.raises(bridge.NodeInputError, match="'dpm_fast'"):
        bridge.make_sampler("dpm_fast", {"s_noise": 1.0}, {})
    with pytest.raises(bridge.NodeInputError, match="'uni_pc', which takes none"):
        bridge.make_sampler("unipc", {"s_noise": 1.0}, {})


def test_the_declared_comfyui_versions_match_the_tested_floor(bridge):
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["requires-comfyui"] == f">={bridge.OLDEST_TESTED_COMFYUI}"
    assert bridge.older_than("0.3.10", "0.3.64") and not bridge.older_than("0.8.0", "0.3.64")
    assert not bridge.older_than("0.3.64", "0.3.64") and bridge.older_than("0.2.7", "0.3.64")


def test_launch_settings_are_the_numeric_flags_by_their_option_and_the_attention_in_use(bridge):
    settings = bridge.launch_settings()
    assert settings == {"args": {"--cpu": True, "--fp8_e4m3fn-unet": True, "--use-pytorch-cross-attention": False,
                                 "--deterministic": False, "--fast": ["cublas_ops", "fp16_accumulation"]},
                        "attention": "attention_pytorch"}  # --listen and --disable-metadata change no numbers


def test_model_dtypes_read_the_weight_and_the_manual_cast_dtype(bridge):
    patcher = types.SimpleNamespace(model=types.SimpleNamespace(manual_cast_dtype=torch.bfloat16),
                                    model_dtype=lambda: torch.float8_e4m3fn)
    assert bridge.model_dtypes(patcher) == {"dtype": "float8_e4m3fn", "manual_cast_dtype": "bfloat16"}
