"""replay(pipe, path): regenerate a captured image and say whether it came out bit-identical, and if not, why."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

import raiiaf_core as rc

from . import _encode
from .capture import RECORD_VERSION, _any_training, _images, pixels_sha256, png_bytes
from .errors import ReplayError

logger = logging.getLogger(__name__)


class _FinalLatents(PipelineCallback):
    """Keeps the latents after the last step of the replayed call (never changes them)."""

    tensor_inputs = ["latents"]

    def __init__(self):
        super().__init__()
        self.final = None
        self.steps = 0

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.final = callback_kwargs["latents"].detach().clone()
        self.steps += 1
        return callback_kwargs


@dataclass
class ReplayResult:
    """The regenerated output and how it compares with what the file recorded."""

    output: Any  # what the pipeline returned (return_dict=True form)
    images: list  # PIL images of the whole regenerated batch
    index: int  # which of them the file holds
    final_latents: torch.Tensor  # whole batch, CPU
    final_latents_sha256: str
    stored_final_latents_sha256: str
    latents_equal: bool
    image_equal: bool  # same mode, size and pixel bytes as the stored image
    png_bytes_equal: bool  # re-encoded PNG identical to the stored file's bytes (also needs the same Pillow/zlib)
    output_equal: bool | None  # np/pt outputs: torch.equal with the stored raw output; None for "pil"
    latents_max_abs_diff: float | None  # needs store_final_latents at capture; None when equal or unknown
    image_max_abs_diff: int | None  # in 0-255 pixel units; None when equal
    drift: Any  # raiiaf_core.DriftReport: environment differences and whether they can change the output
    notes: list = field(default_factory=list)  # other differences between the capture and this replay

    @property
    def image(self):
        return self.images[self.index]

    @property
    def bit_exact(self) -> bool:
        return self.latents_equal and self.image_equal and self.output_equal is not False

    @property
    def verdict(self) -> str:
        if self.bit_exact:
            return "bit-exact: final latents and image bytes are identical to the capture"
        parts = []
        if not self.latents_equal:
            diff = "" if self.latents_max_abs_diff is None else f" (max abs difference {self.latents_max_abs_diff:.6g})"
            parts.append("final latents differ" + diff)
        if not self.image_equal:
            diff = "" if self.image_max_abs_diff is None else f" (max abs difference {self.image_max_abs_diff}/255)"
            parts.append("image pixels differ" + diff)
        if self.output_equal is False:
            parts.append("raw output differs")
        return "NOT bit-exact: " + "; ".join(parts)

    def report(self) -> str:
        lines = [self.verdict]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(str(self.drift))
        return "\n".join(lines)

    __str__ = report

    def to_dict(self) -> dict:
        return {
            "bit_exact": self.bit_exact,
            "verdict": self.verdict,
            "latents_equal": self.latents_equal,
            "image_equal": self.image_equal,
            "png_bytes_equal": self.png_bytes_equal,
            "output_equal": self.output_equal,
            "latents_max_abs_diff": self.latents_max_abs_diff,
            "image_max_abs_diff": self.image_max_abs_diff,
            "final_latents_sha256": self.final_latents_sha256,
            "stored_final_latents_sha256": self.stored_final_latents_sha256,
            "notes": list(self.notes),
            "drift": self.drift.to_dict(),
        }


def _scheduler(info: dict):
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, info["class"], None)
    # The file names the class, so only diffusers' own scheduler modules are imported from it: a file must
    # never make replay import or call arbitrary code.
    if not isinstance(cls, type) and str(info["module"]).startswith("diffusers."):
        try:
            cls = getattr(importlib.import_module(info["module"]), info["class"])
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ReplayError(f"scheduler class {info['module']}.{info['class']} is not a diffusers scheduler "
                          "that can be imported here")
    config = _encode.decode(info["config"], lambda name: None)
    # from_config drops the keys listed in _use_default_values so that this diffusers' defaults apply;
    # replay wants the values that were actually used, so every stored value is passed as given.
    config.pop("_use_default_values", None)
    return cls.from_config(config)


def _generators(info: dict, load) -> Any:
    if info["kind"] == "none":
        return None
    gens = []
    for device, name in zip(info["devices"], info["states"]):
        try:
            g = torch.Generator(device=device)
        except RuntimeError as exc:
            raise ReplayError(f"the file's generator ran on {device!r}, which is not available here ({exc}); "
                              "pass generator=... to replay with another one (it will not be bit-exact)") from None
        g.set_state(load(name))
        gens.append(g)
    return gens[0] if info["kind"] == "single" else gens


def _prepared_noise(pipe, noise: torch.Tensor, preparation: str) -> torch.Tensor:
    if preparation == "as_is":
        return noise
    if preparation == "pack_latents":
        b, c, h, w = noise.shape
        return type(pipe)._pack_latents(noise, b, c, h, w)
    raise ReplayError(f"unknown noise preparation {preparation!r} in the file")


def replay(pipe, path: str | os.PathLike, **overrides) -> ReplayResult:
    """Regenerate the image stored in ``path`` with ``pipe`` and compare it with the capture.

    The scheduler is rebuilt from the stored class and config (``pipe.scheduler`` is put back
    afterwards), the stored noise is passed as ``latents=`` (packed where the pipeline packs it),
    the generator and global torch RNG states are restored (the caller's global RNG state is put
    back afterwards), and the stored call arguments are passed again; ``overrides`` replace any of
    them (``generator=`` and ``latents=`` included). The whole batch of the capture is regenerated:
    batch size changes the numerics.
    """
    art = rc.open(path)
    md = art.metadata
    rec = md.get("host", {}).get("diffusers")
    if not isinstance(rec, dict):
        raise ReplayError(f"{path}: not a diffusers capture (no metadata host.diffusers record)")
    if rec.get("record_version", 0) > RECORD_VERSION:
        raise ReplayError(f"{path}: record version {rec.get('record_version')} is newer than this raiiaf_diffusers")
    cls_name = rec["pipeline"]["class"]
    if type(pipe).__name__ != cls_name:
        raise ReplayError(f"{path} was captured with {cls_name}; this pipeline is a {type(pipe).__name__}")

    def load(name: str) -> torch.Tensor:
        return art.load_tensor(name, framework="torch")

    notes: list[str] = []
    stored_model = md.get("model", {}).get("name")
    current_model = pipe.config.get("_name_or_path")
    if stored_model and stored_model != current_model:
        notes.append(f"model: captured with {stored_model!r}, replayed with {current_model!r}")
    trained = [n for n, c in pipe.components.items() if isinstance(c, torch.nn.Module) and _any_training(c)]
    if trained:
        notes.append(f"components in train() mode now: {', '.join(trained)}")

    device = torch.device(pipe._execution_device)
    if rec.get("device") and rec["device"] != str(device):
        notes.append(f"device: captured on {rec['device']}, replayed on {device}")
    scheduler = _scheduler(rec["scheduler"])

    call = _encode.decode(rec["call"], load, device)
    params = inspect.signature(type(pipe).__call__).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    explicit = set(rec.get("call_explicit", []))
    for name in list(call):
        if name not in params and not var_kw:
            if name in explicit:
                raise ReplayError(f"the call used argument {name!r}, which {cls_name} here no longer accepts")
            notes.append(f"argument {name!r} (left at its default at capture) does not exist here; not passed")
            del call[name]

    noise_info = rec["noise"]
    noise = load(noise_info["tensor"])
    if "latents" not in overrides:
        call["latents"] = _prepared_noise(pipe, noise, noise_info["preparation"])
    if "generator" not in overrides:
        call["generator"] = _generators(rec["generator"], load)
    user_cb = overrides.pop("callback_on_step_end", None)
    collector = _FinalLatents()
    if user_cb is None:
        call["callback_on_step_end"] = collector
    elif isinstance(user_cb, (PipelineCallback, MultiPipelineCallbacks)):
        call["callback_on_step_end"] = MultiPipelineCallbacks([user_cb, collector])
    else:
        raise ReplayError("callback_on_step_end for replay must be a PipelineCallback or MultiPipelineCallbacks")
    for key in ("callback_on_step_end_tensor_inputs", "return_dict"):
        overrides.pop(key, None)
    changed = sorted(k for k in overrides if k not in ("latents", "generator"))
    if changed:
        notes.append(f"overridden arguments: {', '.join(changed)}")
    call.update(overrides)
    call["return_dict"] = True

    grng = rec["global_rng"]
    moment = grng["restore"]
    device_rng = grng.get("device")
    fork_devices = []
    if device_rng and device_rng["type"] == "cuda" and device.type == "cuda":
        fork_devices = [device]
    elif device_rng:
        notes.append(f"the {device_rng['type']} RNG state was stored but this replay runs on {device}; not restored")

    # fork_rng puts the caller's global RNG state back afterwards: replay must not disturb the process.
    with torch.random.fork_rng(devices=fork_devices):
        torch.set_rng_state(load(grng["cpu"][moment]))
        if fork_devices:
            torch.cuda.set_rng_state(load(device_rng[moment]), device)
        previous = pipe.scheduler
        pipe.scheduler = scheduler
        try:
            out = pipe(**call)
        finally:
            pipe.scheduler = previous

    if collector.final is None:
        raise ReplayError("the replayed call ran no denoising step")
    final = collector.final.cpu()
    final_sha = rc.tensor_sha256(final)
    stored_sha = rec["final_latents"]["sha256"]
    latents_equal = final_sha == stored_sha
    latents_diff = None
    if not latents_equal and rec["final_latents"].get("tensor"):
        stored = load(rec["final_latents"]["tensor"])
        if stored.shape == final.shape:
            latents_diff = float((final.double() - stored.double()).abs().max())

    output_info = rec["output"]
    output_type = output_info["type"]
    index = md["batch"]["index"]
    pils, raw = _images(out, output_type, final.shape[0]) if output_type in ("pil", "np", "pt") else (None, None)
    image = pils[index]
    image_equal = pixels_sha256(image) == output_info["pixels_sha256"]
    image_diff = None
    if not image_equal:
        import numpy as np

        stored_image = art.image()
        if stored_image.size == image.size and stored_image.mode == image.mode:
            image_diff = int(np.abs(np.asarray(image, dtype=np.int16) - np.asarray(stored_image, dtype=np.int16)).max())
    output_equal = None
    if output_info.get("tensor") and raw is not None:
        stored_out = load(output_info["tensor"])
        mine = raw[index]
        mine = mine.detach().cpu() if isinstance(mine, torch.Tensor) else torch.from_numpy(mine)
        output_equal = bool(stored_out.dtype == mine.dtype and torch.equal(stored_out, mine))

    result = ReplayResult(
        output=out, images=pils, index=index, final_latents=final, final_latents_sha256=final_sha,
        stored_final_latents_sha256=stored_sha, latents_equal=latents_equal, image_equal=image_equal,
        png_bytes_equal=png_bytes(image) == art.image_bytes(),
        output_equal=output_equal, latents_max_abs_diff=latents_diff, image_max_abs_diff=image_diff,
        drift=rc.drift(art.environment), notes=notes,
    )
    logger.info("raiiaf_diffusers replay of %s: %s", path, result.verdict)
    return result
