"""A1111's infotext: the `parameters` text chunk that A1111/Forge write, that their PNG Info tab and Civitai read.

    a watercolor fox
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly

The prompt, a line starting "Negative prompt:", and a last line of `key: value` pairs; a value holding a comma,
a colon or a line break is written as a JSON string, as A1111 writes and reads it. Model hashes are what
Civitai looks models up by: the first 10 hex digits of the file's sha256 (A1111's "shorthash", Civitai's
AutoV2). `build` writes it from a file's metadata (raiiaf export); `parse` reads it (raiiaf import).
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

SHORT_HASH = 10

# ComfyUI sampler names -> A1111's, after Civitai's sampler table (civitai/src/server/common/constants.ts), as
# ComfyUI-Image-Saver and the other metadata node packs map them.
COMFYUI_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "ddim": "DDIM", "plms": "PLMS", "uni_pc": "UniPC",
    "uni_pc_bh2": "UniPC", "lcm": "LCM",
}
# diffusers scheduler classes -> A1111's samplers, after the table in diffusers' scheduler overview
# ("A1111/k-diffusion | Diffusers"); FlowMatch Euler is what Forge calls Euler for flow models.
DIFFUSERS_SAMPLERS = {
    "EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a", "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS", "KDPM2DiscreteScheduler": "DPM2", "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverMultistepScheduler": "DPM++ 2M", "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "DPMSolverSDEScheduler": "DPM++ SDE", "DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC", "LCMScheduler": "LCM", "FlowMatchEulerDiscreteScheduler": "Euler",
}
# DPMSolverMultistepScheduler's algorithm_type selects among A1111's DPM++ 2M samplers.
_DPM_ALGORITHMS = {"sde-dpmsolver++": "DPM++ 2M SDE", "sde-dpmsolver": "DPM++ 2M SDE"}
# ComfyUI scheduler names (and the noise schedules of diffusers files) -> A1111's "Schedule type" labels
# (modules/sd_schedulers.py).
SCHEDULES = {
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "polyexponential": "Polyexponential", "uniform": "Uniform", "align_your_steps": "Align Your Steps",
}
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")
# key: value pairs of the last line; a value is a JSON string or runs to the next comma (A1111's pattern).
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
# Old infotexts name the schedule inside the sampler: "DPM++ 2M Karras".
_SAMPLER_SCHEDULE = re.compile(r"^(.+) (Karras|Exponential|Polyexponential|SGM Uniform)$")
_NEGATIVE = "Negative prompt:"


def a1111_sampler(metadata: dict) -> str | None:
    """The A1111 name of the file's sampler (ComfyUI's or diffusers' name), or the name as recorded."""
    name = metadata.get("sampler")
    if not isinstance(name, str) or not name:
        return None
    if name == "DPMSolverMultistepScheduler":
        settings = metadata.get("sampler_settings")
        algorithm = settings.get("algorithm_type") if isinstance(settings, dict) else None
        return _DPM_ALGORITHMS.get(algorithm, "DPM++ 2M")
    return COMFYUI_SAMPLERS.get(name) or DIFFUSERS_SAMPLERS.get(name) or name


def model_name(name: str) -> str:
    """A1111's model name: the file's name without folders and extension."""
    base = PurePosixPath(name.replace("\\", "/")).name
    for suffix in _MODEL_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[:-len(suffix)]
    return base


def quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _number(value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _short_hash(sha256) -> str | None:
    if isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256):
        return sha256[:SHORT_HASH]
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build(metadata: dict, size: tuple | None = None) -> str | None:
    """The infotext of a file's metadata; None when it records no prompt, steps or seed. `size`: the image's
    (width, height), used when the metadata gives none."""
    prompt, negative = metadata.get("prompt"), metadata.get("negative_prompt")
    fields = []
    if _is_int(metadata.get("steps")):
        fields.append(("Steps", metadata["steps"]))
    sampler = a1111_sampler(metadata)
    if sampler:
        fields.append(("Sampler", sampler))
    schedule = metadata.get("scheduler")
    if isinstance(schedule, str) and schedule:
        fields.append(("Schedule type", SCHEDULES.get(schedule, schedule)))
    if isinstance(metadata.get("guidance_scale"), (int, float)) and not isinstance(metadata["guidance_scale"], bool):
        fields.append(("CFG scale", _number(metadata["guidance_scale"])))
    if _is_int(metadata.get("seed")):
        fields.append(("Seed", metadata["seed"]))
    width, height = metadata.get("width"), metadata.get("height")
    if not (_is_int(width) and _is_int(height)) and size is not None:
        width, height = size
    if _is_int(width) and _is_int(height):
        fields.append(("Size", f"{width}x{height}"))
    model = metadata.get("model") if isinstance(metadata.get("model"), dict) else {}
    if _short_hash(model.get("sha256")):
        fields.append(("Model hash", _short_hash(model["sha256"])))
    name = next((model[k] for k in ("name", "id", "path") if isinstance(model.get(k), str) and model[k]), None)
    if name:
        fields.append(("Model", model_name(name)))
    strength = metadata.get("strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength != 1:
        fields.append(("Denoising strength", _number(strength)))
    loras = [f for f in model.get("files", []) if isinstance(f, dict) and f.get("role") == "lora"
             and isinstance(f.get("name"), str) and _short_hash(f.get("sha256"))]
    if loras:
        fields.append(("Lora hashes", ", ".join(f"{model_name(f['name'])}: {_short_hash(f['sha256'])}"
                                                 for f in loras)))
    if not isinstance(prompt, str) and not any(key in ("Steps", "Seed") for key, _ in fields):
        return None
    lines = [prompt if isinstance(prompt, str) else ""]
    if isinstance(negative, str) and negative:
        lines.append(f"{_NEGATIVE} {negative}")
    if fields:
        lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields))
    return "\n".join(lines)


def parse(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, the last line's fields) of an infotext, read as A1111 reads it: the last line
    holds the fields when it has at least three; JSON-quoted values are unquoted."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative, line = True, line[len(_NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {}
    for key, value in _PAIR.findall(last):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        fields[key] = str(value)
    return "\n".join(prompt), "\n".join(negative), fields


def metadata_of(text: str) -> dict:
    """Schema-1 metadata fields from an infotext: prompts, steps, sampler and schedule (A1111's names), cfg,
    seed, size, denoising strength, model name. Values that do not parse are left out (the text is kept
    whole by the caller)."""
    prompt, negative, fields = parse(text)
    meta: dict = {}
    if prompt:
        meta["prompt"] = prompt
    if negative:
        meta["negative_prompt"] = negative
    sampler, schedule = fields.get("Sampler"), fields.get("Schedule type")
    if sampler and not schedule and _SAMPLER_SCHEDULE.match(sampler):
        sampler, schedule = _SAMPLER_SCHEDULE.match(sampler).groups()
    if sampler:
        meta["sampler"] = sampler
    if schedule:
        meta["scheduler"] = schedule
    for key, field, kind in (("Steps", "steps", int), ("Seed", "seed", int), ("CFG scale", "guidance_scale", float),
                             ("Denoising strength", "strength", float)):
        try:
            value = kind(fields[key])
        except (KeyError, ValueError, OverflowError):
            continue
        if kind is int or value == value and abs(value) != float("inf"):
            meta[field] = value
    size = _SIZE.match(fields.get("Size", ""))
    if size:
        meta["width"], meta["height"] = int(size.group(1)), int(size.group(2))
    if fields.get("Model"):
        meta["model"] = {"name": fields["Model"]}
    return meta
