"""The only module that touches ComfyUI's own modules (comfy.*, folder_paths, comfy_execution, comfyui_version).

It is imported by the node classes when ComfyUI calls them, never by the rest of raiiaf_nodes, so the node
logic can be used and tested without ComfyUI. Each function here is a thin translation between ComfyUI's
objects and the plain values and tensors the logic works with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
from comfy.cli_args import args
from comfy_execution.graph_utils import ExecutionBlocker
from comfy_execution.utils import get_executing_context

from .errors import NodeInputError

log = logging.getLogger(__name__)

WRAPPER_KEY = "raiiaf_capture"
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


def comfyui_version() -> str | None:
    try:
        import comfyui_version
    except ImportError:
        return None
    return comfyui_version.__version__


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


def capture_model(model, on_run: Callable[..., None]):
    """A clone of MODEL whose samplers report every run to `on_run` (keyword arguments of capture.make_run)."""

    def outer_sample(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None):
        # Copies are taken before sampling: some samplers write into the tensors they are given.
        noise_in, latent_in, sigmas_in = noise.detach().clone(), latent_image.detach().clone(), sigmas.detach().clone()
        mask_in = None if denoise_mask is None else denoise_mask.detach().clone()
        output = executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        try:
            _report(on_run, executor.class_obj, sampler, seed, noise_in, sigmas_in, mask_in, latent_in, output)
        except Exception:
            # A failed record must never cost the user the image; the save node then finds no captured run
            # and marks its noise as reconstructed.
            log.exception("raiiaf: could not record this sampling run")
        return output

    clone = model.clone()
    # One capture per model line: a second capture node replaces the first one's wrapper, so runs are not doubled.
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
    return clone


def _report(on_run, guider, sampler, seed, noise, sigmas, denoise_mask, latent_image, output) -> None:
    """Turn the guider and sampler objects of one run into the plain values capture.make_run takes."""
    patcher = guider.model_patcher
    prompt_id, node_id = executing()
    on_run(noise=noise, sigmas=sigmas, seed=seed, sampler_function=getattr(sampler, "sampler_function", sampler),
           sampler_options=getattr(sampler, "extra_options", {}),
           inpaint_options=getattr(sampler, "inpaint_options", {}),
           cfg=getattr(guider, "cfg", None), guider=type(guider).__name__, denoise_mask=denoise_mask,
           latent_image=latent_image,
           model={"config": type(patcher.model.model_config).__name__,
                  "model_type": str(getattr(patcher.model, "model_type", "")),
                  "dtype": str(patcher.model_dtype()).replace("torch.", "")},
           output=output, prompt_id=prompt_id, node_id=node_id)


def make_sampler(name: str, options: dict, inpaint_options: dict):
    """The SAMPLER object for a stored run: the same sampler function with the same options."""
    name = _NAMED_SAMPLERS.get(name, name)
    if name in comfy.samplers.KSAMPLER_NAMES:
        return comfy.samplers.ksampler(name, dict(options), dict(inpaint_options))
    if name in comfy.samplers.SAMPLER_NAMES:  # ddim, uni_pc: names ComfyUI maps to a sampler object itself
        return comfy.samplers.sampler_object(name)
    raise NodeInputError(f"the stored sampler {name!r} is not one of this ComfyUI's samplers, so it cannot be "
                         "rebuilt; pick the sampler by hand (Raiiaf Load Replay gives its name)")


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
