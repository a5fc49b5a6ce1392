"""The ``host.diffusers`` record: what a capture writes and a replay reads, defined once, as typed classes.

Capture builds a ``DiffusersRecord`` and writes ``record.to_json()`` into ``metadata["host"]["diffusers"]``;
replay reads it back with ``DiffusersRecord.from_json``, which checks every field (type, range, and
references to the file's tensors: each named tensor must exist, with the dtype and shape the record
implies, and be referred to once) and raises ``RecordError`` naming the file and the field. Nothing
else reads the record's JSON. docs/FORMAT.md lists the fields.

Record version 2 adds the RNG tape (``rng``). Version 1 files (raiiaf_diffusers 0.1) are read into the
same classes: they have no tape, so their draws are not checked during replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import raiiaf_core as rc

from . import _encode
from .errors import ReplayError

RECORD_VERSION = 2
OUTPUT_TYPES = ("pil", "np", "pt")
NOISE_SOURCES = ("randn_tensor", "latents_argument")
# How replay feeds the initial noise back: as latents= (with the RNGs as they were right after the noise
# draw), or by restoring the RNGs as they were at the start of the call and letting the pipeline draw again.
NOISE_FEEDS = ("latents", "tape")
PREPARATIONS = ("as_is", "pack_latents")
GENERATOR_KINDS = ("none", "single", "list")
STREAMS = ("generator", "global")
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
           "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64", "complex64", "complex128")
_HEX = frozenset("0123456789abcdef")
_MAX_TEXT = 4096
_MAX_RANK = 8


class RecordError(ReplayError):
    """The file's host.diffusers record is malformed or does not agree with the file (the message names both)."""


class ReplayLimitError(RecordError, rc.LimitExceededError):
    """A record value exceeds an rc.Limits bound (the message names the file, the field and the limit)."""


# --- field checks ---------------------------------------------------------------------------------


@dataclass
class Reader:
    """Field-by-field checks of one file's record. ``tensors``: name -> (dtype, shape) of the file's tensors."""

    source: str
    tensors: Mapping[str, tuple]
    limits: rc.Limits = field(default_factory=rc.Limits)
    used: dict = field(default_factory=dict)  # tensor name -> the field that refers to it

    def fail(self, where: str, message: str):
        raise RecordError(f"{self.source}: host.diffusers.{where}: {message}")

    def obj(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, not {_kind(value)}")
        return value

    def get(self, obj: dict, key: str, where: str, default=KeyError):
        if key in obj:
            return obj[key]
        if default is KeyError:
            self.fail(f"{where}.{key}" if where else key, "missing")
        return default

    def text(self, value, where: str, *, choices=None, optional=False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            self.fail(where, f"must be a string of at most {_MAX_TEXT} characters" + (" or null" if optional else ""))
        if choices is not None and value not in choices:
            self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, value, where: str, *, lo: int | None = 0, hi: int | None = None, optional=False) -> int | None:
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(where, f"must be an integer{' or null' if optional else ''}, not {_kind(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(where, f"{value} is out of range [{lo}, {hi if hi is not None else '...'}]")
        return value

    def steps(self, value, where: str, *, optional=False) -> int | None:
        """A step or timestep count: at most rc.Limits.max_replay_steps (they size arrays and loops)."""
        value = self.integer(value, where, optional=optional)
        if value is not None and value > self.limits.max_replay_steps:
            raise ReplayLimitError(f"{self.source}: host.diffusers.{where}: {value} exceeds "
                                   f"Limits.max_replay_steps={self.limits.max_replay_steps}")
        return value

    def flag(self, value, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, not {_kind(value)}")
        return value

    def items(self, value, where: str, *, max_len: int | None = None, optional=False) -> list | None:
        if value is None and optional:
            return None
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {_kind(value)}")
        if max_len is not None and len(value) > max_len:
            self.fail(where, f"has {len(value)} entries; at most {max_len} make sense here")
        return value

    def shape(self, value, where: str, *, optional=False) -> tuple | None:
        items = self.items(value, where, max_len=_MAX_RANK, optional=optional)
        if items is None:
            return None
        return tuple(self.integer(d, f"{where}.{i}", hi=1 << 40) for i, d in enumerate(items))

    def dtype(self, value, where: str, *, optional=False) -> str | None:
        return self.text(value, where, choices=_DTYPES, optional=optional)

    def device(self, value, where: str) -> str:
        text = self.text(value, where)
        import torch

        try:
            torch.device(text)
        except (RuntimeError, ValueError):
            self.fail(where, f"{text!r} is not a torch device")
        return text

    def sha256(self, value, where: str) -> str:
        if not (isinstance(value, str) and len(value) == 64 and set(value) <= _HEX):
            self.fail(where, "must be a lowercase hex sha256")
        return value

    def tensor(self, value, where: str, *, dtype: str | None = None, shape: tuple | None = None,
               optional=False) -> str | None:
        """A reference to one of the file's tensors, used by no other field; returns the name."""
        name = self.text(value, where, optional=optional)
        if name is None:
            return None
        info = self.tensors.get(name)
        if info is None:
            self.fail(where, f"names tensor {name!r}, which the file does not hold")
        if name in self.used:
            self.fail(where, f"names tensor {name!r}, which {self.used[name]} already uses")
        self.used[name] = f"host.diffusers.{where}"
        if dtype is not None and info[0] != dtype:
            self.fail(where, f"tensor {name!r} is {info[0]}, the record says {dtype}")
        if shape is not None and tuple(info[1]) != tuple(shape):
            self.fail(where, f"tensor {name!r} has shape {list(info[1])}, the record says {list(shape)}")
        return name

    def info(self, name: str) -> tuple:
        return self.tensors[name]

    def encoded(self, value, where: str, *, tensors_allowed: bool = True) -> Any:
        """A value written by _encode.encode (call arguments, scheduler config)."""

        def tensor(name, at):
            if not tensors_allowed:
                self.fail(at, "cannot refer to a tensor here")
            self.tensor(name, at)
            return self.info(name)

        _encode.validate(value, where, tensor, self.fail)
        return value


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


# --- the record's parts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where a draw was made: the calling module and function (qualified name where Python gives it)."""

    module: str
    function: str

    def matches(self, other: Site) -> bool:
        # co_qualname exists from Python 3.11 on: compare the bare function name across versions.
        return self.module == other.module and self.function.rsplit(".", 1)[-1] == other.function.rsplit(".", 1)[-1]

    def __str__(self) -> str:
        return f"{self.module} {self.function}"

    def to_json(self) -> dict:
        return {"module": self.module, "function": self.function}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> Site:
        obj = r.obj(value, where)
        return cls(r.text(r.get(obj, "module", where), f"{where}.module"),
                   r.text(r.get(obj, "function", where), f"{where}.function"))


@dataclass(frozen=True)
class Draw:
    """One randn_tensor draw of the call, in order.

    ``generators``: indices into the call's generators it drew from; ``()`` the global torch RNG of
    ``device``; ``None`` a generator that was not passed to the call (replay cannot restore it).
    ``step``: denoising steps completed when it was drawn (None: the pipeline has no step callback).
    """

    site: Site
    generators: tuple | None
    shape: tuple
    dtype: str
    device: str
    sha256: str
    step: int | None

    def to_json(self) -> dict:
        return {"site": self.site.to_json(), "generators": None if self.generators is None else list(self.generators),
                "shape": list(self.shape), "dtype": self.dtype, "device": self.device, "sha256": self.sha256,
                "step": self.step}

    @classmethod
    def from_json(cls, value, where: str, r: Reader, n_generators: int) -> Draw:
        obj = r.obj(value, where)
        gens = r.items(r.get(obj, "generators", where), f"{where}.generators", max_len=n_generators, optional=True)
        if gens is not None:
            gens = tuple(r.integer(g, f"{where}.generators.{i}", hi=n_generators - 1) for i, g in enumerate(gens))
        return cls(
            site=Site.from_json(r.get(obj, "site", where), f"{where}.site", r),
            generators=gens,
            shape=r.shape(r.get(obj, "shape", where), f"{where}.shape"),
            dtype=r.dtype(r.get(obj, "dtype", where), f"{where}.dtype"),
            device=r.device(r.get(obj, "device", where), f"{where}.device"),
            sha256=r.sha256(r.get(obj, "sha256", where), f"{where}.sha256"),
            step=r.steps(r.get(obj, "step", where), f"{where}.step", optional=True),
        )

    def describe(self, index: int) -> str:
        when = "" if self.step is None else f", after {self.step} completed step{'s' if self.step != 1 else ''}"
        return f"draw {index} ({self.site}{when})"


@dataclass(frozen=True)
class Untracked:
    """An RNG that changed between taped draws: something drew from it without randn_tensor
    (torch.randn, torch.rand, randn_like, ...). ``before``: the draw it was noticed at; None: at the end."""

    stream: str  # "generator" or "global"
    index: int  # generator index, or index into RNGTape.global_rng
    before: int | None

    def to_json(self) -> dict:
        return {"stream": self.stream, "index": self.index, "before": self.before}

    @classmethod
    def from_json(cls, value, where: str, r: Reader, n_generators: int, n_global: int, n_draws: int) -> Untracked:
        obj = r.obj(value, where)
        stream = r.text(r.get(obj, "stream", where), f"{where}.stream", choices=STREAMS)
        top = (n_generators if stream == "generator" else n_global) - 1
        if top < 0:
            r.fail(f"{where}.index", f"the call has no {stream} RNG")
        return cls(stream, r.integer(r.get(obj, "index", where), f"{where}.index", hi=top),
                   r.integer(r.get(obj, "before", where), f"{where}.before", hi=max(n_draws - 1, 0), optional=True))


@dataclass(frozen=True)
class Generators:
    """The call's ``generator`` argument: kind, devices, seeds, and each one's state (tensor names) at the
    start of the call and right after the initial-noise draw (None where the noise did not use it)."""

    kind: str
    devices: tuple
    seeds: tuple
    at_start: tuple  # of tensor names; None only in version-1 records
    after_noise: tuple  # of tensor names or None

    def to_json(self) -> dict:
        return {"kind": self.kind, "devices": list(self.devices), "seeds": list(self.seeds),
                "at_start": list(self.at_start), "after_noise": list(self.after_noise)}

    @classmethod
    def from_json(cls, value, where: str, r: Reader, max_count: int) -> Generators:
        obj = r.obj(value, where)
        kind = r.text(r.get(obj, "kind", where), f"{where}.kind", choices=GENERATOR_KINDS)
        devices = r.items(r.get(obj, "devices", where), f"{where}.devices", max_len=max_count)
        n = len(devices)
        if (kind == "none") != (n == 0) or (kind == "single" and n != 1):
            r.fail(f"{where}.devices", f"{n} generators do not fit kind {kind!r}")
        lists = {}
        for key in ("seeds", "at_start", "after_noise"):
            lists[key] = r.items(r.get(obj, key, where), f"{where}.{key}", max_len=n)
            if len(lists[key]) != n:
                r.fail(f"{where}.{key}", f"has {len(lists[key])} entries for {n} generators")
        return cls(
            kind=kind,
            devices=tuple(r.device(d, f"{where}.devices.{i}") for i, d in enumerate(devices)),
            seeds=tuple(r.integer(s, f"{where}.seeds.{i}", lo=None, optional=True) for i, s in enumerate(lists["seeds"])),
            at_start=tuple(_state(r, s, f"{where}.at_start.{i}", optional=False)
                           for i, s in enumerate(lists["at_start"])),
            after_noise=tuple(_state(r, s, f"{where}.after_noise.{i}", optional=True)
                              for i, s in enumerate(lists["after_noise"])),
        )


# An RNG state is a short uint8 vector (5056 bytes for the CPU's Mersenne Twister, 16 for Philox).
_MAX_STATE_BYTES = 1 << 20


def _state(r: Reader, value, where: str, *, optional: bool) -> str | None:
    name = r.tensor(value, where, optional=optional)
    if name is not None:
        dtype, shape = r.info(name)
        if dtype != "uint8" or len(shape) != 1 or shape[0] > _MAX_STATE_BYTES:
            r.fail(where, f"tensor {name!r} ({dtype} {list(shape)}) is not an RNG state (a uint8 vector)")
    return name


@dataclass(frozen=True)
class GlobalStream:
    """One global torch RNG (the CPU's, or an accelerator device's): its state at the start of the call,
    and right after the initial-noise draw when that draw used it."""

    device: str
    at_start: str
    after_noise: str | None

    def to_json(self) -> dict:
        return {"device": self.device, "at_start": self.at_start, "after_noise": self.after_noise}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> GlobalStream:
        obj = r.obj(value, where)
        return cls(r.device(r.get(obj, "device", where), f"{where}.device"),
                   _state(r, r.get(obj, "at_start", where), f"{where}.at_start", optional=False),
                   _state(r, r.get(obj, "after_noise", where), f"{where}.after_noise", optional=True))


@dataclass(frozen=True)
class RNGTape:
    """Every RNG the call could draw from, with its starting state, and every draw it made through
    randn_tensor, in order (``draws`` is None in version-1 records, which had no tape)."""

    generators: Generators
    global_rng: tuple  # of GlobalStream
    draws: tuple | None  # of Draw
    untracked: tuple  # of Untracked

    def to_json(self) -> dict:
        return {"generators": self.generators.to_json(), "global": [g.to_json() for g in self.global_rng],
                "draws": None if self.draws is None else [d.to_json() for d in self.draws],
                "untracked": [u.to_json() for u in self.untracked]}

    @classmethod
    def from_json(cls, value, where: str, r: Reader, max_generators: int) -> RNGTape:
        obj = r.obj(value, where)
        gens = Generators.from_json(r.get(obj, "generators", where), f"{where}.generators", r, max_generators)
        streams = r.items(r.get(obj, "global", where), f"{where}.global", max_len=16)
        global_rng = tuple(GlobalStream.from_json(s, f"{where}.global.{i}", r) for i, s in enumerate(streams))
        draws = r.items(r.get(obj, "draws", where), f"{where}.draws", optional=True)
        if draws is not None:
            draws = tuple(Draw.from_json(d, f"{where}.draws.{i}", r, len(gens.devices)) for i, d in enumerate(draws))
        n_draws = len(draws or ())
        untracked = r.items(r.get(obj, "untracked", where), f"{where}.untracked",
                            max_len=(n_draws + 1) * (len(gens.devices) + len(global_rng)))
        return cls(gens, global_rng, draws, tuple(
            Untracked.from_json(u, f"{where}.untracked.{i}", r, len(gens.devices), len(global_rng), n_draws)
            for i, u in enumerate(untracked)))

    def stream_name(self, u: Untracked) -> str:
        return f"generator {u.index}" if u.stream == "generator" else f"the global {self.global_rng[u.index].device} RNG"

    def warnings(self) -> list[str]:
        """What the tape could not see, one line per RNG, as the file states it."""
        lines = []
        seen: dict[tuple, list] = {}
        for u in self.untracked:
            seen.setdefault((u.stream, u.index), []).append(u.before)
        for (stream, index), befores in seen.items():
            first = befores[0]
            where = "after the last taped draw" if first is None else \
                f"before {self.draws[first].describe(first)}" if self.draws else f"before draw {first}"
            lines.append(f"replay may not be exact: {len(befores)} untracked use{'s' if len(befores) > 1 else ''} "
                         f"of {self.stream_name(Untracked(stream, index, first))} (first {where}); draws made "
                         "without randn_tensor are repeated only if the pipeline runs the same code, and cannot "
                         "be checked one by one")
        return lines


@dataclass(frozen=True)
class Noise:
    """The initial noise: stored in tensor ``tensor`` exactly as drawn (or as passed as latents=)."""

    tensor: str
    source: str  # randn_tensor | latents_argument
    draw: int | None  # its index in the tape
    feed: str  # latents | tape (NOISE_FEEDS)
    preparation: str | None  # for feed "latents": as_is | pack_latents
    shape: tuple
    dtype: str
    device: str
    sampled_shape: tuple | None  # shape of the latents the step callback saw (None without one)

    @property
    def batch(self) -> int:
        return self.shape[0] if self.shape else 1

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "source": self.source, "draw": self.draw, "feed": self.feed,
                "preparation": self.preparation, "shape": list(self.shape), "dtype": self.dtype,
                "device": self.device, "sampled_shape": None if self.sampled_shape is None else list(self.sampled_shape)}

    @classmethod
    def from_json(cls, value, where: str, r: Reader, draws: tuple | None) -> Noise:
        obj = r.obj(value, where)
        shape = r.shape(r.get(obj, "shape", where), f"{where}.shape")
        if not shape or shape[0] < 1:
            r.fail(f"{where}.shape", f"{list(shape)} has no batch dimension")
        dtype = r.dtype(r.get(obj, "dtype", where), f"{where}.dtype")
        noise = cls(
            tensor=r.tensor(r.get(obj, "tensor", where), f"{where}.tensor", dtype=dtype, shape=shape),
            source=r.text(r.get(obj, "source", where), f"{where}.source", choices=NOISE_SOURCES),
            draw=r.integer(r.get(obj, "draw", where), f"{where}.draw", hi=max(len(draws or ()) - 1, 0), optional=True),
            feed=r.text(r.get(obj, "feed", where), f"{where}.feed", choices=NOISE_FEEDS),
            preparation=r.text(r.get(obj, "preparation", where), f"{where}.preparation", choices=PREPARATIONS,
                               optional=True),
            shape=shape, dtype=dtype,
            device=r.device(r.get(obj, "device", where), f"{where}.device"),
            sampled_shape=r.shape(r.get(obj, "sampled_shape", where), f"{where}.sampled_shape", optional=True),
        )
        if noise.draw is not None:
            if not draws:
                r.fail(f"{where}.draw", "refers to a draw, but the record has no tape")
            drawn = draws[noise.draw]
            if drawn.shape != shape or drawn.dtype != dtype:
                r.fail(f"{where}.draw", f"draw {noise.draw} is {drawn.dtype} {list(drawn.shape)}, "
                                        f"the noise {dtype} {list(shape)}")
        if draws is not None and (noise.source == "randn_tensor") != (noise.draw is not None):
            r.fail(f"{where}.draw", f"a {noise.source} noise must {'' if noise.source == 'randn_tensor' else 'not '}"
                                    "refer to a draw")
        if noise.feed == "latents" and noise.preparation is None:
            r.fail(f"{where}.preparation", "noise fed as latents= needs a preparation")
        if noise.feed == "tape" and draws is None:
            r.fail(f"{where}.feed", "a record without a tape cannot feed the noise through it")
        return noise


@dataclass(frozen=True)
class Call:
    """The call's arguments (encoded by _encode), which of them the caller gave, device, dtype, output type."""

    arguments: dict
    explicit: tuple
    device: str
    dtype: str | None
    output_type: str

    def to_json(self) -> dict:
        return {"arguments": self.arguments, "explicit": list(self.explicit), "device": self.device,
                "dtype": self.dtype, "output_type": self.output_type}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> Call:
        obj = r.obj(value, where)
        arguments = r.obj(r.get(obj, "arguments", where), f"{where}.arguments")
        return cls._checked(r, where, arguments, r.get(obj, "explicit", where), r.get(obj, "device", where),
                            r.get(obj, "dtype", where), r.get(obj, "output_type", where))

    @classmethod
    def _checked(cls, r: Reader, where, arguments, explicit, device, dtype, output_type) -> Call:
        explicit = r.items(explicit, f"{where}.explicit", max_len=len(arguments) + 64)
        return cls(
            arguments=r.encoded(arguments, f"{where}.arguments"),
            explicit=tuple(r.text(e, f"{where}.explicit.{i}") for i, e in enumerate(explicit)),
            device=r.device(device, f"{where}.device"),
            dtype=r.dtype(dtype, f"{where}.dtype", optional=True),
            output_type=r.text(output_type, f"{where}.output_type", choices=OUTPUT_TYPES),
        )


@dataclass(frozen=True)
class Scheduler:
    """The scheduler as configured for the call: class, module and full config (encoded by _encode)."""

    class_name: str
    module: str
    config: dict

    def to_json(self) -> dict:
        return {"class": self.class_name, "module": self.module, "config": self.config}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> Scheduler:
        obj = r.obj(value, where)
        config = r.encoded(r.obj(r.get(obj, "config", where), f"{where}.config"), f"{where}.config",
                           tensors_allowed=False)
        if config.get("num_train_timesteps") is not None:
            r.steps(config["num_train_timesteps"], f"{where}.config.num_train_timesteps")
        return cls(r.text(r.get(obj, "class", where), f"{where}.class"),
                   r.text(r.get(obj, "module", where), f"{where}.module"), config)


@dataclass(frozen=True)
class Output:
    """The image this file holds: the output type the caller asked for, the raw np/pt output when not
    PIL (tensor name), and the sha256 over mode, size and pixel bytes of the stored image."""

    type: str
    tensor: str | None
    pixels_sha256: str

    def to_json(self) -> dict:
        return {"type": self.type, "tensor": self.tensor, "pixels_sha256": self.pixels_sha256}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> Output:
        obj = r.obj(value, where)
        return cls(r.text(r.get(obj, "type", where), f"{where}.type", choices=OUTPUT_TYPES),
                   r.tensor(r.get(obj, "tensor", where), f"{where}.tensor", optional=True),
                   r.sha256(r.get(obj, "pixels_sha256", where), f"{where}.pixels_sha256"))


@dataclass(frozen=True)
class FinalLatents:
    """The latents after the last step (whole batch): sha256, shape, dtype, and the tensor when stored."""

    sha256: str
    shape: tuple
    dtype: str
    tensor: str | None

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "shape": list(self.shape), "dtype": self.dtype, "tensor": self.tensor}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> FinalLatents | None:
        if value is None:
            return None
        obj = r.obj(value, where)
        shape = r.shape(r.get(obj, "shape", where), f"{where}.shape")
        dtype = r.dtype(r.get(obj, "dtype", where), f"{where}.dtype")
        return cls(r.sha256(r.get(obj, "sha256", where), f"{where}.sha256"), shape, dtype,
                   r.tensor(r.get(obj, "tensor", where), f"{where}.tensor", dtype=dtype, shape=shape, optional=True))


@dataclass(frozen=True)
class StepLatents:
    """Latents stored after every ``every``-th step: step index -> tensor name."""

    every: int
    tensors: dict

    def to_json(self) -> dict:
        return {"every": self.every, "tensors": dict(self.tensors)}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> StepLatents | None:
        if value is None:
            return None
        obj = r.obj(value, where)
        every = r.integer(r.get(obj, "every", where), f"{where}.every", lo=1)
        tensors = r.obj(r.get(obj, "tensors", where), f"{where}.tensors")
        for step, name in tensors.items():
            if not step.isdigit():
                r.fail(f"{where}.tensors", f"key {step[:40]!r} is not a step index")
            r.tensor(name, f"{where}.tensors.{step}")
        return cls(every, dict(tensors))


@dataclass(frozen=True)
class Pipeline:
    """The pipeline class, and whether it is a modular pipeline (no step callback)."""

    class_name: str
    module: str
    modular: bool

    def to_json(self) -> dict:
        return {"class": self.class_name, "module": self.module, "modular": self.modular}

    @classmethod
    def from_json(cls, value, where: str, r: Reader) -> Pipeline:
        obj = r.obj(value, where)
        return cls(r.text(r.get(obj, "class", where), f"{where}.class"),
                   r.text(r.get(obj, "module", where), f"{where}.module"),
                   r.flag(r.get(obj, "modular", where, False), f"{where}.modular"))


@dataclass(frozen=True)
class DiffusersRecord:
    """``metadata["host"]["diffusers"]`` of one file."""

    diffusers_version: str
    pipeline: Pipeline
    components: dict  # descriptive: name -> {class, training, dtype, device, name_or_path, config} or None
    training_components: tuple
    scheduler: Scheduler
    call: Call
    noise: Noise | None  # None only when not_replayable says why
    rng: RNGTape
    output: Output
    final_latents: FinalLatents | None  # None: the pipeline has no step callback
    step_latents: StepLatents | None
    steps_run: int | None  # None: the pipeline has no step callback
    not_replayable: str | None = None  # why this call could not be recorded completely
    record_version: int = RECORD_VERSION

    def to_json(self) -> dict:
        return {
            "record_version": self.record_version, "diffusers_version": self.diffusers_version,
            "pipeline": self.pipeline.to_json(), "components": self.components,
            "training_components": list(self.training_components), "scheduler": self.scheduler.to_json(),
            "call": self.call.to_json(), "noise": None if self.noise is None else self.noise.to_json(),
            "rng": self.rng.to_json(), "output": self.output.to_json(),
            "final_latents": None if self.final_latents is None else self.final_latents.to_json(),
            "step_latents": None if self.step_latents is None else self.step_latents.to_json(),
            "steps_run": self.steps_run, "not_replayable": self.not_replayable,
        }

    @classmethod
    def from_json(cls, value, r: Reader) -> DiffusersRecord:
        obj = r.obj(value, "")
        version = r.integer(r.get(obj, "record_version", ""), "record_version", lo=1)
        if version > RECORD_VERSION:
            raise RecordError(f"{r.source}: record version {version} is newer than this raiiaf_diffusers "
                              f"({RECORD_VERSION}); upgrade raiiaf_diffusers to replay it")
        if version == 1:
            return _from_version_1(obj, r)
        not_replayable = r.text(r.get(obj, "not_replayable", "", None), "not_replayable", optional=True)
        noise_value = r.get(obj, "noise", "")
        # The noise's batch bounds how many generators the call can have had.
        max_generators = max(1, _batch_hint(noise_value))
        rng = RNGTape.from_json(r.get(obj, "rng", ""), "rng", r, max_generators)
        noise = None
        if noise_value is not None or not_replayable is None:
            noise = Noise.from_json(noise_value, "noise", r, rng.draws)
        return cls(
            **_shared_fields(obj, r),
            call=Call.from_json(r.get(obj, "call", ""), "call", r),
            noise=noise, rng=rng,
            output=Output.from_json(r.get(obj, "output", ""), "output", r),
            final_latents=FinalLatents.from_json(r.get(obj, "final_latents", ""), "final_latents", r),
            step_latents=StepLatents.from_json(r.get(obj, "step_latents", ""), "step_latents", r),
            steps_run=r.steps(r.get(obj, "steps_run", ""), "steps_run", optional=True),
            not_replayable=not_replayable,
            record_version=version,
        )


def read(art, source: str, limits: rc.Limits) -> tuple[DiffusersRecord, dict]:
    """(the record of an opened file, its metadata); ReplayError when the file is not a diffusers capture."""
    md = art.metadata
    host = md.get("host")
    value = host.get("diffusers") if isinstance(host, dict) else None
    if not isinstance(value, dict):
        raise ReplayError(f"{source}: not a diffusers capture (no metadata host.diffusers record)")
    tensors = {}
    for name in art.tensor_names:
        info = art.tensor_info(name)
        tensors[name] = (info.dtype, tuple(info.shape))
    return DiffusersRecord.from_json(value, Reader(source, tensors, limits)), md


def _shared_fields(obj: dict, r: Reader) -> dict:
    """The fields versions 1 and 2 write alike."""
    return dict(
        diffusers_version=r.text(r.get(obj, "diffusers_version", ""), "diffusers_version"),
        pipeline=Pipeline.from_json(r.get(obj, "pipeline", ""), "pipeline", r),
        components=r.obj(r.get(obj, "components", ""), "components"),
        training_components=tuple(r.text(t, f"training_components.{i}") for i, t in enumerate(
            r.items(r.get(obj, "training_components", ""), "training_components", max_len=1000))),
        scheduler=Scheduler.from_json(r.get(obj, "scheduler", ""), "scheduler", r),
    )


def _batch_hint(noise_value) -> int:
    """The batch size the noise field claims (checked against the tensor later); 1 when unreadable."""
    shape = noise_value.get("shape") if isinstance(noise_value, dict) else None
    first = shape[0] if isinstance(shape, list) and shape else 1
    return first if isinstance(first, int) and not isinstance(first, bool) and 0 < first <= 1 << 20 else 1


def _from_version_1(obj: dict, r: Reader) -> DiffusersRecord:
    """A raiiaf_diffusers 0.1 record: noise fed as latents= with the RNG states right after the noise draw,
    no tape. Its fields are read into the version-2 classes (and checked the same way)."""
    noise_obj = r.obj(r.get(obj, "noise", ""), "noise")
    gen = r.obj(r.get(obj, "generator", ""), "generator")
    grng = r.obj(r.get(obj, "global_rng", ""), "global_rng")
    states = r.items(r.get(gen, "states", "generator"), "generator.states", max_len=max(1, _batch_hint(noise_obj)))
    generators = Generators.from_json({"kind": r.get(gen, "kind", "generator"), "devices": r.get(gen, "devices", "generator"),
                                       "seeds": r.get(gen, "seeds", "generator"), "at_start": [None] * len(states),
                                       "after_noise": states}, "generator", _V1Reader(r), max(1, len(states)))
    restore = r.text(r.get(grng, "restore", "global_rng"), "global_rng.restore", choices=("at_start", "after_draw"))
    cpu = r.obj(r.get(grng, "cpu", "global_rng"), "global_rng.cpu")
    streams = [GlobalStream.from_json({"device": "cpu", "at_start": r.get(cpu, "at_start", "global_rng.cpu"),
                                       "after_noise": r.get(cpu, "after_draw", "global_rng.cpu")
                                       if restore == "after_draw" else None}, "global_rng.cpu", r)]
    device = r.get(grng, "device", "global_rng", None)
    if device is not None:
        device = r.obj(device, "global_rng.device")
        kind = r.text(r.get(device, "type", "global_rng.device"), "global_rng.device.type")
        index = r.integer(r.get(device, "index", "global_rng.device", None), "global_rng.device.index", optional=True)
        streams.append(GlobalStream.from_json(
            {"device": kind if index is None else f"{kind}:{index}", "at_start": r.get(device, "at_start", ""),
             "after_noise": r.get(device, "after_draw", "") if restore == "after_draw" else None},
            "global_rng.device", r))
    rng = RNGTape(generators, tuple(streams), None, ())
    source = r.text(r.get(noise_obj, "source", "noise"), "noise.source", choices=NOISE_SOURCES)
    noise = Noise.from_json({**{k: noise_obj.get(k) for k in ("tensor", "preparation", "shape", "dtype", "device",
                                                              "sampled_shape")},
                             "source": source, "draw": None, "feed": "latents"}, "noise", r, None)
    output = r.obj(r.get(obj, "output", ""), "output")
    call = Call._checked(r, "call", r.obj(r.get(obj, "call", ""), "call"), r.get(obj, "call_explicit", "", []),
                         r.get(obj, "device", ""), r.get(obj, "dtype", "", None), r.get(output, "type", "output"))
    return DiffusersRecord(
        **_shared_fields(obj, r),
        call=call, noise=noise, rng=rng,
        output=Output.from_json(output, "output", r),
        final_latents=FinalLatents.from_json(r.get(obj, "final_latents", ""), "final_latents", r),
        step_latents=StepLatents.from_json(r.get(obj, "step_latents", "", None), "step_latents", r),
        steps_run=r.steps(r.get(obj, "steps_run", ""), "steps_run"),
        record_version=1,
    )


class _V1Reader(Reader):
    """Version-1 generator entries have no start state: allow null there (and only there)."""

    def __init__(self, base: Reader):
        super().__init__(base.source, base.tensors, base.limits, base.used)

    def tensor(self, value, where: str, **kw):
        if ".at_start." in where and value is None:
            return None
        return super().tensor(value, where, **kw)


__all__ = ["DiffusersRecord", "Pipeline", "Scheduler", "Call", "Noise", "RNGTape", "Draw", "Site", "Untracked",
           "Generators", "GlobalStream", "Output", "FinalLatents", "StepLatents", "Reader", "RecordError",
           "ReplayLimitError", "read", "RECORD_VERSION", "OUTPUT_TYPES"]
