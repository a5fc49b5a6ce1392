"""The RNG tape at run time: recording every randn_tensor draw of a call (capture) and checking each
draw against a recorded tape as it happens (replay).

Both sides see a draw through ``_intercept``, which calls the original with the same arguments and
returns its result unchanged; the recorder looks at the draw ``before`` and ``after`` that.

Recording keeps, for every RNG the call can draw from (each of its generators, and the global torch
RNG of the CPU and of the execution device), the state it had at the start of the call and the state
it was left in by the last taped draw. A draw that finds its RNG in another state means that something
drew from it without randn_tensor in between (``torch.randn``, ``torch.rand``, ``randn_like``); the same
check runs over every RNG when the call ends. Those uses are listed in the tape ("untracked").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import raiiaf_core as rc

from . import _intercept, _rng
from .record import Draw, GlobalStream, Site, Untracked

# Modules whose draws are not the initial noise: VAE sampling (img2img encodes its input image with the
# generator) and the stochastic schedulers' per-step noise. The first draw made anywhere else (a pipeline
# module, a modular pipeline's before_denoise step, a user's subclass) is the initial noise.
_NOT_NOISE = ("diffusers.models.", "diffusers.schedulers.")


def is_noise_site(site: Site) -> bool:
    return not site.module.startswith(_NOT_NOISE)


def _generator_argument(args: tuple, kwargs: dict):
    if "generator" in kwargs:
        return kwargs["generator"]
    return args[1] if len(args) > 1 else None


def _draw_device(args: tuple, kwargs: dict) -> torch.device:
    """The device whose global RNG randn_tensor draws from when it gets no generator."""
    device = kwargs["device"] if "device" in kwargs else (args[2] if len(args) > 2 else None)
    return torch.device(device) if device is not None else _rng.CPU


def _used_generators(generator, batch: int) -> list:
    if isinstance(generator, torch.Generator):
        return [generator]
    if isinstance(generator, (list, tuple)):
        return list(generator[:1] if len(generator) == 1 else generator[:batch])
    return []


class _Stream:
    """One RNG of the call: how to read its state, and the state the tape expects it in."""

    __slots__ = ("read", "at_start", "expected", "after_noise")

    def __init__(self, read):
        self.read = read
        self.at_start = read()
        self.expected = self.at_start
        self.after_noise = None

    def changed(self) -> bool:
        return not torch.equal(self.read(), self.expected)


@dataclass
class _Pending:
    index: int
    tensor: torch.Tensor


class TapeRecorder:
    """Records the draws of one call. ``generators``: the call's, in order; ``device``: its execution device."""

    def __init__(self, generators: list, device: torch.device):
        self.generators = generators
        self.gen_streams = [_Stream(g.get_state) for g in generators]
        self.global_devices = _rng.global_devices(device)
        self.global_streams = [_Stream(lambda d=d: _rng.get_state(d)) for d in self.global_devices]
        self._by_id = {id(g): i for i, g in enumerate(generators)}
        self.draws: list[Draw] = []
        self._pending: list[_Pending] = []
        self.untracked: list[Untracked] = []
        self.noise_index: int | None = None
        self.noise: torch.Tensor | None = None

    def _global_index(self, device: torch.device) -> int | None:
        if device.type == "cpu":
            return 0
        for i, d in enumerate(self.global_devices):
            if d.type == device.type and (device.index is None or d.index in (None, device.index)):
                return i
        if not _rng.has_global_rng(device):
            return None
        # A device the call's execution device did not predict: tracked from its first draw on.
        self.global_devices.append(device)
        self.global_streams.append(_Stream(lambda d=device: _rng.get_state(d)))
        return len(self.global_streams) - 1

    def before(self, frame, args: tuple, kwargs: dict, step: int | None) -> tuple:
        """Called before the original draws: which RNGs it will use, and whether they were used untracked."""
        site = Site(*_intercept.site_of(frame))
        generator = _generator_argument(args, kwargs)
        shape = args[0] if args else kwargs.get("shape", ())
        used = _used_generators(generator, shape[0] if len(shape) else 1)
        indices = [self._by_id.get(id(g)) for g in used]
        if not used:
            index = self._global_index(_draw_device(args, kwargs))
            streams = [] if index is None else [("global", index, self.global_streams[index])]
            generators: tuple | None = ()
        elif None in indices:
            streams, generators = [], None  # a generator the call was not given: the tape cannot restore it
        else:
            streams = [("generator", i, self.gen_streams[i]) for i in indices]
            generators = tuple(indices)
        number = len(self.draws)
        for kind, index, stream in streams:
            if stream.changed():
                self.untracked.append(Untracked(kind, index, number))
        return site, generators, streams, step

    def after(self, pending: tuple, out: torch.Tensor) -> None:
        """Called with what the original drew."""
        site, generators, streams, step = pending
        number = len(self.draws)
        for _, _, stream in streams:
            stream.expected = stream.read()
        if self.noise_index is None and is_noise_site(site):
            self.noise_index = number
            self.noise = out.detach().clone()
            for _, _, stream in streams:
                stream.after_noise = stream.expected
        draw = Draw(site, generators, tuple(out.shape), str(out.dtype).removeprefix("torch."), str(out.device), "",
                    step)
        if out.device.type == "cpu":
            draw = _hashed(draw, out)
        else:  # hashing now would wait for the device at every draw: copy on the device, hash at the end
            self._pending.append(_Pending(number, out.detach().clone()))
        self.draws.append(draw)

    def finish(self) -> None:
        """End of the call: hash what was left on the device, and look for untracked uses after the last draw."""
        for pending in self._pending:
            self.draws[pending.index] = _hashed(self.draws[pending.index], pending.tensor)
        self._pending.clear()
        for i, stream in enumerate(self.gen_streams):
            if stream.changed():
                self.untracked.append(Untracked("generator", i, None))
        for i, stream in enumerate(self.global_streams):
            if stream.changed():
                self.untracked.append(Untracked("global", i, None))

    def untracked_before_noise(self) -> bool:
        """Whether an RNG the noise draw used was used before it (so its post-draw state misses earlier draws)."""
        if self.noise_index is None:
            return False
        used = {(u.stream, u.index) for u in self.untracked if u.before is not None and u.before <= self.noise_index}
        noise_streams = {("generator", i) for i, s in enumerate(self.gen_streams) if s.after_noise is not None}
        noise_streams |= {("global", i) for i, s in enumerate(self.global_streams) if s.after_noise is not None}
        return bool(used & noise_streams)

    def global_records(self, name) -> tuple:
        """GlobalStream records; ``name(i, moment, state)`` stores a state tensor and returns its name."""
        return tuple(GlobalStream(str(d), name(i, "at_start", s.at_start),
                                  None if s.after_noise is None else name(i, "after_noise", s.after_noise))
                     for i, (d, s) in enumerate(zip(self.global_devices, self.global_streams)))


def _hashed(draw: Draw, tensor: torch.Tensor) -> Draw:
    return Draw(draw.site, draw.generators, draw.shape, draw.dtype, draw.device, rc.tensor_sha256(tensor), draw.step)


class TapeChecker:
    """Checks the draws of a replayed call against a recorded tape, from draw ``start`` on.

    Records the first mismatch (with the taped draw's site and step) and keeps going: the replay still
    finishes and its output is compared with the file's. ``pipe`` lets the call wrapper see that this
    call is already handled."""

    def __init__(self, pipe, draws: tuple, start: int, generators: list, limit: int):
        self.pipe = pipe
        self.draws = draws
        self.next = start
        self.checked = 0
        self.mismatch: str | None = None
        self._by_id = {id(g): i for i, g in enumerate(generators)}
        self._limit = limit  # a replay drawing far more than the capture did is stopped (see TooManyDraws)

    def draw(self, original, frame, args: tuple, kwargs: dict) -> torch.Tensor:
        out = original(*args, **kwargs)
        k = self.next
        self.next += 1
        if self.next > self._limit:
            raise TooManyDraws(f"the replay made more than {self._limit} draws; the capture made {len(self.draws)}")
        if self.mismatch is not None:
            return out
        site = Site(*_intercept.site_of(frame))
        if k >= len(self.draws):
            self.mismatch = (f"draw {k} ({site}) is one more than the {len(self.draws)} the capture made")
            return out
        taped = self.draws[k]
        used = _used_generators(_generator_argument(args, kwargs), out.shape[0] if out.ndim else 1)
        indices = [self._by_id.get(id(g)) for g in used]
        generators = () if not used else (None if None in indices else tuple(indices))
        problems = []
        if not taped.site.matches(site):
            problems.append(f"drawn at {site}")
        if generators != taped.generators:
            problems.append(f"from {_rng_label(generators)} instead of {_rng_label(taped.generators)}")
        if tuple(out.shape) != taped.shape or str(out.dtype).removeprefix("torch.") != taped.dtype:
            problems.append(f"{str(out.dtype).removeprefix('torch.')} {list(out.shape)} instead of "
                            f"{taped.dtype} {list(taped.shape)}")
        elif rc.tensor_sha256(out) != taped.sha256:
            problems.append("different values (sha256 differs)")
        if problems:
            self.mismatch = f"{taped.describe(k)} differs from the tape: {'; '.join(problems)}"
        else:
            self.checked += 1
        return out

    def finish(self) -> None:
        if self.mismatch is None and self.next < len(self.draws):
            missing = self.draws[self.next]
            self.mismatch = (f"the replay made {self.next} draws, the capture {len(self.draws)}: "
                             f"{missing.describe(self.next)} did not happen")


class TooManyDraws(RuntimeError):
    """Raised inside a replayed call that draws far more often than the recorded one (it cannot match)."""


def _rng_label(generators) -> str:
    if generators is None:
        return "a generator not passed to the call"
    if not generators:
        return "the global RNG"
    return "generator " + ", ".join(str(g) for g in generators)


__all__ = ["TapeRecorder", "TapeChecker", "TooManyDraws", "is_noise_site"]
