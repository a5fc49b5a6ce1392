"""RaiiafCapture: record one diffusers pipeline call into one .raiiaf file per generated image.

    capture = RaiiafCapture("out/cat.raiiaf")
    with capture.recording(pipe):
        image = pipe("a cat", generator=torch.Generator().manual_seed(0), callback_on_step_end=capture).images[0]

Why two pieces. A ``callback_on_step_end`` is first called after the first scheduler step, so it
never sees the initial noise, and it never sees the call arguments or the decoded images.
``recording(pipe)`` therefore swaps two things for the duration of the block (see ``_hooks``): the
``randn_tensor`` that the pipeline's ``prepare_latents`` resolves through its module globals, to
keep the raw draw and the RNG states right after it, and the pipeline class's ``__call__``, to see
the arguments and the returned images and to write the files when the call returns. The callback
(a real ``PipelineCallback``, so it composes with ``MultiPipelineCallbacks``) records the latents
after every step, i.e. the final latents. All of it is pass-through: the pipeline computes exactly
what it computes without capture.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

import raiiaf_core as rc

from . import _encode, _hooks
from .errors import CaptureError

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
# Arguments replay supplies itself (noise, generators, its own callback) or that cannot change the
# image; everything else the call received is recorded and passed again.
_NOT_RECORDED = frozenset(
    {"generator", "latents", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "callback",
     "callback_steps", "return_dict"}
)
_OUTPUT_TYPES = ("pil", "np", "numpy", "pt")
# torch.Generator().initial_seed() of a generator nobody seeded: not a seed the user chose.
_UNSEEDED = 67280421310721
_SNAPSHOT_RE = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def _version() -> str:
    from . import __version__

    return __version__


# --- the recorder ------------------------------------------------------------------------------


class RaiiafCapture(PipelineCallback):
    """Step callback + recorder that turns each pipeline call into ``.raiiaf`` files.

    Args:
        path: where to write. A file name (``"out/cat.raiiaf"``); fields ``{index}`` (position in
            the batch), ``{call}`` (0, 1, ... per call recorded by this object) and ``{seed}`` are
            filled in. A batch of N images gives N files: when ``{index}`` is absent, ``-{index}``
            is added before the suffix (``cat-0.raiiaf`` ... ``cat-{N-1}.raiiaf``). An existing
            folder gets ``{call:05d}-{index}.raiiaf`` files. ``None``: nothing is written; the last
            call stays in ``capture.last`` and ``capture.last.write(path)`` writes it.
        store_final_latents: also store the final latents (their sha256 is always stored).
        step_latents_every: also store the latents after every N-th step (steps N-1, 2N-1, ...).
        exclusive: refuse to replace an existing file (raiiaf_core.TargetExistsError).
        tags, notes, extra: copied into every file's metadata.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        store_final_latents: bool = False,
        step_latents_every: int | None = None,
        exclusive: bool = False,
        tags: list[str] | None = None,
        notes: str | None = None,
        extra: dict | None = None,
    ):
        super().__init__()
        if step_latents_every is not None and (not isinstance(step_latents_every, int) or step_latents_every < 1):
            raise ValueError("step_latents_every must be a positive integer or None")
        self.path = None if path is None else os.fspath(path)
        self.store_final_latents = bool(store_final_latents)
        self.step_latents_every = step_latents_every
        self.exclusive = bool(exclusive)
        self.tags = list(tags) if tags else None
        self.notes = notes
        self.extra = dict(extra) if extra else None
        self.paths: list[Path] = []  # every file written, in order
        self.last: CapturedCall | None = None  # the most recent recorded call
        self._lock = threading.Lock()
        self._calls = 0
        self._written: set[str] = set()

    # PipelineCallback interface -----------------------------------------------------------------

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        call = _call_for(pipeline, self)
        if call is None:
            raise CaptureError(
                "RaiiafCapture was called as a step callback outside `with capture.recording(pipe):`; "
                "a step callback alone cannot see the initial noise, so nothing would be replayable"
            )
        latents = callback_kwargs.get("latents")
        if not isinstance(latents, torch.Tensor):
            raise CaptureError(f"{type(pipeline).__name__} did not pass 'latents' to the step callback")
        call.on_step(step_index, latents)
        return callback_kwargs  # unchanged: capture must not alter the generation

    # scoped recording -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def recording(self, pipe):
        """Record every ``pipe(..., callback_on_step_end=capture)`` call made in this block, in this thread.

        Raises CaptureError up front when the pipeline's initial noise cannot be intercepted.
        Everything swapped is restored on exit, also when the pipeline raises.
        """
        cls = type(pipe)
        prepare = getattr(cls, "prepare_latents", None)
        if prepare is None:
            raise CaptureError(f"{cls.__name__} has no prepare_latents method, so its initial noise cannot be captured")
        namespace = getattr(inspect.unwrap(prepare), "__globals__", None)
        if not isinstance(namespace, dict) or not callable(namespace.get("randn_tensor")):
            raise CaptureError(
                f"{cls.__name__}.prepare_latents does not draw its noise through diffusers' randn_tensor, "
                "so the initial noise cannot be captured"
            )
        if "latents" not in inspect.signature(cls.__call__).parameters:
            raise CaptureError(f"{cls.__name__}.__call__ takes no 'latents' argument, so stored noise could not be replayed")

        state = _hooks.thread_state()
        entry = (pipe, self)
        keys = []
        try:
            keys.append(_hooks.acquire(namespace, "randn_tensor", _make_randn_wrapper))
            keys.append(_hooks.acquire(cls, "__call__", _make_call_wrapper))
            state.recordings.append(entry)
            yield self
        finally:
            for i in range(len(state.recordings) - 1, -1, -1):
                if state.recordings[i] is entry:
                    del state.recordings[i]
                    break
            for key in reversed(keys):
                _hooks.release(key)

    # called by the __call__ wrapper -----------------------------------------------------------------

    def _run(self, original, pipe, args, kwargs):
        call = _Call.start(self, pipe, original, args, kwargs)
        state = _hooks.thread_state()
        state.calls.append(call)
        try:
            out = original(pipe, *args, **kwargs)
        finally:
            state.calls.remove(call)
        captured = call.finish(out)
        with self._lock:
            number = self._calls
            self._calls += 1
            self.last = captured
        if self.path is not None:
            paths = captured.write(self.path, call=number, exclusive=self.exclusive)
            with self._lock:
                for p in paths:
                    key = os.path.abspath(p)
                    if key in self._written:
                        logger.warning("raiiaf_diffusers: %s replaced a file this capture wrote earlier; "
                                       "put {call} in the path to keep every call", p)
                    self._written.add(key)
                self.paths.extend(paths)
        return out


def _contains(callback, capture) -> bool:
    if callback is capture:
        return True
    if isinstance(callback, MultiPipelineCallbacks):
        return any(_contains(c, capture) for c in callback.callbacks)
    return False


def _call_for(pipeline, capture) -> _Call | None:
    for call in reversed(_hooks.thread_state().calls):
        if call.pipe is pipeline and call.capture is capture:
            return call
    return None


def _recorder_for(pipe) -> RaiiafCapture | None:
    state = _hooks.thread_state()
    if any(call.pipe is pipe for call in state.calls):
        return None  # already recording this call (nested wrappers of a class hierarchy)
    for p, capture in reversed(state.recordings):
        if p is pipe:
            return capture
    return None


def _make_call_wrapper(original):
    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        capture = _recorder_for(self)
        if capture is None:
            return original(self, *args, **kwargs)
        return capture._run(original, self, args, kwargs)

    return __call__


def _make_randn_wrapper(original):
    @functools.wraps(original)
    def randn_tensor(*args, **kwargs):
        calls = _hooks.thread_state().calls
        if not calls:
            return original(*args, **kwargs)
        return calls[-1].draw(original, args, kwargs)

    return randn_tensor


# --- one call in progress ------------------------------------------------------------------------


def _generators(value) -> tuple[str, list[torch.Generator]]:
    if value is None:
        return "none", []
    if isinstance(value, torch.Generator):
        return "single", [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(g, torch.Generator) for g in value):
        return "list", list(value)
    raise CaptureError(f"generator must be a torch.Generator, a list of them, or None; got {type(value).__name__}")


@functools.lru_cache(maxsize=64)
def _signature(function) -> inspect.Signature:
    return inspect.signature(function)


def _accelerator_present() -> bool:
    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _device_rng_state(device: torch.device) -> torch.Tensor | None:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


class _Call:
    """State of one recorded pipeline call, filled by the randn wrapper and the step callback."""

    @classmethod
    def start(cls, capture: RaiiafCapture, pipe, original, args, kwargs) -> _Call:
        self = cls()
        self.capture = capture
        self.pipe = pipe
        sig = _signature(original)
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
        self.arguments = arguments
        self.explicit = explicit

        if not _contains(arguments.get("callback_on_step_end"), capture):
            raise CaptureError(
                "inside capture.recording(pipe), pass the capture to the call: pipe(..., callback_on_step_end=capture)"
            )
        output_type = arguments.get("output_type", "pil")
        if output_type not in _OUTPUT_TYPES:
            raise CaptureError(f"output_type={output_type!r} returns no image to store; use 'pil', 'np' or 'pt'")
        self.output_type = "np" if output_type == "numpy" else output_type

        # Encode the arguments now: an argument that cannot be recorded fails before the generation.
        self.arg_tensors: dict[str, Any] = {}
        self.call_record = {}
        for name, value in arguments.items():
            if name not in _NOT_RECORDED:
                self.call_record[name] = _encode.encode(value, f"arg.{name}", self.arg_tensors)
        self.user_latents = arguments.get("latents")
        if self.user_latents is not None and not isinstance(self.user_latents, torch.Tensor):
            raise CaptureError("latents must be a torch.Tensor to be recorded")

        self.gen_kind, self.generators = _generators(arguments.get("generator"))
        # _execution_device walks every module's hooks; on a machine without an accelerator it can
        # only be the CPU, so skip that walk (it is a measurable part of a tiny pipeline's call).
        self.device = torch.device(pipe._execution_device) if _accelerator_present() else torch.device("cpu")
        # The scheduler as configured for this call (after the pipeline's __init__ rewrote its config).
        self.scheduler_cls = type(pipe.scheduler)
        self.scheduler_config = dict(pipe.scheduler.config)
        if isinstance(self.scheduler_config.get("_use_default_values"), list):
            # built from a set: sort it so the same call always writes the same bytes
            self.scheduler_config["_use_default_values"] = sorted(self.scheduler_config["_use_default_values"])
        scheduler_tensors: dict[str, Any] = {}
        self.scheduler_record = _encode.encode(self.scheduler_config, "scheduler.config", scheduler_tensors)
        if scheduler_tensors:
            raise CaptureError(f"the config of {self.scheduler_cls.__name__} holds arrays ({sorted(scheduler_tensors)}); "
                               "it cannot be stored as JSON, so the scheduler could not be rebuilt")

        self.gen_start = [g.get_state() for g in self.generators]
        self.cpu_start = torch.get_rng_state()
        self.dev_start = _device_rng_state(self.device)
        self.draws = 0
        self.noise = None
        self.gen_after = None
        self.cpu_after = None
        self.dev_after = None
        self.draw_used_global = False
        self.gen_used_before_draw = False
        self.global_used_before_draw = False
        self.steps = 0
        self.sampled_shape = None
        self.final = None
        self.step_latents: dict[int, torch.Tensor] = {}
        return self

    def draw(self, original, args, kwargs):
        generator = kwargs["generator"] if "generator" in kwargs else (args[1] if len(args) > 1 else None)
        if self.draws == 0:
            # Was any RNG used before the noise draw? Replay restores the states as they were right
            # after the draw, so an earlier use (img2img encodes its input image with the generator)
            # would not be reproduced.
            self.gen_used_before_draw = any(
                not torch.equal(g.get_state(), s) for g, s in zip(self.generators, self.gen_start)
            )
            self.global_used_before_draw = not torch.equal(torch.get_rng_state(), self.cpu_start)
        out = original(*args, **kwargs)
        self.draws += 1
        if self.draws == 1:
            self.noise = out.detach().clone()  # the pipeline scales/packs into new tensors; clone anyway
            _, gens = _generators(generator)
            self.draw_used_global = not gens
            self.gen_after = [g.get_state() for g in gens]
            if [id(g) for g in gens] != [id(g) for g in self.generators]:
                raise CaptureError("the initial noise was drawn from generators other than the call's `generator`")
            self.cpu_after = torch.get_rng_state()
            self.dev_after = _device_rng_state(self.device)
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

    # ------------------------------------------------------------------------------------------

    def finish(self, out) -> CapturedCall:
        pipe = self.pipe
        cls = type(pipe)
        if self.noise is not None:
            source = "randn_tensor"
            noise = self.noise
        elif self.user_latents is not None:
            # The caller passed latents=: that tensor is the initial noise, as given.
            source = "latents_argument"
            noise = self.user_latents.detach().clone()
            self.gen_after = self.gen_start
            self.cpu_after, self.dev_after = self.cpu_start, self.dev_start
        else:
            raise CaptureError(
                f"{cls.__name__} drew no initial noise through randn_tensor during the call, so none was captured"
            )
        if self.gen_used_before_draw:
            raise CaptureError(
                f"{cls.__name__} used the generator before drawing the initial noise (for instance to encode an "
                "input image); such calls cannot be replayed from the noise and post-draw states, so no file was written"
            )
        if self.final is None:
            raise CaptureError(f"{cls.__name__} ran no denoising step, so there are no final latents to record")

        if source == "latents_argument" or tuple(noise.shape) == self.sampled_shape:
            preparation = "as_is"  # prepare_latents applies the same arithmetic to latents= as to its own draw
        elif noise.ndim == 4 and len(self.sampled_shape) == 3 and callable(getattr(cls, "_pack_latents", None)):
            b, c, h, w = noise.shape
            packed = cls._pack_latents(noise, b, c, h, w)
            if tuple(packed.shape) != self.sampled_shape:
                raise CaptureError(f"{cls.__name__}: packing the drawn noise {list(noise.shape)} does not give the "
                                   f"sampled latents' shape {list(self.sampled_shape)}")
            preparation = "pack_latents"  # Flux-style: pass the draw packed, as prepare_latents packs it
        else:
            raise CaptureError(
                f"{cls.__name__} turns the drawn noise {list(noise.shape)} into latents of shape "
                f"{list(self.sampled_shape)} in a way raiiaf_diffusers does not know; the noise could not be "
                "stored in a replayable form"
            )
        if self.global_used_before_draw and self.draw_used_global:
            logger.warning("raiiaf_diffusers: the global torch RNG was used before the noise draw (a module in "
                           "train() mode?); replay may not be exact")
        if self.draws > 1:
            logger.info("raiiaf_diffusers: %s drew noise %d times; the first draw is the initial noise",
                        cls.__name__, self.draws)

        pils, raw = _images(out, self.output_type, noise.shape[0])
        return CapturedCall._build(self, noise, source, preparation, pils, raw)


def _images(out, output_type: str, batch: int):
    from diffusers.image_processor import VaeImageProcessor

    images = out.images if hasattr(out, "images") else out[0]
    raw = None
    if output_type == "pil":
        pils = list(images)
    elif output_type == "np":
        raw = [images[i] for i in range(len(images))]
        pils = VaeImageProcessor.numpy_to_pil(images)
    else:
        raw = [images[i] for i in range(images.shape[0])]
        pils = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images.detach().cpu().float()))
    if len(pils) != batch:
        raise CaptureError(f"the pipeline returned {len(pils)} images for a noise batch of {batch}")
    return pils, raw


def png_bytes(image) -> bytes:
    """The PNG encoding stored in files (zlib level 4, like raiiaf_core); replay re-encodes the same way."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=rc.PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def pixels_sha256(image) -> str:
    """sha256 over mode, size and raw pixel bytes of a PIL image (independent of PNG encoder settings)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _class_path(obj) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _any_training(module: torch.nn.Module) -> bool:
    # Explicit walk over _modules: several times faster than any(m.training for m in module.modules()),
    # which builds a memo set and name prefixes for every submodule.
    stack = [module]
    while stack:
        m = stack.pop()
        if m.training:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


def _components(components: dict) -> dict:
    out = {}
    for name, comp in components.items():
        if comp is None:
            out[name] = None
            continue
        info: dict[str, Any] = {"class": _class_path(comp)}
        if isinstance(comp, torch.nn.Module):
            # Any submodule in train() mode matters: its dropout draws from the global RNG.
            info["training"] = _any_training(comp)
            param = next(comp.parameters(), None)
            if param is not None:
                info["dtype"] = str(param.dtype).removeprefix("torch.")
                info["device"] = str(param.device)
            config = getattr(comp, "config", None)
            name_or_path = getattr(config, "_name_or_path", None) if config is not None else None
            if isinstance(name_or_path, str) and name_or_path:
                info["name_or_path"] = name_or_path
        out[name] = info
    return out


def _model(pipe, components: dict) -> dict:
    name_or_path = pipe.config.get("_name_or_path") if hasattr(pipe, "config") else None
    model: dict[str, Any] = {}
    if isinstance(name_or_path, str) and name_or_path:
        model["name"] = name_or_path
        if os.path.isdir(name_or_path):
            model["path"] = os.path.abspath(name_or_path)
        else:
            model["id"] = name_or_path
    revision = pipe.config.get("_commit_hash") if hasattr(pipe, "config") else None
    candidates = [name_or_path]
    for comp in components.values():
        config = getattr(comp, "config", None)
        if config is not None:
            revision = revision or getattr(config, "_commit_hash", None)
            candidates.append(getattr(config, "_name_or_path", None))
    if not revision:
        # A model loaded from the Hugging Face cache lives under .../snapshots/<commit>/.
        for c in candidates:
            m = _SNAPSHOT_RE.search(c) if isinstance(c, str) else None
            if m:
                revision = m.group(1)
                break
    if isinstance(revision, str) and revision:
        model["revision"] = revision
    return model


def _noise_schedule(config: dict) -> str | None:
    for flag, name in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                       ("use_beta_sigmas", "beta")):
        if config.get(flag):
            return name
    return None


def _pick(value, index: int, per_prompt: int):
    """The prompt for image `index`: prompts repeat num_images_per_prompt times, in order."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return value[min(index // max(per_prompt, 1), len(value) - 1)]
    return None


# --- the result of one call ----------------------------------------------------------------------


@dataclass
class CapturedCall:
    """Everything recorded for one pipeline call; one file per image of its batch."""

    images: list  # PIL images, one per batch item
    outputs: list | None  # the raw np/pt output per item when output_type was not "pil"
    noise: torch.Tensor  # the initial noise as drawn (whole batch, on CPU)
    final_latents: torch.Tensor  # latents after the last step (whole batch, on CPU)
    final_latents_sha256: str
    shared_tensors: dict[str, Any]  # tensors stored in every file of this call
    record: dict  # metadata["host"]["diffusers"], minus the per-image "output" entry
    common: dict  # top-level metadata shared by every file
    per_image: list = field(default_factory=list)  # top-level metadata that differs per image

    @property
    def batch_size(self) -> int:
        return len(self.images)

    @classmethod
    def _build(cls, call: _Call, noise, source, preparation, pils, raw) -> CapturedCall:
        pipe, capture = call.pipe, call.capture
        tensors: dict[str, Any] = {"noise": noise.detach().cpu()}
        tensors.update(call.arg_tensors)

        gen_names = []
        for i, state in enumerate(call.gen_after):
            tensors[f"rng.generator.{i}"] = state
            gen_names.append(f"rng.generator.{i}")
        tensors["rng.torch_cpu.at_start"] = call.cpu_start
        tensors["rng.torch_cpu.after_draw"] = call.cpu_after
        device_rng = None
        if call.dev_after is not None:
            tensors["rng.torch_device.at_start"] = call.dev_start
            tensors["rng.torch_device.after_draw"] = call.dev_after
            device_rng = {"type": call.device.type, "index": call.device.index,
                          "at_start": "rng.torch_device.at_start", "after_draw": "rng.torch_device.after_draw"}

        final = call.final.detach().cpu()
        final_sha = rc.tensor_sha256(final)
        if capture.store_final_latents:
            tensors["final_latents"] = final
        step_names = {}
        for step, t in sorted(call.step_latents.items()):
            name = f"step_latents.{step}"
            tensors[name] = t.detach().cpu()
            step_names[str(step)] = name

        seeds = []
        for g in call.generators:
            s = g.initial_seed()
            seeds.append(None if s == _UNSEEDED else int(s))

        pipe_components = pipe.components
        components = _components(pipe_components)
        training = sorted(n for n, c in components.items() if c and c.get("training"))
        if training:
            logger.warning("raiiaf_diffusers: components in train() mode (%s): dropout uses the global RNG, "
                           "call .eval() for reproducible images", ", ".join(training))
        import diffusers

        record = {
            "record_version": RECORD_VERSION,
            "diffusers_version": diffusers.__version__,
            "pipeline": {"class": type(pipe).__name__, "module": type(pipe).__module__},
            "components": components,
            "training_components": training,
            "scheduler": {"class": call.scheduler_cls.__name__, "module": call.scheduler_cls.__module__,
                          "config": call.scheduler_record},
            "call": call.call_record,
            "call_explicit": call.explicit,
            "dtype": str(noise.dtype).removeprefix("torch."),
            "device": str(call.device),
            "noise": {"tensor": "noise", "source": source, "preparation": preparation,
                      "shape": list(noise.shape), "dtype": str(noise.dtype).removeprefix("torch."),
                      "device": str(noise.device), "sampled_shape": list(call.sampled_shape), "draws": call.draws},
            "generator": {"kind": call.gen_kind, "devices": [str(g.device) for g in call.generators],
                          "seeds": seeds, "states": gen_names, "moment": "after_noise_draw"},
            "global_rng": {
                "cpu": {"at_start": "rng.torch_cpu.at_start", "after_draw": "rng.torch_cpu.after_draw"},
                "device": device_rng,
                # Replay sets the global RNG before the call. When the draw itself used the global RNG
                # (no generator given) the state after the draw is the one to restore; otherwise the
                # state at the start, so anything that draws before prepare_latents draws the same.
                "restore": "after_draw" if call.draw_used_global else "at_start",
            },
            "final_latents": {"sha256": final_sha, "shape": list(final.shape),
                              "dtype": str(final.dtype).removeprefix("torch."),
                              "tensor": "final_latents" if capture.store_final_latents else None},
            "step_latents": {"every": capture.step_latents_every, "tensors": step_names}
            if capture.step_latents_every else None,
            "steps_run": call.steps,
        }

        args = call.arguments
        common: dict[str, Any] = {
            "generator": {"name": "raiiaf_diffusers", "version": _version()},
            "sampler": call.scheduler_cls.__name__,
            "sampler_settings": _encode.plain(call.scheduler_config),
            "steps": call.steps,
            "noise": {"tensor": "noise", "source": "captured"},
        }
        model = _model(pipe, pipe_components)
        if model:
            common["model"] = model
        schedule = _noise_schedule(call.scheduler_config)
        if schedule:
            common["scheduler"] = schedule
        for key in ("guidance_scale", "strength"):
            v = args.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                common[key] = float(v)
        if capture.tags:
            common["tags"] = capture.tags
        if capture.notes:
            common["notes"] = capture.notes
        if capture.extra:
            common["extra"] = capture.extra

        per_prompt = args.get("num_images_per_prompt") or 1
        per_image = []
        for i, img in enumerate(pils):
            md: dict[str, Any] = {"batch": {"index": i, "size": len(pils)}, "width": img.size[0], "height": img.size[1]}
            for key in ("prompt", "negative_prompt"):
                v = _pick(args.get(key), i, per_prompt)
                if v is not None:
                    md[key] = v
            md["seed"] = seeds[i] if call.gen_kind == "list" else (seeds[0] if seeds else None)
            md["output"] = {"type": call.output_type, "tensor": "output" if raw is not None else None,
                            "pixels_sha256": pixels_sha256(img)}
            per_image.append(md)

        return cls(images=pils, outputs=raw, noise=tensors["noise"], final_latents=final,
                   final_latents_sha256=final_sha, shared_tensors=tensors, record=record, common=common,
                   per_image=per_image)

    def metadata_for(self, index: int) -> dict:
        own = dict(self.per_image[index])
        output = own.pop("output")
        md = {**self.common, **own}
        md["host"] = {"diffusers": {**self.record, "output": output}}
        return md

    def tensors_for(self, index: int) -> dict:
        tensors = dict(self.shared_tensors)
        if self.outputs is not None:
            out = self.outputs[index]
            tensors["output"] = out.detach().cpu() if isinstance(out, torch.Tensor) else out
        return tensors

    def paths_for(self, path: str | os.PathLike, call: int = 0) -> list[Path]:
        template = os.fspath(path)
        if os.path.isdir(template):
            template = os.path.join(template, "{call:05d}-{index}.raiiaf")
        elif self.batch_size > 1 and "{index" not in template:
            p = Path(template)
            template = str(p.with_name(p.stem + "-{index}" + p.suffix))
        out = []
        for i, md in enumerate(self.per_image):
            try:
                out.append(Path(template.format(index=i, call=call, seed=md.get("seed"))))
            except (KeyError, IndexError, ValueError) as exc:
                raise CaptureError(f"path template {os.fspath(path)!r}: {exc!r}; fields are {{index}}, {{call}}, {{seed}}") from None
        if len(set(out)) != len(out):
            raise CaptureError(f"path template {os.fspath(path)!r} gives the same file name to several images")
        return out

    def write(self, path: str | os.PathLike, *, call: int = 0, exclusive: bool = False) -> list[Path]:
        """Write one file per image; returns the paths. Environment is captured once for the batch."""
        paths = self.paths_for(path, call)
        environment = rc.capture_environment()
        written = []
        for i, p in enumerate(paths):
            if p.parent and not p.parent.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
            written.append(Path(rc.write(p, image=png_bytes(self.images[i]), tensors=self.tensors_for(i),
                                         metadata=self.metadata_for(i), environment=environment,
                                         exclusive=exclusive)))
        return written
