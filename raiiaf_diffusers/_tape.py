"""The RNG tape at run time: recording every randn_tensor draw of a call (capture) and checking each
draw against a recorded tape as it happens (replay).

Both sides see a draw through ``_intercept``, which calls the original with the same arguments and
returns its result unchanged; the recorder looks at the draw ``before`` and ``after`` that.

Recording keeps, for every RNG the call can draw from (each of its generators, and the global torch
RNG of the CPU and of the execution device), the state it had at the start of the call, and for each
draw the states of the RNGs it used right before and after it. A draw that finds its RNG in another
state than the previous draw left it in means that something drew from it without randn_tensor in
between (``torch.randn``, ``torch.rand``, ``randn_like``); the same check runs over every RNG when the
call ends. Those uses are listed in the tape ("untracked").
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
    """One RNG of the call: how to read its state, its state at the start, and the one the tape expects."""

    __slots__ = ("read", "at_start", "expected", "after_noise")

    def __init__(self, read):
        self.read = read
        self.at_start = read()
        self.expected = self.at_start
        self.after_noise = None


# Draw values kept to be hashed when the call ends, at most this many bytes (beyond: hashed at once). Hashing
# and comparing in between the pipeline's own work costs several times more than the same work done in one
# go afterwards (cold caches), and on an accelerator hashing at once would wait for the device at every draw.
_DEFERRED_BYTES = 64 << 20


@dataclass
class _Taken:
    """A draw as seen during the call; turned into a Draw (and checked for untracked uses) in finish()."""

    site: tuple
    generators: tuple | None
    streams: list  # (kind, index, stream)
    before: list  # each stream's state right before the draw
    after: list  # ... and right after it
    shape: tuple
    dtype: str
    device: str
    step: int | None
    values: torch.Tensor | None  # a copy to hash later, or None when already hashed
    sha256: str


class TapeRecorder:
    """Records the draws of one call. ``generators``: the call's, in order; ``device``: its execution device.

    During the call each draw only reads the states of the RNGs it uses and keeps a copy of its values;
    ``finish`` compares the states, hashes the values and builds ``draws`` and ``untracked``."""

    def __init__(self, generators: list, device: torch.device):
        self.generators = generators
        self.gen_streams = [_Stream(g.get_state) for g in generators]
        self.global_devices = _rng.global_devices(device)
        self.global_streams = [_Stream(lambda d=d: _rng.get_state(d)) for d in self.global_devices]
        self._by_id = {id(g): i for i, g in enumerate(generators)}
        self._taken: list[_Taken] = []
        self._deferred = 0
        self.draws: list[Draw] = []
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
        """Called before the original draws: which RNGs it will use, and their states now."""
        site = _intercept.site_of(frame)
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
        return site, generators, streams, [stream.read() for _, _, stream in streams], step

    def after(self, pending: tuple, out: torch.Tensor) -> None:
        """Called with what the original drew."""
        site, generators, streams, before, step = pending
        number = len(self._taken)
        if self.noise_index is None and is_noise_site(Site(*site)):
            self.noise_index = number
            self.noise = out.detach().clone()
        nbytes = out.numel() * out.element_size()
        values, sha = None, ""
        if self._deferred + nbytes <= _DEFERRED_BYTES:
            self._deferred += nbytes
            values = self.noise if self.noise_index == number else out.detach().clone()
        else:
            sha = rc.tensor_sha256(out)
        self._taken.append(_Taken(site, generators, streams, before, [stream.read() for _, _, stream in streams],
                                  tuple(out.shape), str(out.dtype).removeprefix("torch."), str(out.device), step,
                                  values, sha))

    def finish(self) -> None:
        """End of the call: hash the draws, and find the RNGs used between them or after the last one."""
        for number, taken in enumerate(self._taken):
            for (kind, index, stream), before, after in zip(taken.streams, taken.before, taken.after):
                if not torch.equal(before, stream.expected):
                    self.untracked.append(Untracked(kind, index, number))
                stream.expected = after
                if number == self.noise_index:
                    stream.after_noise = after
            sha = taken.sha256 or rc.tensor_sha256(taken.values)
            self.draws.append(Draw(Site(*taken.site), taken.generators, taken.shape, taken.dtype, taken.device,
                                   sha, taken.step))
        self._taken.clear()
        for kind, streams in (("generator", self.gen_streams), ("global", self.global_streams)):
            for i, stream in enumerate(streams):
                if not torch.equal(stream.read(), stream.expected):
                    self.untracked.append(Untracked(kind, i, None))

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
