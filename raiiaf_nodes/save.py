"""Writing one .raiiaf per image: the image, the runs that made it, the graph, model hashes, environment."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import raiiaf_core as rc
from raiiaf_core.atomic import write_atomic
from raiiaf_core.naming import inside

from . import __version__
from .capture import STORE, CapturedRun, CaptureStore
from .errors import ReconstructionError
from .graph import Graph
from .hashing import FileHashCache
from .noise import reconstruct_noise
from .paths import expand_prefix

log = logging.getLogger(__name__)

GENERATOR = {"name": "raiiaf_nodes", "version": __version__}
PREVIEW_SUBFOLDER = "raiiaf_previews"


def tensor_name(run_index: int, part: str) -> str:
    """Names of a run's tensors in the file: run0.noise, run0.sigmas, run0.latent_in, run0.denoise_mask."""
    return f"run{run_index}.{part}"


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
    model_path: Callable[[str, str], str | None] = lambda folder, name: None
    hash_cache: FileHashCache = field(default_factory=FileHashCache)
    hash_progress: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class SavedFile:
    path: Path
    filename: str
    subfolder: str
    preview: tuple[str, str] | None  # (subfolder, file name) of the PNG preview in ComfyUI's temp folder


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


def _run_entry(index: int, run: CapturedRun, graph: Graph) -> tuple[dict, dict]:
    tensors = {tensor_name(index, "noise"): run.noise, tensor_name(index, "sigmas"): run.sigmas}
    entry = {
        "source": "captured",
        "node_id": run.node_id,
        "seed": run.seed,
        "sampler": run.sampler,
        "sampler_options": run.sampler_options,
        "inpaint_options": run.inpaint_options,
        "cfg": run.cfg,
        "guider": run.guider,
        "steps": max(int(run.sigmas.shape[-1]) - 1, 0),
        "denoise_mask": run.denoise_mask is not None,
        "latent_shape": run.latent_shape,
        "latent_dtype": run.latent_dtype,
        "model": run.model,
        "output_sha256": run.output_sha256,
        "noise": tensor_name(index, "noise"),
        "sigmas": tensor_name(index, "sigmas"),
        "latent_in": None,
        "denoise_mask_tensor": None,
    }
    if run.unstored_options:
        entry["unstored_options"] = run.unstored_options
    if run.latent_in is not None:
        entry["latent_in"] = tensor_name(index, "latent_in")
        tensors[entry["latent_in"]] = run.latent_in
    if run.denoise_mask is not None:
        entry["denoise_mask_tensor"] = tensor_name(index, "denoise_mask")
        tensors[entry["denoise_mask_tensor"]] = run.denoise_mask
    if run.node_id is not None and run.node_id in graph.nodes:
        _add_graph_settings(entry, graph, run.node_id)
    return entry, tensors


def _add_graph_settings(entry: dict, graph: Graph, node_id: str) -> None:
    settings = graph.sampler_settings(node_id)
    entry["class_type"] = settings.pop("class_type")
    for key in ("sampler_name", "scheduler", "denoise"):
        if key in settings:
            entry[key] = settings[key]
    if entry.get("steps") is None and isinstance(settings.get("steps"), int):
        entry["steps"] = settings["steps"]
    if entry.get("cfg") is None and isinstance(settings.get("cfg"), (int, float)):
        entry["cfg"] = float(settings["cfg"])
    positive, negative = graph.prompt_texts(node_id)
    entry["positive"], entry["negative"] = positive, negative


def _reconstructed_run(graph: Graph, ancestors: list[str], latent: dict | None) -> tuple[dict, dict] | None:
    """KSampler's noise rebuilt from the graph's seed and latent size, for graphs without the capture node."""
    samplers = [n for n in ancestors if graph.noise_settings(n) is not None]
    if not samplers:
        return None
    node = samplers[-1]  # the sampler nearest the image made the latent that was decoded
    settings = graph.noise_settings(node)
    seed = settings["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ReconstructionError(
            f"cannot rebuild the noise of sampler node {node}: its seed comes from another node's output; "
            "put a Raiiaf Capture Sampling node on the MODEL line to record the real noise")
    batch_index = None
    if latent is not None:
        shape = list(latent["samples"].shape)
        batch_index = latent.get("batch_index")
    else:
        shape = graph.latent_shape(node)
        if shape is None:
            raise ReconstructionError(
                f"cannot rebuild the noise of sampler node {node}: the latent size is not in the graph; connect "
                "the sampler's LATENT to the save node's latent input, or use Raiiaf Capture Sampling")
    noise = reconstruct_noise(shape, seed, batch_index) if settings["add_noise"] else torch.zeros(shape)
    entry = {
        "source": "reconstructed",
        "node_id": node,
        "seed": seed,
        "latent_shape": shape,
        "latent_dtype": "float32",
        "batch_index": None if batch_index is None else [int(i) for i in batch_index],
        "add_noise": settings["add_noise"],
        "noise": tensor_name(0, "noise"),
        "sigmas": None,
        "latent_in": None,
        "denoise_mask_tensor": None,
    }
    _add_graph_settings(entry, graph, node)
    if "sampler_name" in entry:
        entry["sampler"] = entry["sampler_name"]
    return entry, {tensor_name(0, "noise"): noise}


def _model_record(ctx: SaveContext, graph: Graph, nodes: list[str]) -> dict | None:
    files = []
    for item in graph.model_files(nodes):
        entry = {"role": item["role"], "name": item["name"], "sha256": None, "size": None}
        path = ctx.model_path(item["folder"], item["name"])
        if path is not None:
            entry["size"] = os.path.getsize(path)
            log.info("raiiaf: sha256 of %s (%s)", item["name"], item["role"])
            entry["sha256"] = ctx.hash_cache.sha256(path, ctx.hash_progress)
        files.append(entry)
    if not files:
        return None
    main = next((f for f in files if f["role"] in ("checkpoint", "diffusion_model")), files[0])
    return {"name": main["name"], "sha256": main["sha256"], "files": files}


def _metadata(runs: list[dict], width: int, height: int, index: int, size: int) -> dict:
    meta: dict = {"generator": dict(GENERATOR), "width": width, "height": height,
                  "batch": {"index": index, "size": size}, "runs": runs}
    if not runs:
        return meta
    first = runs[0]
    meta["noise"] = {"tensor": first["noise"], "source": first["source"]}
    meta["seed"] = first.get("seed")
    for key, field_name in (("positive", "prompt"), ("negative", "negative_prompt"), ("scheduler", "scheduler")):
        if isinstance(first.get(key), str):
            meta[field_name] = first[key]
    sampler = first.get("sampler_name") or first.get("sampler")
    if isinstance(sampler, str):
        meta["sampler"] = sampler
    if isinstance(first.get("steps"), int):
        meta["steps"] = first["steps"]
    if isinstance(first.get("cfg"), (int, float)):
        meta["guidance_scale"] = float(first["cfg"])
    if isinstance(first.get("denoise"), (int, float)):
        meta["strength"] = float(first["denoise"])
    if first.get("sampler_options"):
        meta["sampler_settings"] = {"sampler": first.get("sampler"), "options": first["sampler_options"]}
    return meta


def parse_tags(tags: str) -> list[str]:
    return [t.strip() for t in tags.replace("\n", ",").split(",") if t.strip()]


def save_images(images: torch.Tensor, filename_prefix: str, ctx: SaveContext, *, latent: dict | None = None,
                tags: str = "", notes: str = "", store: CaptureStore = STORE,
                environment: dict | None = None) -> list[SavedFile]:
    """Write one .raiiaf per image of the IMAGE batch `images` ([B, H, W, C]); returns what was written.

    Files are named like SaveImage names PNGs (`sub/name` -> output/sub/name_00001_.raiiaf, counting up); a
    prefix leading outside the output folder is refused (WriteError) before anything is hashed or written.
    """
    batch, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    prefix = expand_prefix(filename_prefix, width, height)
    rc.resolve_prefix(ctx.output_dir, prefix)
    graph = Graph(ctx.prompt)
    ancestors = graph.ancestors(ctx.node_id) if ctx.node_id is not None else []
    captured = store.runs_for(ctx.prompt_id, [(n, graph.signature(n)) for n in ancestors])

    runs, tensors = [], {}
    for i, run in enumerate(captured):
        entry, run_tensors = _run_entry(i, run, graph)
        runs.append(entry)
        tensors.update(run_tensors)
    if not runs:
        rebuilt = _reconstructed_run(graph, ancestors, latent)
        if rebuilt is None:
            log.warning("raiiaf: no sampler upstream of save node %s; saving without noise", ctx.node_id)
        else:
            runs.append(rebuilt[0])
            tensors.update(rebuilt[1])
            log.info("raiiaf: no capture node upstream; noise rebuilt from seed %s", rebuilt[0]["seed"])
    if latent is not None:
        tensors["latent"] = latent["samples"]

    host: dict = {"version": ctx.comfyui_version, "node_id": ctx.node_id, "prompt_id": ctx.prompt_id}
    if latent is not None and latent.get("batch_index") is not None:
        host["latent_batch_index"] = [int(i) for i in latent["batch_index"]]
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
        path = rc.write_numbered(output_root, prefix.replace("%batch_num%", str(index)), image=png,
                                 tensors=tensors, metadata=meta, environment=environment)
        subfolder = path.parent.relative_to(output_root).as_posix()
        subfolder = "" if subfolder == "." else subfolder
        saved.append(SavedFile(path, path.name, subfolder, _write_preview(ctx, subfolder, path.name, png)))
    return saved


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
