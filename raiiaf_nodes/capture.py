"""Sampling runs as the capture node sees them, and where they wait until a save node writes them.

The capture node puts a wrapper on the MODEL; every sampler that uses that model calls it with the noise,
sigmas and seed it really uses, and the wrapper hands a `CapturedRun` to `STORE`. A save node then asks for
the runs of the sampler nodes upstream of its image. Runs are filed under the queue run (prompt id) and the
sampler node that made them; because ComfyUI reuses cached results instead of sampling again when nothing
upstream changed, runs are also remembered by the sampler's graph signature, so saving again after changing
only the save node still finds the runs that made the cached latent.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

import raiiaf_core as rc

from .errors import CaptureError
from .record import CAPTURED, FAILED, SAMPLER_OPTIONS, RunRecord

_JSON_SCALARS = (str, int, float, bool, type(None))


def sampler_name_of(function) -> str:
    """The k-diffusion name of a sampler function: sample_euler -> euler, dpm_fast_function -> dpm_fast."""
    name = getattr(function, "__name__", type(function).__name__)
    if name.startswith("sample_"):
        return name[len("sample_"):]
    if name.endswith("_function"):
        return name[:-len("_function")]
    return name


def json_values(values: dict | None) -> tuple[dict, list[str]]:
    """Split values into those JSON can store exactly and the names of the others (callables, tensors, inf)."""
    kept, dropped = {}, []
    for key, value in (values or {}).items():
        if isinstance(value, _JSON_SCALARS) and not (isinstance(value, float) and not math.isfinite(value)):
            kept[str(key)] = value
        else:
            dropped.append(str(key))
    return kept, dropped


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class CapturedRun:
    """One call of a sampler: its record (tensor names are given when a save numbers the run) and CPU copies
    of its tensors by part ("noise", "sigmas", "latent_in", "denoise_mask"), exactly as the sampler got them."""

    record: RunRecord
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt_id: str | None = None
    node_id: str | None = None
    sequence: int = 0


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def make_run(*, noise, sigmas, seed, sampler_function, sampler_options=None, inpaint_options=None, cfg=None,
             guider=None, denoise_mask=None, latent_image=None, latent_shapes=None, arguments=None, model=None,
             output=None, prompt_id=None, node_id=None) -> CapturedRun:
    """Build a run from what a sampler was called with; tensors are copied to the CPU, untouched.

    A nested latent (several latents packed into one, as audio+video models use) gives a failed run that says
    so: its packed noise is not stored, because this version cannot replay it.
    """
    given = {"noise": noise, "sigmas": sigmas, "latent_image": latent_image}
    for name, value in given.items():
        if not isinstance(value, torch.Tensor) and not (name == "latent_image" and value is None):
            raise CaptureError(f"the sampler's {name} is a {type(value).__name__}, not a tensor")
    shapes = None if latent_shapes is None else [[int(d) for d in s] for s in latent_shapes]
    latent = latent_image if latent_image is not None else noise
    seed = None if seed is None else int(seed)
    sampler = sampler_name_of(sampler_function)
    if shapes is not None and len(shapes) > 1:
        return failed_run(
            error=f"nested latent of {len(shapes)} parts {shapes} (audio+video models): this version of raiiaf "
                  "does not capture their packed noise, so this run cannot be replayed",
            prompt_id=prompt_id, node_id=node_id, seed=seed, sampler=sampler, latent_shapes=shapes,
            noise_dtype=dtype_name(noise.dtype), latent_dtype=dtype_name(latent.dtype))
    options, dropped = json_values(sampler_options)
    # Options of custom samplers that replay would refuse are named, not stored (like callables).
    dropped += [key for key in options if key not in SAMPLER_OPTIONS]
    options = {k: v for k, v in options.items() if k in SAMPLER_OPTIONS}
    inpaint, dropped_inpaint = json_values(inpaint_options)
    kept_arguments, unstored_arguments = json_values(arguments)
    tensors = {"noise": _cpu_copy(noise), "sigmas": _cpu_copy(sigmas)}
    empty_start = latent_image is None or not bool(torch.count_nonzero(latent_image))
    if not empty_start:
        tensors["latent_in"] = _cpu_copy(latent_image)
    if denoise_mask is not None:
        tensors["denoise_mask"] = _cpu_copy(denoise_mask)
    record = RunRecord(
        source=CAPTURED,
        seed=seed,
        sampler=sampler,
        sampler_options=options,
        inpaint_options=inpaint,
        unstored_options=dropped + [f"inpaint.{k}" for k in dropped_inpaint],
        cfg=None if cfg is None else float(cfg),
        guider=guider,
        steps=max(int(sigmas.shape[-1]) - 1, 0),
        latent_shape=list(latent.shape),
        latent_shapes=shapes,
        latent_dtype=dtype_name(latent.dtype),
        noise_dtype=dtype_name(noise.dtype),
        empty_start=empty_start,
        arguments=kept_arguments,
        unstored_arguments=unstored_arguments,
        model=dict(model or {}),
        output_sha256=rc.tensor_sha256(output.detach().to("cpu")) if isinstance(output, torch.Tensor) else None,
    )
    return CapturedRun(record, tensors, prompt_id, None if node_id is None else str(node_id))


def failed_run(*, error: str, prompt_id=None, node_id=None, **known) -> CapturedRun:
    """A run the capture could not record: the file says which one and why (`known`: RunRecord fields it has)."""
    record = RunRecord(source=FAILED, error=error, **known)
    return CapturedRun(record, {}, prompt_id, None if node_id is None else str(node_id))


class CaptureStore:
    """Runs waiting to be saved: by (prompt id, sampler node id), and by sampler graph signature."""

    def __init__(self, max_prompts: int = 8, max_signatures: int = 32):
        self._by_prompt: OrderedDict[str | None, dict[str, list[CapturedRun]]] = OrderedDict()
        self._by_signature: OrderedDict[str, list[CapturedRun]] = OrderedDict()
        self._max_prompts = max_prompts
        self._max_signatures = max_signatures
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, run: CapturedRun) -> None:
        with self._lock:
            run.sequence = next(self._sequence)
            nodes = self._by_prompt.setdefault(run.prompt_id, {})
            self._by_prompt.move_to_end(run.prompt_id)
            nodes.setdefault(run.node_id, []).append(run)
            while len(self._by_prompt) > self._max_prompts:
                self._by_prompt.popitem(last=False)

    def runs_for(self, prompt_id: str | None, nodes: list[tuple[str, str]]) -> list[CapturedRun]:
        """Runs of the given (node id, graph signature) pairs, in the order they were sampled.

        A node that sampled in this queue run gives those runs (and they are remembered under its signature);
        a node that did not (its result came from ComfyUI's cache) gives the runs remembered for its signature.
        """
        found: list[CapturedRun] = []
        with self._lock:
            current = self._by_prompt.get(prompt_id, {})
            for node_id, signature in nodes:
                runs = current.get(str(node_id))
                if runs:
                    self._by_signature[signature] = list(runs)
                    self._by_signature.move_to_end(signature)
                    while len(self._by_signature) > self._max_signatures:
                        self._by_signature.popitem(last=False)
                else:
                    runs = self._by_signature.get(signature, [])
                found.extend(runs)
        return sorted(found, key=lambda r: r.sequence)


# The one store shared by all capture and save nodes of this ComfyUI process.
STORE = CaptureStore()
