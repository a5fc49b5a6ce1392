"""The only module that touches ComfyUI's own modules (comfy.*, folder_paths, comfy_execution, comfyui_version).

It is imported by the node classes when ComfyUI calls them, never by the rest of raiiaf_nodes, so the node
logic can be used and tested without ComfyUI. Each function here is a thin translation between ComfyUI's
objects and the plain values and tensors the logic works with.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable

import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy.cli_args import args
from comfy.k_diffusion import sampling as k_diffusion_sampling
from comfy_execution.graph_utils import ExecutionBlocker
from comfy_execution.utils import get_executing_context

from . import launch
from .errors import CaptureError, NodeInputError

log = logging.getLogger(__name__)

WRAPPER_KEY = "raiiaf_capture"
# The oldest ComfyUI the real-ComfyUI matrix runs on; pyproject.toml's requires-comfyui says the same.
OLDEST_TESTED_COMFYUI = "0.3.64"
# Samplers whose function names (what a capture records) differ from the names in ComfyUI's sampler list.
_NAMED_SAMPLERS = {"unipc": "uni_pc", "unipc_bh2": "uni_pc_bh2"}


def input_dir() -> str:
    return folder_paths.get_input_directory()


def output_dir() -> str:
    return folder_paths.get_output_directory()


def temp_dir() -> str:
    return folder_paths.get_temp_directory()


def user_dir() -> str:
    return folder_paths.get_user_directory()


def model_path(folder: str, name: str) -> str | None:
    """Full path of a model file picked in a loader widget, None if the folder or file is unknown."""
    try:
        return folder_paths.get_full_path(folder, name)
    except KeyError:  # a models/ folder name this ComfyUI version does not know
        return None


def metadata_enabled() -> bool:
    """False under --disable-metadata: then, like SaveImage, the graph and workflow are not stored."""
    return not args.disable_metadata


def launch_settings() -> dict:
    """The launch arguments that change the numbers (launch.NUMERIC_ARGS present in this ComfyUI), by their
    option string, and the attention function ComfyUI picked; {"error": ...} when they cannot be read (a save
    must not fail over them)."""
    try:
        from comfy.cli_args import parser

        options = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
        found = {options.get(name, "--" + name.replace("_", "-")): launch.plain(getattr(args, name))
                 for name in launch.NUMERIC_ARGS if hasattr(args, name)}
        from comfy.ldm.modules import attention

        return {"args": found, "attention": getattr(attention.optimized_attention, "__name__", None)}
    except Exception as exc:  # noqa: BLE001
        log.exception("raiiaf: could not read ComfyUI's launch settings")
        return {"error": f"{type(exc).__name__}: {exc}"}


def model_dtypes(model) -> dict:
    """The weight dtype of a MODEL and the dtype its layers compute in when ComfyUI casts them (manual cast)."""
    cast = getattr(model.model, "manual_cast_dtype", None)
    return {"dtype": str(model.model_dtype()).replace("torch.", ""),
            "manual_cast_dtype": None if cast is None else str(cast).replace("torch.", "")}


def comfyui_version() -> str | None:
    try:
        import comfyui_version
    except ImportError:
        return None
    return comfyui_version.__version__


@functools.cache
def warn_if_untested_version() -> None:
    """Log once when this ComfyUI is older than the oldest one the real-ComfyUI tests ran on."""
    version = comfyui_version()
    if version is not None and older_than(version, OLDEST_TESTED_COMFYUI):
        log.warning("raiiaf: ComfyUI %s is older than %s, the oldest version raiiaf is tested with; capture still "
                    "never stops sampling, but a run it cannot read is saved as not captured", version,
                    OLDEST_TESTED_COMFYUI)


def older_than(version: str, floor: str) -> bool:
    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])
    return numbers(version) < numbers(floor)


def executing() -> tuple[str | None, str | None]:
    """(prompt id, node id) of the node ComfyUI is running now."""
    context = get_executing_context()
    return (context.prompt_id, str(context.node_id)) if context is not None else (None, None)


def progress(node_id: str | None) -> Callable[[int, int], None]:
    """A progress callback (done, total) that drives the node's progress bar in the UI."""
    bar = comfy.utils.ProgressBar(100, node_id=node_id)
    return lambda done, total: bar.update_absolute(int(100 * done / total) if total else 100, 100)


def blocked(message: str) -> ExecutionBlocker:
    """An output that fails, with `message`, only if a node actually uses it."""
    return ExecutionBlocker(message)


# Arguments of the wrapped call that only steer progress reporting: passed on, never recorded.
_PROGRESS_ARGUMENTS = ("callback", "disable_pbar")
# Arguments the record reads by name; any other one is stored with the run as it came (see capture.make_run).
_RECORDED_ARGUMENTS = ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "seed", "latent_shapes")
# Tensors some samplers write into: copied before sampling, so the record holds what the sampler was given.
_COPIED_ARGUMENTS = ("noise", "latent_image", "sigmas", "denoise_mask")


def bound_arguments(function, args: tuple, kwargs: dict) -> dict:
    """A call's arguments by parameter name, defaults filled in, whatever the signature of the running ComfyUI."""
    signature = inspect.signature(function)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    values = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            values.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                values[f"*{name}"] = value
        else:
            values[name] = value
    return values


def capture_model(model, on_run: Callable[..., None], on_failure: Callable[..., None]):
    """A clone of MODEL whose samplers report every run.

    on_run gets the keyword arguments of capture.make_run; when a run cannot be read or recorded, on_failure
    gets error, prompt_id and node_id instead. The wrapper passes every argument on unchanged and returns the
    sampler's output untouched: neither callback can change or stop sampling.
    """

    def outer_sample(executor, *args, **kwargs):
        try:
            inputs = _copied_inputs(executor, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong here must not cost the image
            inputs = exc
        output = executor(*args, **kwargs)
        _report(executor, inputs, output, on_run, on_failure)
        return output

    warn_if_untested_version()
    clone = model.clone()
    # One capture per model line: a second capture node replaces the first one's wrapper, so runs are not doubled.
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
    return clone


def _copied_inputs(executor, args: tuple, kwargs: dict) -> dict:
    # The executor wraps the guider's outer_sample; binding against it names every argument, in any version.
    values = bound_arguments(executor.original, args, kwargs)
    missing = [name for name in ("noise", "sigmas") if name not in values]
    if missing:
        raise CaptureError(f"the sampling call has no argument named {' or '.join(missing)} "
                           f"(it has: {', '.join(values) or 'none'})")
    for name in _COPIED_ARGUMENTS:
        if isinstance(values.get(name), torch.Tensor):
            values[name] = values[name].detach().clone()
    if values.get("latent_shapes") is not None:
        values["latent_shapes"] = [list(shape) for shape in values["latent_shapes"]]
    return values


def _report(executor, inputs, output, on_run, on_failure) -> None:
    try:
        prompt_id, node_id = executing()
    except Exception:  # noqa: BLE001
        prompt_id, node_id = None, None
    try:
        if isinstance(inputs, Exception):
            raise inputs
        guider = getattr(executor, "class_obj", None)
        sampler = inputs.get("sampler")
        on_run(noise=inputs["noise"], sigmas=inputs["sigmas"], seed=inputs.get("seed"),
               sampler_function=getattr(sampler, "sampler_function", sampler),
               sampler_options=getattr(sampler, "extra_options", {}),
               inpaint_options=getattr(sampler, "inpaint_options", {}),
               cfg=getattr(guider, "cfg", None), guider=None if guider is None else type(guider).__name__,
               denoise_mask=inputs.get("denoise_mask"), latent_image=inputs.get("latent_image"),
               latent_shapes=inputs.get("latent_shapes"),
               arguments={k: v for k, v in inputs.items() if k not in _RECORDED_ARGUMENTS + _PROGRESS_ARGUMENTS},
               model=_model_info(guider), output=output, prompt_id=prompt_id, node_id=node_id)
    except Exception as exc:  # noqa: BLE001 - a failed record must never cost the user the image
        error = f"{type(exc).__name__}: {exc}"
        log.exception("raiiaf: could not record a sampling run of node %s; the image is not affected and the "
                      "saved .raiiaf says which run is missing", node_id)
        try:
            on_failure(error=error, prompt_id=prompt_id, node_id=node_id)
        except Exception:  # noqa: BLE001
            log.exception("raiiaf: could not note the failed capture either")


def _model_info(guider) -> dict:
    """What identifies the sampled model beyond its file hashes; an error here only loses this description."""
    try:
        patcher = guider.model_patcher
        return {"config": type(patcher.model.model_config).__name__,
                "model_type": str(getattr(patcher.model, "model_type", "")), **model_dtypes(patcher)}
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


NOISE_MAKER = "comfy.sample.prepare_noise"


def prepare_noise(shape: list[int], seed: int, batch_index: list[int] | None, dtype: torch.dtype) -> torch.Tensor:
    """The noise this ComfyUI's KSampler draws for a latent of `shape`, by ComfyUI's own prepare_noise.

    prepare_noise reseeds the global CPU generator; it is run on a fork of it, so a save leaves the RNG as it was.
    """
    with torch.random.fork_rng(devices=[]):
        return comfy.sample.prepare_noise(torch.zeros(shape, dtype=dtype), seed, batch_index)


def ksampler_sigmas(model, *, steps: int, sampler_name: str, scheduler: str, denoise: float | None) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler node samples with for these settings."""
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise NodeInputError(f"the stored scheduler {scheduler!r} is not one of this ComfyUI's schedulers")
    if sampler_name not in comfy.samplers.SAMPLER_NAMES:
        raise NodeInputError(f"the stored sampler {sampler_name!r} is not one of this ComfyUI's samplers")
    ksampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                       scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    return ksampler.sigmas.cpu()


def make_sampler(name: str, options: dict, inpaint_options: dict):
    """The SAMPLER object for a stored run: the same sampler function with the same options.

    Options were checked against raiiaf's table when the file was read; here each must also be a parameter of
    this ComfyUI's sampler function, so a sampler is never called with an argument it does not take.
    """
    name = _NAMED_SAMPLERS.get(name, name)
    if name in comfy.samplers.KSAMPLER_NAMES:
        sampler = comfy.samplers.ksampler(name, dict(options), dict(inpaint_options))
        refused = _options_not_taken(sampler.sampler_function, name, options)
        if refused:
            raise NodeInputError(f"the stored options {', '.join(refused)} are not options of this ComfyUI's "
                                 f"sampler {name!r}")
        return sampler
    if name in comfy.samplers.SAMPLER_NAMES:  # ddim, uni_pc: names ComfyUI maps to a sampler object itself
        if options:
            raise NodeInputError(f"the stored run gives options to {name!r}, which takes none in this ComfyUI")
        return comfy.samplers.sampler_object(name)
    raise NodeInputError(f"the stored sampler {name!r} is not one of this ComfyUI's samplers, so it cannot be "
                         "rebuilt; pick the sampler by hand (Raiiaf Load Replay gives its name)")


def _options_not_taken(function, name: str, options: dict) -> list[str]:
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        # dpm_adaptive's function forwards its options to k-diffusion's sample_dpm_adaptive.
        target = getattr(k_diffusion_sampling, f"sample_{name}", None)
        if target is None:
            return []
        parameters = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return []
    return [key for key in options if key not in parameters]


def sample(model, positive, negative, *, noise, sigmas, seed, sampler, cfg, latent_in, denoise_mask):
    """Run a sampler the way SamplerCustomAdvanced does, with the given noise, sigmas and seed."""
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_in,
                                      noise_mask=denoise_mask, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                      seed=seed)


def register_routes() -> None:
    """Add the plugin's HTTP route (routes.py: a dropped .raiiaf -> its workflow) to ComfyUI's running server,
    with ComfyUI's own upload limit."""
    import server

    from . import routes

    routes.add_to(server.PromptServer.instance.routes, max_bytes=round(args.max_upload_size * 1024 * 1024))
