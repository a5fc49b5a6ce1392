"""The ComfyUI node classes: declarations for ComfyUI, and calls into the node logic.

Importing this module does not import ComfyUI: each node imports `comfy_bridge` when ComfyUI calls it.
With raiiaf installed by pip (no clone in custom_nodes/), a one-line custom node file makes ComfyUI load them:

    # ComfyUI/custom_nodes/raiiaf.py
    from raiiaf_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, WEB_DIRECTORY
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import raiiaf_core as rc
from raiiaf_core.view import render

from .capture import STORE, failed_run, make_run
from .errors import NodeInputError
from .hashing import FileHashCache
from .noise import StoredNoise
from .paths import list_raiiaf_files, resolve_annotated
from .replay import (compare_output, drift_report, image_tensor, load_run, model_remedies, rebuilt_sigma_settings,
                     stored_latent)
from .save import NOISE_STORAGE, PREVIEW_SUBFOLDER, SAVE_AS, SaveContext, save_images

CATEGORY = "raiiaf"
WEB_DIRECTORY = str(Path(__file__).resolve().with_name("web"))  # the frontend extension (upload, report)
REPORT_KEY = "raiiaf_report"  # UI output key that web/raiiaf.js shows in the node
MAX_RUNS = 64

_FILE_TOOLTIP = ("A .raiiaf file (or a PNG made by raiiaf export or Raiiaf Save's PNG option) from ComfyUI's input "
                 "folder, or from the output folder (marked [output]). Use the upload button to add one from your "
                 "computer.")
_RUN_TOOLTIP = ("Which sampling run of the file to replay: 0 is the first one (the one that started from noise); "
                "hires-fix and refiner passes come after it.")


def _bridge():
    """comfy_bridge, imported on first use: importing it imports ComfyUI, which only exists inside ComfyUI."""
    from . import comfy_bridge
    return comfy_bridge


@functools.lru_cache(maxsize=1)
def _model_hashes(cache_file: str) -> FileHashCache:
    return FileHashCache(cache_file)


# Content hashes of picked .raiiaf files, for IS_CHANGED; kept in memory only.
_FILE_HASHES = FileHashCache()


def _file_path(file: str):
    bridge = _bridge()
    return resolve_annotated(file, bridge.input_dir(), bridge.output_dir())


def _file_input() -> tuple:
    bridge = _bridge()
    return (list_raiiaf_files(bridge.input_dir(), bridge.output_dir()), {"tooltip": _FILE_TOOLTIP})


def _view_preview(art: rc.Artifact) -> dict:
    """The file's picture (raiiaf_core.view) as a PNG in ComfyUI's temp folder, named by the file's content."""
    folder = Path(_bridge().temp_dir()) / PREVIEW_SUBFOLDER / "view"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_FILE_HASHES.sha256(art.path)[:32]}.png"
    (folder / name).write_bytes(render(art).png())
    return {"filename": name, "subfolder": f"{PREVIEW_SUBFOLDER}/view", "type": "temp"}


def _validate_file(file: str) -> bool | str:
    try:
        path = _file_path(file)
    except NodeInputError as exc:
        return str(exc)
    return True if path.is_file() else f"no such .raiiaf file: {file}"


class RaiiafCapture:
    """MODEL -> MODEL: records what every sampler using this model really received."""

    CATEGORY = CATEGORY
    DESCRIPTION = ("Records every sampling run made with this model: the exact initial noise, seed, sigmas, "
                   "sampler, cfg and latent shape. Put it on the MODEL line before your samplers; Raiiaf Save "
                   "writes what it recorded into the .raiiaf file.")
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model; samplers that use it are recorded.",)
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model your samplers use."})}}

    def capture(self, model):
        return (_bridge().capture_model(model, on_run=lambda **run: STORE.add(make_run(**run)),
                                        on_failure=lambda **failure: STORE.add(failed_run(**failure))),)


class RaiiafSave:
    """IMAGE (+ LATENT) -> one .raiiaf per image in the output folder."""

    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves each image as a .raiiaf file: the PNG plus the initial noise, sigmas, seed, sampler "
                   "settings, prompts, model file hashes, workflow and environment, so the image can be "
                   "regenerated bit for bit. Without Raiiaf Capture Sampling upstream, the noise is rebuilt "
                   "from the sampler's seed and marked as reconstructed. save_as writes the file as a PNG instead "
                   "(or both): the image with the workflow and the whole file inside.")
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save; each becomes one .raiiaf file."}),
                "filename_prefix": ("STRING", {
                    "default": "raiiaf/ComfyUI",
                    "tooltip": "File name prefix, as in Save Image: may contain sub/folders and tokens such as "
                               "%date:yyyy-MM-dd%; it must stay inside the output folder."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "The sampled latent (the sampler's output). Stored so a replay "
                                                 "can be compared bit for bit; also gives the exact latent size "
                                                 "when the noise has to be rebuilt."}),
                "tags": ("STRING", {"default": "", "tooltip": "Comma-separated tags stored in the file."}),
                "notes": ("STRING", {"default": "", "multiline": True, "tooltip": "Free notes stored in the file."}),
                "save_as": (list(SAVE_AS), {"default": SAVE_AS[0], "tooltip": (
                    "What to write per image: the .raiiaf; the PNG (the image with the workflow, A1111 parameters "
                    "and the whole .raiiaf inside: it shows everywhere and Raiiaf Load Replay reads it); or both.")}),
                "noise_storage": (list(NOISE_STORAGE), {"default": NOISE_STORAGE[0], "tooltip": (
                    "raw stores the initial noise itself. recipe stores, for noise that KSampler's draw from its "
                    "seed gives back bit for bit, only that recipe and the noise's sha256 (about 250 KiB less at "
                    "1024x1024); loading draws it again and checks it. Other noise stays raw.")}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    def save(self, images, filename_prefix, latent=None, tags="", notes="", save_as=SAVE_AS[0],
             noise_storage=NOISE_STORAGE[0], prompt=None, extra_pnginfo=None, unique_id=None):
        bridge = _bridge()
        prompt_id, _ = bridge.executing()
        ctx = SaveContext(
            output_dir=bridge.output_dir(), temp_dir=bridge.temp_dir(), prompt=prompt, extra_pnginfo=extra_pnginfo,
            node_id=None if unique_id is None else str(unique_id), prompt_id=prompt_id,
            metadata_enabled=bridge.metadata_enabled(), comfyui_version=bridge.comfyui_version(),
            launch=bridge.launch_settings(), model_path=bridge.model_path,
            hash_cache=_model_hashes(os.path.join(bridge.user_dir(), "raiiaf", "model_sha256.json")),
            hash_progress=bridge.progress(unique_id), make_noise=bridge.prepare_noise, noise_maker=bridge.NOISE_MAKER)
        saved = save_images(images, filename_prefix, ctx, latent=latent, tags=tags, notes=notes, store=STORE,
                            save_as=save_as, noise_storage=noise_storage)
        previews = [{"filename": s.preview[1], "subfolder": s.preview[0], "type": "temp"} for s in saved if s.preview]
        files = [f"{s.subfolder}/{name}" if s.subfolder else name for s in saved
                 for name in (s.filename, *([s.png.name] if s.png else []))]
        return {"ui": {"images": previews, "raiiaf_files": files}}


def _replay_inputs() -> dict:
    return {
        "file": _file_input(),
        "run": ("INT", {"default": 0, "min": 0, "max": MAX_RUNS - 1, "tooltip": _RUN_TOOLTIP}),
    }


class RaiiafLoad:
    """A .raiiaf file -> its stored noise, sigmas, sampler, latents, image and settings."""

    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads a .raiiaf file and gives back what made its image: the exact noise (with its original "
                   "seed), sigmas and sampler for Sampler Custom Advanced, the starting and sampled latents, the "
                   "image, and the settings and prompts. Shows how this machine differs from the one that made it.")
    RETURN_TYPES = ("NOISE", "SIGMAS", "SAMPLER", "LATENT", "LATENT", "IMAGE", "INT", "INT", "FLOAT", "STRING",
                    "STRING", "STRING", "STRING")
    RETURN_NAMES = ("noise", "sigmas", "sampler", "latent_in", "latent", "image", "seed", "steps", "cfg",
                    "sampler_name", "scheduler", "positive", "negative")
    OUTPUT_TOOLTIPS = (
        "The stored initial noise, carrying the original seed (for Sampler Custom Advanced).",
        "The stored sigmas, exactly as the sampler used them.",
        "The stored sampler with its stored options.",
        "The latent the run started from (an empty latent for text-to-image).",
        "The sampled latent saved with the image (only if the save node had its latent connected).",
        "The stored image.",
        "The original seed.", "The number of steps.", "The cfg scale.", "The sampler name.", "The scheduler name.",
        "The positive prompt text.", "The negative prompt text.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _replay_inputs()}

    @classmethod
    def IS_CHANGED(cls, file, run):
        return _FILE_HASHES.sha256(_file_path(file)), run

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        return _validate_file(file)

    def load(self, file, run):
        bridge = _bridge()
        art = rc.open(_file_path(file))
        report = drift_report(art, launch_now=bridge.launch_settings())
        stored = load_run(art, run)
        record = stored.record
        if stored.latent_in is None:
            latent_in = bridge.blocked(f"{file}, run {run}: the file does not hold the latent this run started from "
                                       "(its noise was rebuilt and it did not start from an empty latent)")
        else:
            latent_in = {"samples": stored.latent_in}
            if stored.denoise_mask is not None:
                latent_in["noise_mask"] = stored.denoise_mask
        sigmas = stored.sigmas if stored.sigmas is not None else bridge.blocked(
            f"{file} holds no sigmas for run {run}: its noise was rebuilt without Raiiaf Capture Sampling; build "
            f"the sigmas with a scheduler node ({record.scheduler or 'the original scheduler'}, {stored.steps} steps)")
        try:
            sampler = bridge.make_sampler(record.sampler, record.sampler_options, record.inpaint_options)
        except NodeInputError as exc:
            sampler = bridge.blocked(f"{file}, run {run}: {exc}")
        latent = stored_latent(art) or bridge.blocked(
            f"{file} holds no sampled latent: connect the sampler's LATENT to Raiiaf Save's latent input")
        result = (StoredNoise(stored.noise, stored.seed), sigmas, sampler, latent_in, latent, image_tensor(art),
                  stored.seed if stored.seed is not None else 0, stored.steps, stored.cfg, stored.sampler_name,
                  record.scheduler or "", record.positive or "", record.negative or "")
        return {"ui": {REPORT_KEY: [report], "images": [_view_preview(art)]}, "result": result}


class RaiiafResample:
    """MODEL + conditioning + a .raiiaf -> the run sampled again with the stored noise, sigmas, seed and sampler."""

    CATEGORY = CATEGORY
    DESCRIPTION = ("Samples one stored run again in a single node: the stored noise, sigmas, seed, sampler, "
                   "sampler options, cfg and starting latent, with your model and conditioning. Reports whether "
                   "the result is bit-identical to the stored one and how this machine differs from the original.")
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The resampled latent.",)
    FUNCTION = "resample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The same model (checkpoint, LoRAs) the file was made with."}),
            "positive": ("CONDITIONING", {"tooltip": "Conditioning from the stored positive prompt."}),
            "negative": ("CONDITIONING", {"tooltip": "Conditioning from the stored negative prompt."}),
            **_replay_inputs(),
        }}

    @classmethod
    def IS_CHANGED(cls, model, positive, negative, file, run):
        return _FILE_HASHES.sha256(_file_path(file)), run

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        return _validate_file(file)

    def resample(self, model, positive, negative, file, run):
        bridge = _bridge()
        art = rc.open(_file_path(file))
        stored = load_run(art, run)
        record = stored.record
        if stored.latent_in is None:
            raise NodeInputError(f"{file}, run {run}: the file does not hold the latent this run started from (its "
                                 "noise was rebuilt and it did not start from an empty latent), so it cannot be "
                                 "resampled")
        sigmas = stored.sigmas
        if sigmas is None:  # noise rebuilt from a KSampler's seed: ComfyUI's KSampler gives its sigmas
            sigmas = bridge.ksampler_sigmas(model, **rebuilt_sigma_settings(stored, file))
        sampler = bridge.make_sampler(record.sampler, record.sampler_options, record.inpaint_options)
        # The torch settings a node can set (threads, determinism switches, attention backends) as the file
        # records them, for this sampling only.
        with rc.recreated(art.environment) as recreation:
            output = bridge.sample(model, positive, negative, noise=stored.noise.clone(), sigmas=sigmas,
                                   seed=stored.seed, cfg=stored.cfg, latent_in=stored.latent_in, sampler=sampler,
                                   denoise_mask=stored.denoise_mask)
            environment = rc.capture_environment()
        identical, verdict = compare_output(output, stored, art)
        report = drift_report(art, current=environment, launch_now=bridge.launch_settings(), identical=identical,
                              remedies=model_remedies(record.model, bridge.model_dtypes(model)))
        lines = [f"run {run}: {verdict}", *recreation.lines()]
        if recreation.settings:
            lines.append("note: only this node's sampling ran under them; the conditioning and model it was given "
                         "were computed by other nodes under this ComfyUI's own settings")
        if stored.batch_size > 1:
            lines.append(f"the file's image is image {stored.batch_index} of this batch of {stored.batch_size}")
        not_passed = [*record.arguments, *record.unstored_arguments, *record.unstored_options]
        if not_passed:
            lines.append(f"note: the original sampler also got {', '.join(not_passed)}, which this replay does not "
                         "pass back")
        message = "\n".join([*lines, report])
        return {"ui": {REPORT_KEY: [message], "raiiaf_identical": [identical]}, "result": ({"samples": output},)}


NODE_CLASS_MAPPINGS = {
    "RaiiafCapture": RaiiafCapture,
    "RaiiafSave": RaiiafSave,
    "RaiiafLoad": RaiiafLoad,
    "RaiiafResample": RaiiafResample,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RaiiafCapture": "Raiiaf Capture Sampling",
    "RaiiafSave": "Raiiaf Save (.raiiaf)",
    "RaiiafLoad": "Raiiaf Load Replay",
    "RaiiafResample": "Raiiaf Resample (exact replay)",
}


def _serving() -> bool:
    # ComfyUI starts its PromptServer before it imports node packs; anywhere else (tests, scripts) there is none.
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None) is not None


if _serving():  # inside ComfyUI, whichever way the pack is installed: the route a dropped .raiiaf is sent to
    _bridge().register_routes()
