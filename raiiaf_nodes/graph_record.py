"""What a file records from ComfyUI's API graph: a run's widget settings, the run of noise rebuilt from a
sampler's seed and latent size, the top-level settings, the model files.

Raiiaf Save writes these for the graph it runs in (save.py), and `raiiaf import` for the graph a SaveImage
PNG carries (from_saveimage.py), so both write the same records. Nothing here needs torch: the noise itself is
made by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ReconstructionError
from .graph import Graph
from .record import MAX_SEED, MAX_STEPS, RECONSTRUCTED, RunRecord, is_name, is_number, tensor_name

# (models/ folder, file name) -> (size, sha256) of the file, or None where it is not found.
Locate = Callable[[str, str], "tuple[int, str] | None"]


def add_graph_settings(record: RunRecord, graph: Graph, node_id: str) -> None:
    """Widget settings the sampler does not report; only values of the types the record reads back are kept."""
    settings = graph.sampler_settings(node_id)
    record.class_type = settings["class_type"] if isinstance(settings.get("class_type"), str) else None
    for key in ("sampler_name", "scheduler"):
        if is_name(settings.get(key)):
            setattr(record, key, settings[key])
    denoise = settings.get("denoise")
    if is_number(denoise) and 0 <= denoise <= 1:
        record.denoise = float(denoise)
    steps = settings.get("steps")
    if record.steps is None and isinstance(steps, int) and not isinstance(steps, bool) and 0 <= steps <= MAX_STEPS:
        record.steps = steps
    if record.cfg is None and is_number(settings.get("cfg")):
        record.cfg = float(settings["cfg"])
    record.positive, record.negative = graph.prompt_texts(node_id)


def nearest_sampler(graph: Graph, ancestors: list[str]) -> str | None:
    """The sampler nearest the image among `ancestors` (sources first): it made the latent that was decoded."""
    samplers = [n for n in ancestors if graph.noise_settings(n) is not None]
    return samplers[-1] if samplers else None


def rebuilt_record(graph: Graph, ancestors: list[str], shape: list[int] | None, batch_index,
                   rebuilt_by: dict) -> RunRecord | None:
    """The record of a run whose noise is rebuilt from the nearest sampler's seed and latent size (`shape`: the
    sampled latent's, when known), naming its noise tensor; None without a sampler upstream.

    Raises ReconstructionError when the graph does not give the seed or the latent size.
    """
    node = nearest_sampler(graph, ancestors)
    if node is None:
        return None
    settings = graph.noise_settings(node)
    seed = settings["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ReconstructionError(
            f"cannot rebuild the noise of sampler node {node}: its seed comes from another node's output; "
            "put a Raiiaf Capture Sampling node on the MODEL line to record the real noise")
    if not 0 <= seed <= MAX_SEED:
        raise ReconstructionError(f"cannot rebuild the noise of sampler node {node}: its seed {seed} is not "
                                  f"between 0 and {MAX_SEED}")
    if shape is None:
        shape = graph.latent_shape(node)
        if shape is None:
            raise ReconstructionError(
                f"cannot rebuild the noise of sampler node {node}: the latent size is not in the graph; connect "
                "the sampler's LATENT to the save node's latent input, or use Raiiaf Capture Sampling")
    # EmptyLatentImage gives float32 latents, and KSampler draws its noise in the latent's dtype.
    record = RunRecord(
        source=RECONSTRUCTED, node_id=node, seed=seed, latent_shape=list(shape), latent_dtype="float32",
        noise_dtype="float32", empty_start=graph.latent_shape(node) is not None, batch_index=batch_index,
        add_noise=settings["add_noise"], noise=tensor_name(0, "noise"), rebuilt_by=rebuilt_by)
    add_graph_settings(record, graph, node)
    record.sampler = record.sampler_name or ""
    return record


def run_metadata(first: RunRecord) -> dict:
    """The top-level metadata fields that describe a file's first run (the one that started from noise)."""
    meta: dict = {}
    if first.noise is not None:
        meta["noise"] = {"tensor": first.noise, "source": first.source}
    meta["seed"] = first.seed
    for value, field_name in ((first.positive, "prompt"), (first.negative, "negative_prompt"),
                              (first.scheduler, "scheduler"), (first.sampler_name or first.sampler, "sampler")):
        if value:
            meta[field_name] = value
    if first.steps is not None:
        meta["steps"] = first.steps
    if first.cfg is not None:
        meta["guidance_scale"] = first.cfg
    if first.denoise is not None:
        meta["strength"] = first.denoise
    if first.sampler_options:
        meta["sampler_settings"] = {"sampler": first.sampler, "options": first.sampler_options}
    return meta


def model_record(graph: Graph, nodes: list[str], locate: Locate) -> dict | None:
    """The `model` field: the files the nodes' loader widgets pick, with size and sha256 where `locate` finds
    them; the checkpoint (or diffusion model) names the model."""
    files = []
    for item in graph.model_files(nodes):
        found = locate(item["folder"], item["name"])
        size, sha256 = found if found is not None else (None, None)
        files.append({"role": item["role"], "name": item["name"], "sha256": sha256, "size": size})
    if not files:
        return None
    main = next((f for f in files if f["role"] in ("checkpoint", "diffusion_model")), files[0])
    return {"name": main["name"], "sha256": main["sha256"], "files": files}
