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
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

import raiiaf_core as rc

_JSON_SCALARS = (str, int, float, bool, type(None))


def sampler_name_of(function) -> str:
    """The k-diffusion name of a sampler function: sample_euler -> euler, dpm_fast_function -> dpm_fast."""
    name = getattr(function, "__name__", type(function).__name__)
    if name.startswith("sample_"):
        return name[len("sample_"):]
    if name.endswith("_function"):
        return name[:-len("_function")]
    return name


def json_options(options: dict | None) -> tuple[dict, list[str]]:
    """Split sampler options into JSON-storable values and the names of those that are not (callables...)."""
    kept, dropped = {}, []
    for key, value in (options or {}).items():
        if isinstance(value, _JSON_SCALARS) and not (isinstance(value, float) and value != value):
            kept[str(key)] = value
        else:
            dropped.append(str(key))
    return kept, dropped


@dataclass
class CapturedRun:
    """One call of a sampler, with the tensors exactly as the sampler received them (CPU copies)."""

    noise: torch.Tensor
    sigmas: torch.Tensor
    seed: int | None
    sampler: str
    sampler_options: dict = field(default_factory=dict)
    inpaint_options: dict = field(default_factory=dict)
    unstored_options: list = field(default_factory=list)
    cfg: float | None = None
    guider: str | None = None
    denoise_mask: torch.Tensor | None = None
    latent_in: torch.Tensor | None = None  # None when the sampler started from an all-zero latent
    latent_shape: list = field(default_factory=list)
    latent_dtype: str = "float32"
    model: dict = field(default_factory=dict)
    output_sha256: str | None = None
    prompt_id: str | None = None
    node_id: str | None = None
    sequence: int = 0


def make_run(*, noise, sigmas, seed, sampler_function, sampler_options=None, inpaint_options=None, cfg=None,
             guider=None, denoise_mask=None, latent_image=None, model=None, output=None, prompt_id=None,
             node_id=None) -> CapturedRun:
    """Build a record from what a sampler was called with; tensors are copied to the CPU, untouched."""
    options, dropped = json_options(sampler_options)
    inpaint, dropped_inpaint = json_options(inpaint_options)
    latent_in = None
    if latent_image is not None and torch.count_nonzero(latent_image) > 0:
        latent_in = latent_image.detach().to("cpu", copy=True)
    return CapturedRun(
        noise=noise.detach().to("cpu", copy=True),
        sigmas=sigmas.detach().to("cpu", copy=True),
        seed=None if seed is None else int(seed),
        sampler=sampler_name_of(sampler_function),
        sampler_options=options,
        inpaint_options=inpaint,
        unstored_options=dropped + [f"inpaint.{k}" for k in dropped_inpaint],
        cfg=None if cfg is None else float(cfg),
        guider=guider,
        denoise_mask=None if denoise_mask is None else denoise_mask.detach().to("cpu", copy=True),
        latent_in=latent_in,
        latent_shape=list(latent_image.shape) if latent_image is not None else list(noise.shape),
        latent_dtype=str(latent_image.dtype if latent_image is not None else noise.dtype).replace("torch.", ""),
        model=dict(model or {}),
        output_sha256=None if output is None else rc.tensor_sha256(output.detach().to("cpu")),
        prompt_id=prompt_id,
        node_id=None if node_id is None else str(node_id),
    )


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
