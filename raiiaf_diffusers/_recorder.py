"""The per-call recorder: state of one recorded pipeline call, from its arguments to the CapturedCall.

``CallRecorder.start`` runs before the pipeline: it binds and encodes the arguments and refuses, with
CaptureError, what could not be replayed (nothing has been generated yet, so the caller loses nothing).
During the call it receives every randn_tensor draw (through ``_intercept``) and every step callback.
``finish`` runs after the pipeline returned and never raises for the recording's sake: what could not
be recorded is written into the file (``not_replayable``), and the caller keeps the images.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import _encode, _output, _pipeline
from ._tape import TapeRecorder
from .errors import CaptureError
from .record import Scheduler

logger = logging.getLogger(__name__)

# Arguments replay supplies itself (noise, generators, its own callback) or that cannot change the
# image; everything else the call received is recorded and passed again.
NOT_RECORDED = frozenset(
    {"generator", "latents", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "callback",
     "callback_steps", "return_dict"}
)


def generators_of(value) -> tuple[str, list[torch.Generator]]:
    if value is None:
        return "none", []
    if isinstance(value, torch.Generator):
        return "single", [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(g, torch.Generator) for g in value):
        return "list", list(value)
    raise CaptureError(f"generator must be a torch.Generator, a list of them, or None; got {type(value).__name__}")


def _contains(callback, capture) -> bool:
    from diffusers.callbacks import MultiPipelineCallbacks

    if callback is capture:
        return True
    if isinstance(callback, MultiPipelineCallbacks):
        return any(_contains(c, capture) for c in callback.callbacks)
    return False


def _bind(pipe, original, args, kwargs) -> tuple[dict, list]:
    """(arguments with defaults applied, names the caller gave explicitly)."""
    sig = _pipeline.signature(original)
    try:
        bound = sig.bind(pipe, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{type(pipe).__name__}.__call__: {exc}") from None
    params = list(sig.parameters.values())
    explicit = [n for n in bound.arguments if n != params[0].name]
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for p in params[1:]:
        value = bound.arguments.get(p.name)
        if p.kind is p.VAR_POSITIONAL:
            if value:
                raise CaptureError(f"extra positional arguments {value!r} cannot be recorded")
        elif p.kind is p.VAR_KEYWORD:
            arguments.update(value or {})
            explicit = [n for n in explicit if n != p.name] + list(value or {})
        else:
            arguments[p.name] = value
    return arguments, explicit


def _preparation(cls, noise: torch.Tensor, sampled_shape) -> str | None:
    """How the drawn noise becomes the latents the steps see, when that is known (else None)."""
    if sampled_shape is None:
        return None
    if tuple(noise.shape) == tuple(sampled_shape):
        return "as_is"  # prepare_latents applies the same arithmetic to latents= as to its own draw
    pack = getattr(cls, "_pack_latents", None)
    if noise.ndim == 4 and len(sampled_shape) == 3 and callable(pack):
        b, c, h, w = noise.shape
        try:
            packed = pack(noise, b, c, h, w)
        except (TypeError, RuntimeError, ValueError):
            # another packing convention (Flux.2's takes the latents alone and wants them unpacked in
            # latents=): replay restores the RNGs and lets the pipeline draw again instead
            return None
        if tuple(packed.shape) == tuple(sampled_shape):
            return "pack_latents"  # Flux-style: pass the draw packed, as prepare_latents packs it
    return None


class CallRecorder:
    """One recorded call in progress."""

    def __init__(self, capture, pipe, original, args, kwargs):
        cls = type(pipe)
        if _pipeline.makes_video(cls):
            raise CaptureError(f"{cls.__name__} makes videos (its call takes num_frames); a .raiiaf file holds still "
                               "images, so this call cannot be recorded")
        self.capture = capture
        self.pipe = pipe
        self.arguments, self.explicit = _bind(pipe, original, args, kwargs)
        arguments = self.arguments
        self.modular = _pipeline.is_modular(pipe)
        self.has_callback = _pipeline.has_step_callback(cls)
        if self.has_callback and not _contains(arguments.get("callback_on_step_end"), capture):
            raise CaptureError(
                "inside capture.recording(pipe), pass the capture to the call: pipe(..., callback_on_step_end=capture)"
            )
        if self.modular:
            if arguments.get("state") is not None:
                raise CaptureError("a modular pipeline call given a PipelineState cannot be recorded; pass the inputs "
                                   "as arguments")
            if not _output.modular_output_ok(arguments.get("output")):
                raise CaptureError(f"output={arguments.get('output')!r} returns no images to store; use "
                                   "output='images' (or leave it out)")
        self.output_type = _output.output_type_of(arguments)
        if self.output_type is None:
            raise CaptureError(f"output_type={arguments.get('output_type')!r} returns no image to store; "
                               "use 'pil', 'np' or 'pt'")

        # Encode the arguments now: an argument that cannot be recorded fails before the generation.
        self.arg_tensors: dict[str, Any] = {}
        self.encoded = {name: _encode.encode(value, f"arg.{name}", self.arg_tensors)
                        for name, value in arguments.items() if name not in NOT_RECORDED}
        self.user_latents = arguments.get("latents")
        if self.user_latents is not None and not isinstance(self.user_latents, torch.Tensor):
            raise CaptureError("latents must be a torch.Tensor to be recorded")

        self.gen_kind, self.generators = generators_of(arguments.get("generator"))
        self.device = _pipeline.execution_device(pipe)
        # The scheduler as configured for this call (after the pipeline's __init__ rewrote its config).
        scheduler = pipe.scheduler
        self.scheduler_config = dict(scheduler.config)
        if isinstance(self.scheduler_config.get("_use_default_values"), list):
            # built from a set: sort it so the same call always writes the same bytes
            self.scheduler_config["_use_default_values"] = sorted(self.scheduler_config["_use_default_values"])
        config_tensors: dict[str, Any] = {}
        self.scheduler = Scheduler(type(scheduler).__name__, type(scheduler).__module__,
                                   _encode.encode(self.scheduler_config, "scheduler.config", config_tensors))
        if config_tensors:
            raise CaptureError(f"the config of {type(scheduler).__name__} holds arrays ({sorted(config_tensors)}); "
                               "it cannot be stored as JSON, so the scheduler could not be rebuilt")

        self.tape = TapeRecorder(self.generators, self.device)
        self.problem: str | None = None  # set when recording failed during the call
        self.steps = 0
        self.sampled_shape = None
        self.final: torch.Tensor | None = None
        self.step_latents: dict[int, torch.Tensor] = {}

    # during the call ------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        if self.problem is None:
            self.problem = f"recording failed {what}: {type(exc).__name__}: {exc}"
            logger.warning("raiiaf_diffusers: %s; the image is kept, the file will say it cannot be replayed",
                           self.problem)

    def draw(self, original, frame, args, kwargs):
        if self.problem is not None:
            return original(*args, **kwargs)
        try:
            pending = self.tape.before(frame, args, kwargs, self.steps if self.has_callback else None)
        except Exception as exc:  # the recording must never break the generation
            self._failed("before a random draw", exc)
            return original(*args, **kwargs)
        out = original(*args, **kwargs)
        try:
            self.tape.after(pending, out)
        except Exception as exc:
            self._failed("after a random draw", exc)
        return out

    def on_step(self, step_index: int, latents: torch.Tensor) -> None:
        if self.steps == 0:
            self.sampled_shape = tuple(latents.shape)
        self.steps += 1
        # A copy each step (a few KiB to a few hundred KiB): the last one is the final latents,
        # safe from any in-place change the pipeline might make after the loop.
        self.final = latents.detach().clone()
        every = self.capture.step_latents_every
        if every and (step_index + 1) % every == 0:
            self.step_latents[int(step_index)] = self.final

    # after the call -------------------------------------------------------------------------------

    def noise_and_feed(self) -> tuple:
        """(noise tensor or None, source, draw index, feed, preparation, why it is not replayable or None)."""
        cls = type(self.pipe)
        tape = self.tape
        if self.user_latents is not None:
            # The caller passed latents=: that tensor is the initial noise, as given; replay passes it again
            # with every RNG as it was at the start of the call.
            return self.user_latents.detach().clone(), "latents_argument", None, "latents", "as_is", None
        if tape.noise is None:
            return None, None, None, None, None, (
                f"{cls.__name__} drew no initial noise through randn_tensor during the call")
        preparation = _preparation(cls, tape.noise, self.sampled_shape)
        by_latents = (preparation is not None and tape.noise_index == 0 and _pipeline.names_parameter(cls, "latents")
                      and not tape.untracked_before_noise())
        return (tape.noise, "randn_tensor", tape.noise_index, "latents" if by_latents else "tape",
                preparation if by_latents else None, None)

    def finish(self, out):
        """The CapturedCall of this call, or None when not even its images could be kept (logged)."""
        from .captured import CapturedCall

        try:
            self.tape.finish()
        except Exception as exc:
            self._failed("at the end of the call", exc)
        try:
            pils, raw = _output.images(out, self.output_type, self.modular, self.arguments.get("output"))
        except Exception as exc:
            logger.error("raiiaf_diffusers: could not find the images in what %s returned (%s: %s); nothing was "
                         "written for this call", type(self.pipe).__name__, type(exc).__name__, exc)
            return None
        try:
            return CapturedCall.build(self, pils, raw)
        except Exception as exc:  # the caller keeps the images; the file says why it cannot be replayed
            self._failed("while building the record", exc)
        try:
            return CapturedCall.build(self, pils, raw)
        except Exception as exc:  # not even a not-replayable record: the images are still the caller's
            logger.error("raiiaf_diffusers: could not build a record of this %s call (%s: %s); nothing was written "
                         "for it", type(self.pipe).__name__, type(exc).__name__, exc)
            return None


__all__ = ["CallRecorder", "NOT_RECORDED", "generators_of"]
