"""One sampling run as a .raiiaf file records it (an entry of `metadata["runs"]`), defined once.

The save node builds a `RunRecord` and writes `to_json()`; Raiiaf Load Replay and Raiiaf Resample read it back
with `RunRecord.from_json()`, which checks every field before anything uses it: its type and range, the
tensors it names (they must be in the file, with shapes that agree with each other: the stored noise bounds
the latent, the stored sigmas bound the steps), and sampler options against a table of the options ComfyUI's
samplers take. A file written by another tool, or edited and re-written with valid checksums, gets a
`RecordError` naming the file, the run and the field — never a foreign exception, a huge allocation or a
sampler that never ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from raiiaf_core import TensorInfo

from .errors import RecordError

CAPTURED, RECONSTRUCTED, FAILED = "captured", "reconstructed", "failed"
SOURCES = (CAPTURED, RECONSTRUCTED, FAILED)
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
MASK_DTYPES = (*FLOAT_DTYPES, "bool")
MAX_STEPS = 10_000  # the most steps ComfyUI's sampler nodes offer
MAX_SEED = 2**64 - 1
MAX_BATCH_INDEX = 1 << 16
MAX_NAME = 200
MAX_LIST = 256
# Sampler and scheduler names: short, one line, no control or bidi characters (custom node packs add names
# such as "GITS[coeff=1.2]").
_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]{1,100}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")

# Sampler options the k-diffusion samplers of ComfyUI take (comfy/k_diffusion/sampling.py), with the types and
# ranges of ComfyUI's own sampler nodes (comfy_extras/nodes_custom_sampler.py). Ranges are narrowed where a
# value keeps a sampler from ever finishing: dpm_adaptive rejects every step when accept_safety is above
# 1 + pi/2 (its step-size limiter never reaches it), divides by zero with atol 0, and never moves with h_init 0.
# A tuple of strings is the set of allowed values; `bool` is a flag.
SAMPLER_OPTIONS: dict[str, tuple] = {
    "eta": (float, 0.0, 100.0),
    "s_noise": (float, 0.0, 100.0),
    "s_churn": (float, 0.0, 100.0),
    "s_tmin": (float, 0.0, 1000.0),
    "s_tmax": (float, 0.0, 1000.0),
    "r": (float, 0.0, 100.0),
    "r_1": (float, 0.0, 1.0),
    "r_2": (float, 0.0, 1.0),
    "solver_type": ("midpoint", "heun", "phi_1", "phi_2"),
    "order": (int, 1, 100),
    "max_order": (int, 1, 4),
    "deis_mode": ("tab", "rhoab"),
    "max_stage": (int, 1, 3),
    "ge_gamma": (float, 0.0, 100.0),
    "cfg_pp": (bool,),
    "predictor_order": (int, 1, 6),
    "corrector_order": (int, 0, 6),
    "use_pece": (bool,),
    "simple_order_2": (bool,),
    "rtol": (float, 0.001, 100.0),
    "atol": (float, 0.0001, 100.0),
    "h_init": (float, 0.01, 100.0),
    "pcoeff": (float, 0.0, 100.0),
    "icoeff": (float, 0.0, 100.0),
    "dcoeff": (float, 0.0, 100.0),
    "accept_safety": (float, 0.0, 1.0),
}
# Where one sampler allows less than the table (dpm_adaptive raises for any other order).
SAMPLER_OPTION_OVERRIDES: dict[str, dict[str, tuple]] = {"dpm_adaptive": {"order": (int, 2, 3)}}
INPAINT_OPTIONS: dict[str, tuple] = {"random": (bool,)}


class _Check:
    """Typed reads of one record's fields; every refusal names the file, the run and the field."""

    def __init__(self, entry: dict, where: str):
        self.entry, self.where = entry, where

    def fail(self, name: str, problem: str):
        raise RecordError(f"{self.where} field '{name}' {problem}")

    def _value(self, name: str):
        return self.entry.get(name)

    def text(self, name: str, *, limit: int | None = MAX_NAME, identifier: bool = False) -> str | None:
        value = self._value(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"is a {_kind(value)}; expected text")
        if limit is not None and len(value) > limit:
            self.fail(name, f"is {len(value)} characters long; at most {limit} are allowed")
        if identifier and value and not is_name(value):
            self.fail(name, f"is {value[:40]!r}, which is not a sampler or scheduler name")
        return value

    def choice(self, name: str, allowed: tuple, default: str | None = None) -> str | None:
        value = self._value(name)
        if value is None:
            return default
        if not isinstance(value, str) or value not in allowed:
            self.fail(name, f"is {_short(value)}; expected one of {', '.join(allowed)}")
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        return _integer(self._value(name), low, high, lambda problem: self.fail(name, problem))

    def number(self, name: str, low: float, high: float) -> float | None:
        return _number(self._value(name), low, high, lambda problem: self.fail(name, problem))

    def flag(self, name: str, default: bool | None = None) -> bool | None:
        value = self._value(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(name, f"is a {_kind(value)}; expected true or false")
        return value

    def mapping(self, name: str) -> dict:
        value = self._value(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"is a {_kind(value)}; expected an object")
        return value

    def options(self, name: str, table: Mapping[str, tuple]) -> dict:
        """Sampler options, each key known to `table` and each value of its type and range."""
        options = self.mapping(name)
        for key, value in options.items():
            spec, where = table.get(key), f"{name}.{key}"
            if spec is None:
                self.fail(where, f"is not an option raiiaf knows ComfyUI's samplers to take (known: "
                                 f"{', '.join(sorted(table))}); refusing to pass it to the sampler")
            kind = spec[0]
            if kind is bool:
                if not isinstance(value, bool):
                    self.fail(where, f"is {_short(value)}; expected true or false")
            elif kind is int:
                _integer(value, spec[1], spec[2], lambda problem: self.fail(where, problem))
            elif kind is float:
                _number(value, spec[1], spec[2], lambda problem: self.fail(where, problem))
            elif not isinstance(value, str) or value not in spec:
                self.fail(where, f"is {_short(value)}; expected one of {', '.join(spec)}")
        return dict(options)

    def texts(self, name: str) -> list[str]:
        value = self._value(name)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, str) for v in value):
            self.fail(name, f"is not a list of at most {MAX_LIST} texts")
        return [v[:MAX_NAME] for v in value]

    def shape(self, name: str, value=None) -> list[int] | None:
        value = self._value(name) if value is None else value
        if value is None:
            return None
        if (not isinstance(value, list) or not 1 <= len(value) <= 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value)):
            self.fail(name, f"is {_short(value)}; expected a tensor shape (1 to 8 sizes)")
        return list(value)

    def tensor(self, name: str, tensors: Mapping[str, TensorInfo], dtypes: tuple, ranks: range,
               required: bool = False) -> TensorInfo | None:
        value = self._value(name)
        if value is None:
            if required:
                self.fail(name, "is missing: the run names no tensor for it")
            return None
        if not isinstance(value, str):
            self.fail(name, f"is a {_kind(value)}; expected the name of a tensor in the file")
        info = tensors.get(value)
        if info is None:
            self.fail(name, f"names the tensor {value[:80]!r}, which the file does not hold")
        if info.dtype not in dtypes:
            self.fail(name, f"names the tensor {value!r} of dtype {info.dtype}; expected {' or '.join(dtypes)}")
        if len(info.shape) not in ranks:
            self.fail(name, f"names the tensor {value!r} of rank {len(info.shape)}; expected rank "
                            f"{ranks.start}" + (f" to {ranks.stop - 1}" if len(ranks) > 1 else ""))
        return info


def readable(index: int, record: RunRecord, tensors: Mapping[str, TensorInfo]) -> RunRecord:
    """The record, checked by the reader's own rules against the tensors it will be stored with; a record the
    reader would refuse (say, a value of an unexpected type from a custom node) becomes a failed run naming the
    problem, so no file holds a run that Raiiaf Load Replay cannot read."""
    try:
        RunRecord.from_json(record.to_json(), where=f"run {index}", tensors=tensors)
    except RecordError as exc:
        return RunRecord(source=FAILED, node_id=record.node_id, error=f"the record would not read back: {exc}")
    return record


def tensor_name(run_index: int, part: str) -> str:
    """Names of a run's tensors in the file: run0.noise, run0.sigmas, run0.latent_in, run0.denoise_mask."""
    return f"run{run_index}.{part}"


def is_name(value) -> bool:
    return isinstance(value, str) and bool(_NAME.match(value))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value) -> str:
    return {dict: "object", list: "list", str: "text", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(value, low: int, high: int, fail) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        fail(f"is a {_kind(value)}; expected a whole number")
    if not low <= value <= high:
        fail(f"is {_short(value)}; expected {low} to {high}")
    return value


def _number(value, low: float, high: float, fail) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        fail(f"is a {_kind(value)}; expected a number")
    if not (math.isfinite(value) and low <= value <= high):
        fail(f"is {_short(value)}; expected {low:g} to {high:g}")
    return value


@dataclass
class RunRecord:
    """What a file says about one sampling run. Tensor fields hold tensor names in the file.

    source: "captured" (observed by Raiiaf Capture Sampling), "reconstructed" (noise rebuilt from the graph's
    seed and latent size) or "failed" (the capture could not record this run; `error` says why).
    """

    source: str = CAPTURED
    node_id: str | None = None
    error: str | None = None
    # What the sampler was called with.
    seed: int | None = None
    sampler: str = ""
    sampler_options: dict = field(default_factory=dict)
    inpaint_options: dict = field(default_factory=dict)
    unstored_options: list = field(default_factory=list)
    cfg: float | None = None
    guider: str | None = None
    steps: int | None = None
    latent_shape: list | None = None
    latent_shapes: list | None = None  # ComfyUI >= 0.3.67 passes it; several entries: a nested latent
    latent_dtype: str | None = None
    noise_dtype: str | None = None
    empty_start: bool | None = None  # the sampler started from an all-zero latent (then latent_in is not stored)
    arguments: dict = field(default_factory=dict)  # other arguments the sampler got, by name (JSON values)
    unstored_arguments: list = field(default_factory=list)  # names of those that JSON cannot hold
    model: dict = field(default_factory=dict)
    output_sha256: str | None = None
    # Tensors in the file.
    noise: str | None = None
    sigmas: str | None = None
    latent_in: str | None = None
    denoise_mask_tensor: str | None = None
    # Widget settings read from the graph.
    class_type: str | None = None
    sampler_name: str | None = None
    scheduler: str | None = None
    denoise: float | None = None
    positive: str | None = None
    negative: str | None = None
    # Noise rebuilt from the graph.
    batch_index: list | None = None
    add_noise: bool | None = None
    rebuilt_by: dict | None = None

    def to_json(self) -> dict:
        """The record as stored: absent fields (None, empty texts, lists and objects) are left out."""
        return {k: v for k, v in asdict(self).items() if v not in (None, "", [], {})}

    @property
    def replayable(self) -> bool:
        return self.source != FAILED and self.noise is not None

    @classmethod
    def from_json(cls, entry, *, where: str, tensors: Mapping[str, TensorInfo]) -> RunRecord:
        """The record `entry` of a file, checked against the file's tensors (`where` names file and run)."""
        if not isinstance(entry, dict):
            raise RecordError(f"{where} is a {_kind(entry)}, not an object")
        check = _Check(entry, where)
        source = check.choice("source", SOURCES, default=CAPTURED)
        node_id = check.text("node_id")
        if source == FAILED:
            return cls(source=FAILED, node_id=node_id, error=check.text("error", limit=4000) or "no reason recorded")

        noise = check.tensor("noise", tensors, FLOAT_DTYPES, range(3, 6), required=True)
        shape = list(noise.shape)
        if 0 in shape:
            check.fail("noise", f"names an empty tensor (shape {shape})")
        latent_shape = check.shape("latent_shape") or shape
        if latent_shape != shape:
            check.fail("latent_shape", f"is {latent_shape}, which differs from its noise {shape}")
        latent_shapes = cls._latent_shapes(check, shape)
        noise_dtype = check.choice("noise_dtype", FLOAT_DTYPES, default=noise.dtype)
        if noise_dtype != noise.dtype:
            check.fail("noise_dtype", f"is {noise_dtype}, but the stored noise is {noise.dtype}")

        sigmas = check.tensor("sigmas", tensors, FLOAT_DTYPES, range(1, 2))
        steps = check.integer("steps", 0, MAX_STEPS)
        if sigmas is not None:
            if not 1 <= sigmas.shape[0] <= MAX_STEPS + 1:
                check.fail("sigmas", f"names a tensor of {sigmas.shape[0]} sigmas; expected 1 to {MAX_STEPS + 1}")
            ran = sigmas.shape[0] - 1
            if steps is not None and steps != ran:
                check.fail("steps", f"is {steps}, but the stored sigmas are for {ran} steps")
            steps = ran

        latent_in = check.tensor("latent_in", tensors, FLOAT_DTYPES, range(3, 6))
        if latent_in is not None and list(latent_in.shape) != shape:
            check.fail("latent_in", f"names a tensor of shape {list(latent_in.shape)}; its noise is {shape}")
        empty_start = check.flag("empty_start", default=latent_in is None)
        if empty_start and latent_in is not None:
            check.fail("empty_start", "is true although the run stores the latent it started from")
        check.tensor("denoise_mask_tensor", tensors, MASK_DTYPES, range(2, 6))

        sampler = check.text("sampler", limit=100, identifier=True) or ""
        options_table = {**SAMPLER_OPTIONS, **SAMPLER_OPTION_OVERRIDES.get(sampler, {})}
        output_sha256 = check.text("output_sha256", limit=64)
        if output_sha256 is not None and not _SHA256.match(output_sha256):
            check.fail("output_sha256", "is not a sha256 (64 lowercase hex digits)")
        batch_index = entry.get("batch_index")
        if batch_index is not None:
            if (not isinstance(batch_index, list) or len(batch_index) != shape[0] or not all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_BATCH_INDEX for i in batch_index)):
                check.fail("batch_index", f"is not a list of {shape[0]} indexes below {MAX_BATCH_INDEX} (one per noise "
                                          "batch item)")
        rebuilt_by = check.mapping("rebuilt_by")
        if not all(isinstance(v, (str, type(None))) and len(v or "") <= MAX_NAME for v in rebuilt_by.values()):
            check.fail("rebuilt_by", "holds values that are not short texts")

        return cls(
            source=source, node_id=node_id,
            seed=check.integer("seed", 0, MAX_SEED),
            sampler=sampler,
            sampler_options=check.options("sampler_options", options_table),
            inpaint_options=check.options("inpaint_options", INPAINT_OPTIONS),
            unstored_options=check.texts("unstored_options"),
            cfg=check.number("cfg", -1000.0, 1000.0),
            guider=check.text("guider"),
            steps=steps,
            latent_shape=latent_shape, latent_shapes=latent_shapes,
            latent_dtype=check.choice("latent_dtype", FLOAT_DTYPES, default="float32"),
            noise_dtype=noise_dtype,
            empty_start=empty_start,
            arguments=check.mapping("arguments"),
            unstored_arguments=check.texts("unstored_arguments"),
            model=check.mapping("model"),
            output_sha256=output_sha256,
            noise=entry["noise"], sigmas=entry.get("sigmas"), latent_in=entry.get("latent_in"),
            denoise_mask_tensor=entry.get("denoise_mask_tensor"),
            class_type=check.text("class_type"),
            sampler_name=check.text("sampler_name", limit=100, identifier=True),
            scheduler=check.text("scheduler", limit=100, identifier=True),
            denoise=check.number("denoise", 0.0, 1.0),
            positive=check.text("positive", limit=None), negative=check.text("negative", limit=None),
            batch_index=batch_index,
            add_noise=check.flag("add_noise"),
            rebuilt_by=rebuilt_by or None,
        )

    @staticmethod
    def _latent_shapes(check: _Check, shape: list[int]) -> list | None:
        value = check.entry.get("latent_shapes")
        if value is None:
            return None
        if not isinstance(value, list) or not 1 <= len(value) <= 16:
            check.fail("latent_shapes", f"is {_short(value)}; expected a list of 1 to 16 shapes")
        shapes = [check.shape(f"latent_shapes.{i}", s) for i, s in enumerate(value)]
        if shapes != [shape]:
            check.fail("latent_shapes", f"is {_short(shapes)}; a replayable run has exactly its noise's shape {shape}")
        return shapes
