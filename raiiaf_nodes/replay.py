"""Reading a .raiiaf back for ComfyUI: one sampling run's noise, sigmas, seed and settings, the image, the
stored latent, and how the current environment differs from the one that made the file."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

import raiiaf_core as rc

from .errors import NodeInputError

log = logging.getLogger(__name__)


@dataclass
class ReplayRun:
    """Everything needed to run one stored sampling run again."""

    index: int
    source: str  # "captured" or "reconstructed"
    noise: torch.Tensor
    sigmas: torch.Tensor | None
    seed: int | None
    latent_in: torch.Tensor
    denoise_mask: torch.Tensor | None
    sampler: str
    sampler_options: dict
    inpaint_options: dict
    cfg: float
    steps: int
    sampler_name: str
    scheduler: str
    positive: str
    negative: str
    output_sha256: str | None


def _entries(meta: dict) -> list[dict]:
    runs = meta.get("runs") or []
    if runs:
        return runs
    # Files from other hosts (diffusers, the CLI) have no runs list, only the top-level noise and settings.
    if "noise" in meta:
        return [{"source": meta["noise"].get("source", "captured"), "noise": meta["noise"]["tensor"],
                 "seed": meta.get("seed"), "sampler": meta.get("sampler", ""), "cfg": meta.get("guidance_scale"),
                 "steps": meta.get("steps"), "scheduler": meta.get("scheduler", ""),
                 "positive": meta.get("prompt"), "negative": meta.get("negative_prompt")}]
    return []


_LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_run(art: rc.Artifact, index: int = 0) -> ReplayRun:
    """Run `index` of the file (0 is the first sampling run: the one that started from noise)."""
    entries = _entries(art.metadata)
    if not entries:
        raise NodeInputError(f"{art.name} holds no sampling run (it was saved without any sampler upstream)")
    if not 0 <= index < len(entries):
        raise NodeInputError(f"{art.name} holds {len(entries)} sampling run(s); run {index} does not exist "
                             f"(use 0 to {len(entries) - 1})")
    entry = entries[index]
    noise = art.load_tensor(entry["noise"], framework="torch")
    sigmas = art.load_tensor(entry["sigmas"], framework="torch") if entry.get("sigmas") else None
    if entry.get("latent_in"):
        latent_in = art.load_tensor(entry["latent_in"], framework="torch")
    else:
        # The sampler started from an empty latent: zeros shaped like the noise (which was drawn for that very
        # latent), as EmptyLatentImage. Shape and dtype come from the file, so they are checked, not trusted.
        if entry.get("latent_shape", list(noise.shape)) != list(noise.shape):
            raise NodeInputError(f"{art.name}: run {index} records a latent shape that differs from its noise")
        dtype = _LATENT_DTYPES.get(entry.get("latent_dtype") or "float32")
        if dtype is None:
            raise NodeInputError(f"{art.name}: run {index} records an unknown latent dtype")
        latent_in = torch.zeros_like(noise, dtype=dtype)
    mask = entry.get("denoise_mask_tensor")
    steps = entry.get("steps")
    if not isinstance(steps, int):
        steps = int(sigmas.shape[-1]) - 1 if sigmas is not None else 0
    cfg = entry.get("cfg")
    return ReplayRun(
        index=index,
        source=entry.get("source", "captured"),
        noise=noise,
        sigmas=sigmas,
        seed=entry.get("seed"),
        latent_in=latent_in,
        denoise_mask=art.load_tensor(mask, framework="torch") if mask else None,
        sampler=entry.get("sampler") or "",
        sampler_options=entry.get("sampler_options") or {},
        inpaint_options=entry.get("inpaint_options") or {},
        cfg=float(cfg) if isinstance(cfg, (int, float)) else 1.0,
        steps=steps,
        sampler_name=entry.get("sampler_name") or entry.get("sampler") or "",
        scheduler=entry.get("scheduler") or "",
        positive=entry.get("positive") or "",
        negative=entry.get("negative") or "",
        output_sha256=entry.get("output_sha256"),
    )


def image_tensor(art: rc.Artifact) -> torch.Tensor:
    """The stored image as a ComfyUI IMAGE: [1, H, W, 3] float32 in 0..1."""
    pixels = np.asarray(art.image().convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


def stored_latent(art: rc.Artifact) -> dict | None:
    """The sampled LATENT saved with the image, as ComfyUI's LATENT dict, or None if none was saved."""
    if "latent" not in art.tensor_names:
        return None
    latent = {"samples": art.load_tensor("latent", framework="torch")}
    batch_index = art.metadata.get("host", {}).get("comfyui", {}).get("latent_batch_index")
    if batch_index is not None:
        latent["batch_index"] = batch_index
    return latent


def drift_report(art: rc.Artifact) -> str:
    """The environment drift report between the file and this process, logged and returned as text."""
    report = rc.drift(art.environment)
    text = str(report)
    level = logging.WARNING if report.can_change_output else logging.INFO
    log.log(level, "raiiaf: replaying %s\n%s", art.name, text)
    return text


def compare_output(output: torch.Tensor, run: ReplayRun, art: rc.Artifact) -> tuple[bool | None, str]:
    """Is a resampled latent bit-identical to what the stored run produced? (None: the file cannot tell.)"""
    if run.output_sha256 is not None:
        same = rc.tensor_sha256(output.detach().cpu()) == run.output_sha256
        return same, ("bit-identical to the stored run" if same else "DIFFERS from the stored run (sha256)")
    latent = stored_latent(art)
    if latent is not None and tuple(latent["samples"].shape) == tuple(output.shape):
        stored = latent["samples"]
        same = torch.equal(output.detach().cpu(), stored)
        if same:
            return True, "bit-identical to the stored latent"
        diff = (output.detach().cpu().double() - stored.double()).abs().max().item()
        return False, f"DIFFERS from the stored latent (max abs difference {diff:.3g})"
    return None, "the file holds no output hash or latent to compare with"
