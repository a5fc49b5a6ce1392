"""Writing one .raiiaf per image: the image, the runs that made it, the graph, model hashes, environment (and, on
request, the file as its shareable PNG)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import raiiaf_core as rc
from raiiaf_core.atomic import write_atomic
from raiiaf_core.naming import inside
from raiiaf_core.recipe import STORAGE as NOISE_STORAGE
from raiiaf_core.recipe import compact as compact_noise

from . import __version__
from .capture import STORE, CapturedRun, CaptureStore, dtype_name
from .errors import NodeInputError
from .graph import Graph
from .graph_record import add_graph_settings, model_record, rebuilt_record, run_metadata
from .hashing import FileHashCache
from .noise import reconstruct_noise
from .paths import expand_prefix
from .record import FAILED, RunRecord, readable, tensor_name

log = logging.getLogger(__name__)

GENERATOR = {"name": "raiiaf_nodes", "version": __version__}
# What a save writes per image: the .raiiaf, its shareable PNG (raiiaf_core/png_share.py), or both.
SAVE_AS = (RAIIAF, PNG, BOTH) = (".raiiaf", "PNG", "both")
PREVIEW_SUBFOLDER = "raiiaf_previews"
NoiseMaker = Callable[[list, int, "list | None", torch.dtype], torch.Tensor]


@dataclass
class SaveContext:
    """What a save needs from ComfyUI, gathered by the node from ComfyUI's hidden inputs and folders."""

    output_dir: str
    temp_dir: str | None = None
    prompt: dict | None = None
    extra_pnginfo: dict | None = None
    node_id: str | None = None
    prompt_id: str | None = None
    metadata_enabled: bool = True
    comfyui_version: str | None = None
    launch: dict | None = None  # comfy_bridge.launch_settings(): the flags and attention that change the numbers
    model_path: Callable[[str, str], str | None] = lambda folder, name: None
    hash_cache: FileHashCache = field(default_factory=FileHashCache)
    hash_progress: Callable[[int, int], None] | None = None
    # Rebuilds KSampler's noise (shape, seed, batch_index, dtype) for graphs without the capture node: inside
    # ComfyUI its own comfy.sample.prepare_noise, so the rebuilt noise follows the running version.
    make_noise: NoiseMaker = reconstruct_noise
    noise_maker: str = "raiiaf_nodes.noise.reconstruct_noise"  # recorded in the run as rebuilt_by.function


@dataclass(frozen=True)
class SavedFile:
    path: Path  # the .raiiaf, or the shareable PNG when only that was written
    filename: str
    subfolder: str
    preview: tuple[str, str] | None  # (subfolder, file name) of the PNG preview in ComfyUI's temp folder
    png: Path | None = None  # the shareable PNG beside the .raiiaf, when both were written


def image_to_png(image: torch.Tensor, text_chunks: dict[str, str] | None = None) -> bytes:
    """One IMAGE ([H, W, C] floats in 0..1) as PNG bytes, converted the way SaveImage converts it."""
    pixels = np.clip(255.0 * image.detach().cpu().numpy(), 0, 255).astype(np.uint8)
    info = None
    if text_chunks:
        info = PngInfo()
        for key, value in text_chunks.items():
            info.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info, compress_level=rc.PNG_COMPRESS_LEVEL)
    return out.getvalue()


# Parts of a captured run and the record fields that name their tensors in the file.
_TENSOR_FIELDS = {"noise": "noise", "sigmas": "sigmas", "latent_in": "latent_in", "denoise_mask": "denoise_mask_tensor"}


def _numbered(index: int, run: CapturedRun, graph: Graph) -> tuple[RunRecord, dict]:
    """Run `index` of the file: its record with the names its tensors get in the file, and those tensors."""
    tensors = {tensor_name(index, part): tensor for part, tensor in run.tensors.items()}
    record = replace(run.record, node_id=run.node_id,
                     **{_TENSOR_FIELDS[part]: tensor_name(index, part) for part in run.tensors})
    if run.node_id is not None and run.node_id in graph.nodes:
        add_graph_settings(record, graph, run.node_id)
    return _readable(index, record, tensors)


def _readable(index: int, record: RunRecord, tensors: dict) -> tuple[RunRecord, dict]:
    """The record checked by the reader's own rules before it is written (record.readable), with its tensors."""
    infos = {name: rc.TensorInfo(name, dtype_name(t.dtype), tuple(t.shape)) for name, t in tensors.items()}
    checked = readable(index, record, infos)
    return (checked, tensors) if checked is record else (checked, {})


def _reconstructed_run(ctx: SaveContext, graph: Graph, ancestors: list[str], latent: torch.Tensor | None,
                       batch_index) -> tuple[RunRecord, dict] | None:
    """KSampler's noise rebuilt from the graph's seed and latent size, for graphs without the capture node."""
    record = rebuilt_record(graph, ancestors, None if latent is None else list(latent.shape), batch_index,
                            {"function": ctx.noise_maker, "comfyui_version": ctx.comfyui_version})
    if record is None:
        return None
    dtype = getattr(torch, record.latent_dtype)
    if record.add_noise:
        noise = ctx.make_noise(record.latent_shape, record.seed, batch_index, dtype)
    else:
        noise = torch.zeros(record.latent_shape, dtype=dtype)
    record.noise_dtype = dtype_name(noise.dtype)
    return _readable(0, record, {record.noise: noise})


def _model_record(ctx: SaveContext, graph: Graph, nodes: list[str]) -> dict | None:
    def locate(folder: str, name: str):
        path = ctx.model_path(folder, name)
        return None if path is None else (os.path.getsize(path), ctx.hash_cache.sha256(path, ctx.hash_progress))

    return model_record(graph, nodes, locate)


def _metadata(runs: list[RunRecord], width: int, height: int, index: int, size: int) -> dict:
    meta: dict = {"generator": dict(GENERATOR), "width": width, "height": height,
                  "batch": {"index": index, "size": size}, "runs": [run.to_json() for run in runs]}
    if not runs or not runs[0].replayable:
        return meta
    meta.update(run_metadata(runs[0]))  # top-level fields describe the run that started from noise
    return meta


def parse_tags(tags: str) -> list[str]:
    return [t.strip() for t in tags.replace("\n", ",").split(",") if t.strip()]


def save_images(images: torch.Tensor, filename_prefix: str, ctx: SaveContext, *, latent: dict | None = None,
                tags: str = "", notes: str = "", store: CaptureStore = STORE,
                environment: dict | None = None, save_as: str = RAIIAF, noise_storage: str = "raw") -> list[SavedFile]:
    """Write one .raiiaf per image of the IMAGE batch `images` ([B, H, W, C]); returns what was written.

    Files are named like SaveImage names PNGs (`sub/name` -> output/sub/name_00001_.raiiaf, counting up); a
    prefix leading outside the output folder is refused (WriteError) before anything is hashed or written.
    `save_as` (SAVE_AS): the .raiiaf, the shareable PNG instead (name_00001_.png), or both. `noise_storage`
    "recipe" stores each run's noise that KSampler's draw from its seed reproduces bit for bit as that recipe
    (seed, shape, batch_index and the noise's sha256; raiiaf_core/recipe.py) instead of the tensor; other noise
    stays raw.
    """
    if save_as not in SAVE_AS:
        raise NodeInputError(f"save_as is {str(save_as)[:40]!r}; expected one of {', '.join(SAVE_AS)}")
    if noise_storage not in NOISE_STORAGE:
        raise NodeInputError(f"noise_storage is {str(noise_storage)[:40]!r}; expected one of "
                             f"{', '.join(NOISE_STORAGE)}")
    batch, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    prefix = expand_prefix(filename_prefix, width, height)
    rc.resolve_prefix(ctx.output_dir, prefix)
    graph = Graph(ctx.prompt)
    ancestors = graph.ancestors(ctx.node_id) if ctx.node_id is not None else []
    captured = store.runs_for(ctx.prompt_id, [(n, graph.signature(n)) for n in ancestors])

    host: dict = {"version": ctx.comfyui_version, "node_id": ctx.node_id, "prompt_id": ctx.prompt_id}
    if ctx.launch is not None:
        host["launch"] = ctx.launch
    samples, batch_index = None, None
    if latent is not None:
        samples = latent.get("samples")
        if not isinstance(samples, torch.Tensor):
            # A nested latent (audio+video models) is several tensors; this version stores none of them.
            host["latent_not_stored"] = f"the latent is a {type(samples).__name__} (a nested latent), not a tensor"
            samples = None
        if latent.get("batch_index") is not None:
            batch_index = [int(i) for i in latent["batch_index"]]
            host["latent_batch_index"] = batch_index

    runs, tensors = [], {}
    for i, run in enumerate(captured):
        record, run_tensors = _numbered(i, run, graph)
        runs.append(record)
        tensors.update(run_tensors)
        if record.source == FAILED:
            log.warning("raiiaf: run %d of save node %s was not captured (%s); the file says so", i, ctx.node_id,
                        record.error)
    if not runs:
        rebuilt = _reconstructed_run(ctx, graph, ancestors, samples, batch_index)
        if rebuilt is None:
            log.warning("raiiaf: no sampler upstream of save node %s; saving without noise", ctx.node_id)
        else:
            runs.append(rebuilt[0])
            tensors.update(rebuilt[1])
            log.info("raiiaf: no capture node upstream; noise rebuilt from seed %s by %s", rebuilt[0].seed,
                     ctx.noise_maker)
    if samples is not None:
        tensors["latent"] = samples
    if noise_storage == "recipe":
        tensors, kept = compact_noise(tensors, {"runs": [run.to_json() for run in runs], "host": {"comfyui": host}})
        for name, why in kept.items():
            log.warning("raiiaf: save node %s stores %s raw: %s", ctx.node_id, name, why)

    text_chunks: dict[str, str] = {}
    if ctx.metadata_enabled:
        if ctx.prompt is not None:
            host["prompt"] = ctx.prompt
            text_chunks["prompt"] = json.dumps(ctx.prompt)
        for key, value in (ctx.extra_pnginfo or {}).items():
            host[key] = value
            text_chunks[key] = json.dumps(value)

    model = _model_record(ctx, graph, ancestors)
    environment = environment if environment is not None else rc.capture_environment()
    output_root = Path(ctx.output_dir).resolve()
    tag_list = parse_tags(tags)
    saved = []
    for index in range(batch):
        png = image_to_png(images[index], text_chunks)
        meta = _metadata(runs, width, height, index, batch)
        meta["host"] = {"comfyui": host}
        if model is not None:
            meta["model"] = model
        if tag_list:
            meta["tags"] = tag_list
        if notes.strip():
            meta["notes"] = notes
        path, shared = _write(output_root, prefix.replace("%batch_num%", str(index)), save_as, image=png,
                              tensors=tensors, metadata=meta, environment=environment)
        subfolder = path.parent.relative_to(output_root).as_posix()
        subfolder = "" if subfolder == "." else subfolder
        saved.append(SavedFile(path, path.name, subfolder, _write_preview(ctx, subfolder, path.name, png), shared))
    return saved


def _write(output_root: Path, prefix: str, save_as: str, **contents) -> tuple[Path, Path | None]:
    """(the file written, the PNG beside it when both are)."""
    if save_as == PNG:
        return rc.write_numbered(output_root, prefix, png=True, **contents), None
    path = rc.write_numbered(output_root, prefix, **contents)
    if save_as == RAIIAF:
        return path, None
    try:  # named like the .raiiaf, unless another file has that name: then numbered like a PNG of its own
        return path, rc.export_png(path, path.with_suffix(".png"), exclusive=True)
    except rc.TargetExistsError:
        return path, rc.write_numbered(output_root, prefix, png=True, **contents)


def _write_preview(ctx: SaveContext, subfolder: str, name: str, png: bytes) -> tuple[str, str] | None:
    # The browser cannot show a .raiiaf, so the UI preview is a PNG copy in ComfyUI's temp folder, in the
    # same subfolders as the file so that equal names in different folders do not overwrite each other.
    # Written to a temporary file in its folder and renamed over the preview name, so a link planted under
    # that name is replaced, never written through; a folder that links out of the temp folder gets no
    # preview. The .raiiaf is already saved: a preview that cannot be written is logged, not raised.
    if ctx.temp_dir is None:
        return None
    preview_subfolder = f"{PREVIEW_SUBFOLDER}/{subfolder}" if subfolder else PREVIEW_SUBFOLDER
    folder = Path(ctx.temp_dir) / preview_subfolder
    try:
        if not inside(ctx.temp_dir, folder):
            raise rc.WriteError(f"{folder}: the preview folder leads outside ComfyUI's temp folder")
        folder.mkdir(parents=True, exist_ok=True)
        if not inside(ctx.temp_dir, folder):  # a link planted while the folders were made
            raise rc.WriteError(f"{folder}: the preview folder leads outside ComfyUI's temp folder")
        write_atomic(folder / f"{name}.png", [png], durable=False)
    except (OSError, rc.RaiiafError) as exc:
        log.warning("raiiaf: no preview for %s: %s", name, exc)
        return None
    return preview_subfolder, f"{name}.png"
