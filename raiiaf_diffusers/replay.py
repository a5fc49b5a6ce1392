"""replay(pipe, path): regenerate a captured image and say whether it came out bit-identical, and if not, why.

Three phases. ``prepare`` reads and checks the file's record (record.DiffusersRecord.from_json), bounds
every value that drives allocation or time against the file itself (the stored noise's batch, the
stored image's size, the steps the capture ran) and rc.Limits, rebuilds the scheduler and the RNG
states, and decodes the call. ``run`` calls the pipeline with the RNGs set and every draw checked
against the tape. ``compare`` holds the result against what the file really holds: its image pixels,
its stored final latents and raw output, never only against hashes the record states about itself.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

import raiiaf_core as rc
from raiiaf_core.report import escape

from . import _attention, _encode, _hooks, _intercept, _output, _pipeline, _rng
from ._tape import TapeChecker, TooManyDraws
from .errors import ReplayError
from .record import DiffusersRecord, RecordError, ReplayLimitError, Scheduler, read

logger = logging.getLogger(__name__)

# Replayed images may be a little larger than the requested size (rounding) but never by this much.
_SIZE_SLACK = 256


class _StepOverrun(RuntimeError):
    pass


class _FinalLatents(PipelineCallback):
    """Keeps the latents after the last step of the replayed call (never changes them); stops a replay
    that runs more steps than ``limit``."""

    tensor_inputs = ["latents"]

    def __init__(self, limit: int):
        super().__init__()
        self.final = None
        self.steps = 0
        self.limit = limit

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.steps += 1
        if self.steps > self.limit:
            raise _StepOverrun(f"the replay ran more than {self.limit} steps")
        self.final = callback_kwargs["latents"].detach().clone()
        return callback_kwargs


@dataclass
class ReplayResult:
    """The regenerated output and how it compares with what the file holds."""

    output: Any  # what the pipeline returned (return_dict=True form)
    images: list  # PIL images of the whole regenerated batch
    index: int  # which of them the file holds
    final_latents: torch.Tensor | None  # whole batch, CPU; None for pipelines without a step callback
    final_latents_sha256: str | None
    stored_final_latents_sha256: str | None
    latents_equal: bool | None  # torch.equal with the stored final latents (by sha256 when not stored); None: unknown
    image_equal: bool  # same mode, size and pixel bytes as the image the file holds
    png_bytes_equal: bool  # re-encoded PNG identical to the stored file's bytes (also needs the same Pillow/zlib)
    output_equal: bool | None  # np/pt outputs: torch.equal with the stored raw output; None for "pil"
    latents_max_abs_diff: float | None  # needs store_final_latents at capture; None when equal or unknown
    image_max_abs_diff: int | None  # in 0-255 pixel units; None when equal
    drift: Any  # raiiaf_core.DriftReport: environment differences and whether they can change the output
    notes: list = field(default_factory=list)  # other differences between the capture and this replay
    tape_mismatch: str | None = None  # the first draw that differed from the RNG tape, with its site and step
    draws_checked: int | None = None  # draws compared with the tape; None when the tape was not checked
    record_problems: list = field(default_factory=list)  # where the record disagrees with the file's payloads
    recreated: list = field(default_factory=list)  # settings of the capture this replay set for its call
    remedies: list = field(default_factory=list)  # differences replay could not remove, each with what to do

    @property
    def image(self):
        return self.images[self.index]

    @property
    def bit_exact(self) -> bool:
        return (self.image_equal and self.latents_equal is not False and self.output_equal is not False
                and not self.record_problems)

    @property
    def verdict(self) -> str:
        if self.bit_exact:
            parts = ["image pixels"]
            if self.latents_equal:
                parts.insert(0, "final latents")
            if self.output_equal:
                parts.append("raw output")
            tape = "" if not self.draws_checked else f"; all {self.draws_checked} checked draws matched the RNG tape"
            return f"bit-exact: {' and '.join(parts)} identical to the file{tape}"
        parts = [f"the record disagrees with the file: {p}" for p in self.record_problems]
        if self.tape_mismatch:
            parts.append(self.tape_mismatch)
        if self.latents_equal is False:
            diff = "" if self.latents_max_abs_diff is None else f" (max abs difference {self.latents_max_abs_diff:.6g})"
            parts.append("final latents differ" + diff)
        if not self.image_equal:
            diff = "" if self.image_max_abs_diff is None else f" (max abs difference {self.image_max_abs_diff}/255)"
            parts.append("image pixels differ" + diff)
        if self.output_equal is False:
            parts.append("raw output differs")
        return "NOT bit-exact: " + "; ".join(parts)

    @property
    def unexplained(self) -> bool:
        """Not bit-exact, and no recorded difference (environment, models, arguments) accounts for it. A draw that
        differs from the tape is what differed, not why: alone it explains nothing."""
        return (not self.bit_exact and not self.drift.explains_a_difference and not self.remedies
                and not self.record_problems and not self.notes)

    def report(self) -> str:
        lines = [self.verdict]
        if self.bit_exact and self.tape_mismatch:
            lines.append(f"note: {self.tape_mismatch}")
        lines += self.recreated
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"remedy: {r}" for r in self.remedies]
        lines += self.drift.lines(unexplained=self.unexplained)
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
            "tape_mismatch": self.tape_mismatch,
            "draws_checked": self.draws_checked,
            "record_problems": list(self.record_problems),
            "notes": list(self.notes),
            "recreated": list(self.recreated),
            "remedies": list(self.remedies),
            "unexplained": self.unexplained,
            "drift": self.drift.to_dict(),
        }


# --- prepare ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    source: str
    art: Any
    record: DiffusersRecord
    index: int
    stored_image: Any  # PIL image, opened (header read), not decoded yet
    call: dict
    scheduler: Any
    global_states: list  # (torch.device, state) to set before the call
    checker: TapeChecker | None
    collector: _FinalLatents | None
    notes: list
    record_problems: list


def _fail(source: str, error: type = RecordError):
    """``fail(field, message)`` raising ``error`` for the file; ReplayLimitError for a value over an rc.Limits
    bound (also an rc.LimitExceededError)."""
    def fail(where: str, message: str):
        raise error(f"{source}: host.diffusers.{where}: {message}")
    return fail


def _scheduler_class(sched: Scheduler, fail):
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, sched.class_name, None)
    # The file names the class, so only diffusers' own scheduler modules are imported from it: a file must
    # never make replay import or call arbitrary code.
    if not isinstance(cls, type) and sched.module.startswith("diffusers."):
        try:
            cls = getattr(importlib.import_module(sched.module), sched.class_name)
        except (ImportError, AttributeError, ValueError, TypeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        fail("scheduler.class", f"{sched.module}.{sched.class_name} is not a diffusers scheduler that can be "
                                "imported here")
    return cls


def _check_config_types(cls, config: dict, limits: rc.Limits, fail, over) -> None:
    """Each stored value must have the type of the scheduler's own default for it, and no step count may
    exceed Limits.max_replay_steps (they size arrays and loops)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    for key, value in config.items():
        param = params.get(key)
        default = param.default if param is not None else None
        where = f"scheduler.config.{key}"
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        else:
            ok = True
        if not ok:
            fail(where, f"{value!r} is not a {type(default).__name__} like {cls.__name__}'s default {default!r}")
        if "steps" in key and isinstance(value, int) and not isinstance(value, bool) and abs(value) > limits.max_replay_steps:
            over(where, f"{value} exceeds Limits.max_replay_steps={limits.max_replay_steps}")


def build_scheduler(sched: Scheduler, source: str, limits: rc.Limits = rc.Limits()):
    """The scheduler a record names, built from its stored config; RecordError naming the field otherwise."""
    fail = _fail(source)
    cls = _scheduler_class(sched, fail)
    config = _encode.decode(sched.config, lambda name: None)
    # from_config drops the keys listed in _use_default_values so that this diffusers' defaults apply;
    # replay wants the values that were actually used, so every stored value is passed as given.
    config.pop("_use_default_values", None)
    _check_config_types(cls, config, limits, fail, _fail(source, ReplayLimitError))
    try:
        return cls.from_config(config)
    except Exception as exc:  # whatever the scheduler raises about its config, said as the file's field
        culprit = None
        for key in config:
            try:
                cls.from_config({k: v for k, v in config.items() if k != key})
            except Exception:
                continue
            culprit = key
            break
        fail("scheduler.config" + (f".{culprit}" if culprit else ""),
             f"{cls.__name__} refuses it: {type(exc).__name__}: {exc}")


def _batch_index(md: dict, batch: int, source: str) -> int:
    info = md.get("batch")
    if info is None and batch == 1:
        return 0
    index = info.get("index") if isinstance(info, dict) else None
    size = info.get("size") if isinstance(info, dict) else None
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < batch:
        raise RecordError(f"{source}: batch.index: {index!r} is not an image of the noise's batch of {batch}")
    if size != batch:
        raise RecordError(f"{source}: batch.size: {size!r}, but the stored noise holds a batch of {batch}")
    return index


def _stored_image(art, source: str):
    from PIL import Image

    try:
        data = art.image_bytes()
    except rc.RaiiafError as exc:
        raise ReplayError(f"{source}: the file holds no image to compare a replay with ({exc})") from None
    try:
        return Image.open(io.BytesIO(data))  # reads the header: size and mode, no pixels yet
    except Exception as exc:
        raise ReplayError(f"{source}: the stored image cannot be read ({type(exc).__name__}: {exc})") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound_arguments(record: DiffusersRecord, arguments: dict, batch: int, image_size: tuple, limits: rc.Limits,
                     fail, over) -> None:
    """Refuse stored argument values that would make the replay allocate or run far beyond the capture."""
    steps_cap = limits.max_replay_steps
    for name, value in arguments.items():
        where = f"call.arguments.{name}"
        # prompt, prompt_2, negative_prompt...: one per image at most. Other lists of strings are not per image
        # (Sana's complex_human_instruction is a list of lines prepended to every prompt).
        if ("prompt" in name and isinstance(value, list) and value and all(isinstance(v, str) for v in value)
                and len(value) > batch):
            fail(where, f"{len(value)} prompts for a batch of {batch} images")
        if name == "num_images_per_prompt" and value is not None:
            if not _is_int(value) or not 1 <= value <= batch:
                fail(where, f"{value!r} is not between 1 and the stored batch of {batch}")
        elif name in ("height", "width") and value is not None:
            limit = 2 * image_size[0 if name == "width" else 1] + _SIZE_SLACK
            if not _is_int(value) or not 1 <= value <= limit:
                fail(where, f"{value!r} is not a size up to {limit} (the stored image is "
                            f"{image_size[0]}x{image_size[1]})")
        elif name == "num_inference_steps" and value is not None:
            if not _is_int(value) or value < 1:
                fail(where, f"{value!r} is not a positive number of steps")
            if value > steps_cap:
                over(where, f"{value} exceeds Limits.max_replay_steps={steps_cap}")
            strength = arguments.get("strength")
            if record.steps_run is not None and value > record.steps_run:
                # img2img runs num_inference_steps * strength steps: only a low strength explains more.
                if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 < strength < 1
                        and value * strength <= record.steps_run + 1):
                    fail(where, f"{value} steps, but the capture ran {record.steps_run}")
        elif name in ("timesteps", "sigmas") and isinstance(value, list) and len(value) > steps_cap + 1:
            over(where, f"{len(value)} entries exceed Limits.max_replay_steps={steps_cap}")
        elif name == "strength" and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                fail(where, f"{value!r} is not a strength between 0 and 1")
        elif name == "output_type" and _output.output_type_of(arguments) != record.output.type:
            # The output is compared as the record's type says: another type would be read as the wrong kind.
            fail(where, f"{str(value)[:40]!r} does not give the {record.output.type!r} output the record stores")


def _generators(record: DiffusersRecord, load, fail, use_after_noise: bool) -> list:
    gens = record.rng.generators
    out = []
    for i, device in enumerate(gens.devices):
        name = gens.after_noise[i] if use_after_noise and gens.after_noise[i] is not None else gens.at_start[i]
        field_name = ("after_noise" if name == gens.after_noise[i] else "at_start")
        if name is None:
            fail(f"rng.generators.at_start.{i}", f"no state to start generator {i} from")
        try:
            g = torch.Generator(device=device)
        except RuntimeError as exc:
            raise ReplayError(f"the file's generator ran on {device!r}, which is not available here ({exc}); "
                              "pass generator=... to replay with another one (it will not be bit-exact)") from None
        try:
            g.set_state(load(name))
        except (RuntimeError, TypeError, ValueError) as exc:
            fail(f"rng.generators.{field_name}.{i}", f"tensor {name!r} is not a {device} generator state ({exc})")
        out.append(g)
    return out


def _global_states(record: DiffusersRecord, load, fail, use_after_noise: bool, notes: list) -> list:
    states = []
    for i, stream in enumerate(record.rng.global_rng):
        device = torch.device(stream.device)
        if not _rng.device_available(device):
            notes.append(f"the global {stream.device} RNG state was stored but that device is not available here; "
                         "not restored")
            continue
        name = stream.after_noise if use_after_noise and stream.after_noise is not None else stream.at_start
        state = load(name)
        try:
            with _rng.preserved([device]):
                _rng.set_state(device, state)
        except (RuntimeError, TypeError, ValueError) as exc:
            fail(f"rng.global.{i}", f"tensor {name!r} is not a {stream.device} RNG state ({exc})")
        states.append((device, state))
    return states


def prepare(pipe, path, overrides: dict, limits: rc.Limits) -> _Plan:
    source = os.fspath(path)
    art = rc.open(path, limits=limits)
    record, md = read(art, source, limits)
    fail = _fail(source)
    if record.not_replayable:
        raise ReplayError(f"{source}: the capture could not record this call completely ({record.not_replayable}); "
                          "it cannot be replayed")
    cls = type(pipe)
    if cls.__name__ != record.pipeline.class_name:
        raise ReplayError(f"{source} was captured with {record.pipeline.class_name}; this pipeline is a {cls.__name__}")
    if _pipeline.makes_video(cls):
        # capture refuses video pipelines: a file naming one was not made by it, and nothing here bounds its frames
        raise ReplayError(f"{source}: {cls.__name__} makes videos (its call takes num_frames); replay supports "
                          "still-image pipelines only")
    noise = record.noise
    index = _batch_index(md, noise.batch, source)
    stored_image = _stored_image(art, source)

    def load(name: str) -> torch.Tensor:
        return art.load_tensor(name, framework="torch")

    notes: list[str] = []
    problems: list[str] = []
    stored_model = md.get("model", {}).get("name") if isinstance(md.get("model"), dict) else None
    current_model = _pipeline.model_name(pipe)
    if stored_model and stored_model != current_model:
        notes.append(f"model: captured with {stored_model!r}, replayed with {current_model!r}")
    trained = _pipeline.training_components(pipe)
    if trained:
        notes.append(f"components in train() mode now: {', '.join(trained)}")
    device = torch.device(pipe._execution_device)
    if record.call.device != str(device):
        notes.append(f"device: captured on {record.call.device}, replayed on {device}")
    if record.record_version == 1:
        notes.append("record version 1: the file has no RNG tape, so draws were not checked one by one")
    notes += record.rng.warnings()
    scheduler = build_scheduler(record.scheduler, source, limits)

    # Unknown arguments are dropped before anything they refer to is loaded.
    params = _pipeline.call_parameters(cls)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    arguments = dict(record.call.arguments)
    for name in list(arguments):
        if name not in params and not var_kw:
            if name in record.call.explicit:
                raise ReplayError(f"{source}: the call used argument {name!r}, which {cls.__name__} here no "
                                  "longer accepts")
            notes.append(f"argument {name!r} (left at its default at capture) does not exist here; not passed")
            del arguments[name]
    for name in overrides:
        arguments.pop(name, None)
    _bound_arguments(record, arguments, noise.batch, stored_image.size, limits, fail, _fail(source, ReplayLimitError))
    call = _encode.decode(arguments, load, device)

    by_latents = noise.feed == "latents"
    if by_latents and "latents" not in overrides:
        stored_noise = load(noise.tensor)
        call["latents"] = type(pipe)._pack_latents(stored_noise, *stored_noise.shape) \
            if noise.preparation == "pack_latents" else stored_noise
    elif not by_latents and noise.draw is not None and record.rng.draws:
        if rc.tensor_sha256(load(noise.tensor)) != record.rng.draws[noise.draw].sha256:
            problems.append(f"noise: the stored noise is not draw {noise.draw} of the tape (sha256 differs)")
    if "generator" not in overrides:
        generators = _generators(record, load, fail, by_latents)
        kind = record.rng.generators.kind
        call["generator"] = None if kind == "none" else (generators[0] if kind == "single" else generators)
    else:
        generators = []
    global_states = _global_states(record, load, fail, by_latents, notes)

    checker = None
    if record.rng.draws is not None and not {"generator", "latents"} & set(overrides):
        start = noise.draw + 1 if by_latents and noise.draw is not None else 0
        limit = len(record.rng.draws) + 64 if not overrides else 1 << 62
        checker = TapeChecker(pipe, record.rng.draws, start, generators, limit)
    elif record.rng.draws is not None:
        notes.append("generator or latents overridden: draws were not checked against the tape")

    collector = None
    user_cb = overrides.pop("callback_on_step_end", None)
    if _pipeline.has_step_callback(cls):
        steps_changed = {"num_inference_steps", "strength", "timesteps", "sigmas"} & set(overrides)
        limit = record.steps_run if record.steps_run is not None and not steps_changed else limits.max_replay_steps
        collector = _FinalLatents(limit)
        if user_cb is None:
            call["callback_on_step_end"] = collector
        elif isinstance(user_cb, (PipelineCallback, MultiPipelineCallbacks)):
            call["callback_on_step_end"] = MultiPipelineCallbacks([user_cb, collector])
        else:
            raise ReplayError("callback_on_step_end for replay must be a PipelineCallback or MultiPipelineCallbacks")
    elif user_cb is not None:
        raise ReplayError(f"{cls.__name__} takes no callback_on_step_end")
    for key in ("callback_on_step_end_tensor_inputs", "return_dict"):
        overrides.pop(key, None)
    changed = sorted(k for k in overrides if k not in ("latents", "generator"))
    if changed:
        notes.append(f"overridden arguments: {', '.join(changed)}")
    call.update(overrides)
    if _pipeline.names_parameter(cls, "return_dict"):
        call["return_dict"] = True
    return _Plan(source, art, record, index, stored_image, call, scheduler, global_states, checker, collector,
                 notes, problems)


# --- run --------------------------------------------------------------------------------------------


def run(pipe, plan: _Plan):
    """Call the pipeline with the plan's scheduler, RNG states and arguments; the caller's scheduler and
    global RNG states are put back afterwards."""
    calls = _hooks.thread_state().calls
    with _rng.preserved([d for d, _ in plan.global_states]):
        for device, state in plan.global_states:
            _rng.set_state(device, state)
        previous = pipe.scheduler
        pipe.scheduler = plan.scheduler
        try:
            if plan.checker is None:
                return pipe(**plan.call)
            with _intercept.draws():
                calls.append(plan.checker)
                try:
                    return pipe(**plan.call)
                finally:
                    calls.remove(plan.checker)
        except (_StepOverrun, TooManyDraws) as exc:
            raise ReplayError(f"{plan.source}: stopped: {exc}, so it cannot reproduce the capture "
                              f"(steps_run={plan.record.steps_run})") from None
        except rc.RaiiafError:
            raise
        except Exception as exc:
            blame = "scheduler.config" if _failed_in_scheduler(exc) else "call.arguments"
            raise ReplayError(f"{plan.source}: host.diffusers.{blame}: {type(pipe).__name__} failed on the stored "
                              f"values: {type(exc).__name__}: {exc}") from exc
        finally:
            pipe.scheduler = previous


def _failed_in_scheduler(exc: BaseException) -> bool:
    tb = exc.__traceback__
    innermost = None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("diffusers."):
            innermost = module
        tb = tb.tb_next
    return bool(innermost and innermost.startswith("diffusers.schedulers."))


# --- compare ----------------------------------------------------------------------------------------


def compare(pipe, plan: _Plan, out, conditions: _Conditions | None = None) -> ReplayResult:
    record, art = plan.record, plan.art
    problems = list(plan.record_problems)
    if plan.checker is not None:
        plan.checker.finish()

    final = final_sha = None
    latents_equal = latents_diff = None
    expected = record.final_latents
    if plan.collector is not None and plan.collector.final is not None:
        final = plan.collector.final.cpu()
        final_sha = rc.tensor_sha256(final)
    if expected is not None:
        if expected.tensor is not None:
            stored = art.load_tensor(expected.tensor, framework="torch")
            if rc.tensor_sha256(stored) != expected.sha256:
                problems.append("final_latents.sha256 does not match the stored final latents")
            latents_equal = final is not None and final.dtype == stored.dtype and torch.equal(final, stored)
            if not latents_equal and final is not None and final.shape == stored.shape:
                latents_diff = float((final.double() - stored.double()).abs().max())
        else:  # only the record's hash to go by; the image comparison below is against the real payload
            latents_equal = final_sha == expected.sha256

    pils, raw = _output.images(out, record.output.type, record.pipeline.modular, plan.call.get("output"))
    image = pils[plan.index] if plan.index < len(pils) else None
    stored_image = plan.stored_image
    image_equal, image_diff = False, None
    if image is not None and stored_image.size == image.size:
        stored_image.load()  # decoded only now, and only at the size the replay itself produced
        if _output.pixels_sha256(stored_image) != record.output.pixels_sha256:
            problems.append("output.pixels_sha256 does not match the stored image")
        if stored_image.mode == image.mode:
            image_equal = stored_image.tobytes() == image.tobytes()
            if not image_equal:
                image_diff = int(np.abs(np.asarray(image, dtype=np.int16) - np.asarray(stored_image, dtype=np.int16)).max())
    output_equal = None
    if record.output.tensor is not None and raw is not None and plan.index < len(raw):
        stored_out = art.load_tensor(record.output.tensor, framework="torch")
        mine = _output.raw_tensor(raw[plan.index])
        output_equal = bool(stored_out.dtype == mine.dtype and torch.equal(stored_out, mine))

    checker = plan.checker
    return ReplayResult(
        output=out, images=pils, index=plan.index, final_latents=final, final_latents_sha256=final_sha,
        stored_final_latents_sha256=None if expected is None else expected.sha256, latents_equal=latents_equal,
        image_equal=image_equal,
        png_bytes_equal=image is not None and _output.png_bytes(image) == art.image_bytes(),
        output_equal=output_equal, latents_max_abs_diff=latents_diff, image_max_abs_diff=image_diff,
        drift=rc.drift(art.environment, None if conditions is None else conditions.environment), notes=plan.notes,
        tape_mismatch=None if checker is None else checker.mismatch,
        draws_checked=None if checker is None else checker.checked,
        record_problems=problems,
        recreated=[] if conditions is None else conditions.recreated,
        remedies=[] if conditions is None else conditions.remedies,
    )


@dataclass
class _Conditions:
    """What a replay set for its call, what it could not, and the environment the call ran in."""

    recreated: list
    remedies: list
    environment: dict | None = None


@contextlib.contextmanager
def recreated(pipe, plan: _Plan, enabled: bool):
    """The capture's settable conditions (raiiaf_core.recreated: threads, determinism switches, SDPA backends;
    _attention: the models' attention processors) for the block only; everything is put back afterwards."""
    conditions = _Conditions([], [])
    with rc.recreated(plan.art.environment, enabled=enabled) as torch_settings, \
            _attention.recreated(pipe, plan.record.components, enabled=enabled) as (processors, remedies):
        conditions.recreated = torch_settings.lines(also=processors)
        conditions.remedies = remedies + _dtype_remedies(pipe, plan.record.components)
        yield conditions
        conditions.environment = rc.capture_environment()  # as the call ran, before anything is put back


def _dtype_remedies(pipe, components: dict) -> list:
    """Components whose weights are in another dtype than at capture (not changed here: a cast can lose bits)."""
    out = []
    now = _pipeline.components(pipe)
    for name, info in components.items():
        mine = now.get(name)
        if isinstance(info, dict) and isinstance(mine, dict) and "dtype" in info and info["dtype"] != mine.get("dtype"):
            out.append(f"{name} ran in {escape(info['dtype'])} at capture, here {mine.get('dtype')}: load "
                       f"it in that dtype (pipe.{name}.to(torch.{escape(info['dtype'])}))")
    return out


def replay(pipe, path: str | os.PathLike, *, limits: rc.Limits | None = None, recreate: bool = True,
           **overrides) -> ReplayResult:
    """Regenerate the image stored in ``path`` with ``pipe`` and compare it with what the file holds.

    The scheduler is rebuilt from the stored class and config (``pipe.scheduler`` is put back
    afterwards). Where the record says so, the stored noise is passed as ``latents=`` (packed where
    the pipeline packs it) with the RNGs as they were right after the noise draw; otherwise every RNG
    is restored as it was at the start of the call and the pipeline draws again, each draw checked
    against the file's RNG tape. The caller's global RNG states are put back afterwards. The stored
    call arguments are passed again; ``overrides`` replace any of them (``generator=`` and ``latents=``
    included). The whole batch of the capture is regenerated: batch size changes the numerics.
    ``limits`` bounds what the file may ask for (rc.Limits; ``max_replay_steps`` among others).

    By default the call runs under the capture's recorded conditions that a process can set: the torch
    thread count, the determinism switches (TF32, cuDNN, matmul precision, deterministic algorithms, oneDNN),
    the scaled_dot_product_attention backends and the models' attention processors; all are put back
    afterwards, also when the pipeline raises. ``result.recreated`` lists what was set; ``result.remedies``
    and the drift report say what could not be set and what to do. ``recreate=False`` leaves them as they are.
    """
    plan = prepare(pipe, path, dict(overrides), limits or rc.Limits())
    with recreated(pipe, plan, recreate) as conditions:
        out = run(pipe, plan)
    result = compare(pipe, plan, out, conditions)
    logger.info("raiiaf_diffusers replay of %s: %s", plan.source, result.verdict)
    return result


__all__ = ["replay", "ReplayResult", "build_scheduler"]
