"""A PNG from ComfyUI's SaveImage as the .raiiaf Raiiaf Save would have written for its graph.

SaveImage stores the API graph (`prompt`) and the UI workflow (`workflow`) as text chunks. From the graph come
the settings, prompts and model names (graph_record.py, as Raiiaf Save records them), and the initial noise:
rebuilt from the sampler's seed and latent size the way ComfyUI's KSampler draws it (noise.reconstruct_noise)
and marked reconstructed, with the run record Raiiaf Save writes for rebuilt noise. What SaveImage does not
keep (the sampled latent, model hashes, the machine) the file does not hold either. Torch is needed only for
the noise: without it, the file holds the settings and says why there is no noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from raiiaf_core import TensorInfo

from .errors import ReconstructionError
from .graph import Graph, is_link
from .graph_record import add_graph_settings, model_record, nearest_sampler, rebuilt_record, run_metadata
from .record import FAILED, MAX_SEED, RECONSTRUCTED, RunRecord, readable

NOISE_MAKER = "raiiaf_nodes.noise.reconstruct_noise"
# Nodes that write the image a PNG holds: SaveImage and PreviewImage, and any node that takes images and a
# filename prefix (the image saver node packs).
SAVE_CLASSES = ("SaveImage", "PreviewImage")


@dataclass(frozen=True)
class Imported:
    metadata: dict  # without generator and extra, which the caller adds
    tensors: dict
    noise: str  # what the file holds of the initial noise, and why, in one sentence


def is_graph(value) -> bool:
    """Whether a decoded `prompt` text chunk is an API-format graph: {node id: {"class_type", "inputs"}}."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(node, dict) and isinstance(node.get("class_type"), str) for node in value.values())


def save_nodes(graph: Graph) -> list[str]:
    return [n for n in graph.nodes if graph.class_type(n) in SAVE_CLASSES
            or ("filename_prefix" in graph.inputs(n) and is_link(graph.inputs(n).get("images")))]


def _sampler_upstream(graph: Graph) -> tuple[list[str], str | None, str | None]:
    """(ancestors of the save node, the sampler that made its image, why there is none)."""
    found = {}
    for node in save_nodes(graph):
        ancestors = graph.ancestors(node)
        sampler = nearest_sampler(graph, ancestors)
        if sampler is not None:
            found.setdefault(sampler, ancestors)
    if len(found) == 1:
        (sampler, ancestors), = found.items()
        return ancestors, sampler, None
    if found:
        return [], None, (f"the graph saves images made by {len(found)} samplers (nodes {', '.join(sorted(found))}) "
                          "and the PNG does not say which one made it")
    return [], None, "the graph has no sampler upstream of a save node"


def contents(prompt: dict, workflow, width: int, height: int) -> Imported:
    """Metadata and tensors of the .raiiaf for a SaveImage PNG with this graph (`prompt`) and workflow."""
    graph = Graph(prompt)
    ancestors, sampler, why = _sampler_upstream(graph)
    run = noise = None
    if sampler is not None:
        try:
            run = rebuilt_record(graph, ancestors, None, None, {"function": NOISE_MAKER, "comfyui_version": None})
            noise, why = _noise(run)
        except ReconstructionError as exc:
            why = str(exc)
    if noise is not None:
        run = readable(0, run, {run.noise: TensorInfo(run.noise, "float32", tuple(noise.shape))})
        if run.source == FAILED:
            noise, why = None, run.error
    meta: dict = {"width": width, "height": height}
    if noise is not None:
        settings, runs = run, [run]
    elif sampler is not None:  # the settings without a run to replay, and the run that could not be made
        settings, runs = _settings(graph, sampler), [RunRecord(source=FAILED, node_id=sampler,
                                                               error=f"the noise was not rebuilt: {why}")]
    else:
        settings, runs = None, []
    meta["runs"] = [r.to_json() for r in runs]
    if settings is not None:
        meta.update(run_metadata(settings))
        if settings.latent_shape and settings.latent_shape[0] == 1:
            meta["batch"] = {"index": 0, "size": 1}
    model = model_record(graph, ancestors, lambda folder, name: None)
    if model is not None:
        meta["model"] = model
    host = {"prompt": prompt}
    if isinstance(workflow, dict):
        host["workflow"] = workflow
    meta["host"] = {"comfyui": host}
    if noise is None:
        return Imported(meta, {}, f"not rebuilt: {why}")
    note = (f"rebuilt from seed {run.seed} and latent size {run.latent_shape} by {NOISE_MAKER}, as ComfyUI's "
            "KSampler draws it (marked reconstructed)")
    level = _cpu_level() if run.add_noise else None
    if level is not None:
        # The PNG's own machine may have drawn other noise from this seed: torch's float32 draw depends on it.
        note += (f"; drawn at this machine's CPU kernel level, {level}: SaveImage does not record the machine that "
                 "drew the original, and torch draws other noise from one seed at some levels (DEFAULT against "
                 "AVX2 and AVX-512)")
    if run.latent_shape[0] != 1:
        note += (f"; the PNG is one image of a batch of {run.latent_shape[0]} and does not say which, so the noise "
                 "is the whole batch's")
    return Imported(meta, {run.noise: noise}, note)


def _noise(record: RunRecord):
    """(the rebuilt noise tensor, None), or (None, why it cannot be made here)."""
    try:
        import torch

        from .noise import reconstruct_noise
    except ImportError:
        return None, "torch is not installed (pip install torch, then import the PNG again)"
    if not record.add_noise:
        return torch.zeros(record.latent_shape, dtype=torch.float32), None
    return reconstruct_noise(record.latent_shape, record.seed, None, torch.float32), None


def _cpu_level():
    import torch

    from raiiaf_core.environment import cpu_capability

    return cpu_capability(torch)


def _settings(graph: Graph, sampler: str) -> RunRecord:
    """The sampler's settings as the graph gives them, for a run whose noise could not be rebuilt."""
    seed = (graph.noise_settings(sampler) or {}).get("seed")
    record = RunRecord(source=RECONSTRUCTED, node_id=sampler,
                       seed=seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED
                       else None, latent_shape=graph.latent_shape(sampler))
    add_graph_settings(record, graph, sampler)
    record.sampler = record.sampler_name or ""
    return record
