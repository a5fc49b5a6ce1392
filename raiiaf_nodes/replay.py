"""Reading a .raiiaf back for ComfyUI: one sampling run's noise, sigmas, seed and settings, the image, the
stored latent, whether a resampled latent equals what the file holds, and how the current environment
differs from the one that made the file.

Every value is read through `RunRecord.from_json` or the checks here before it is used, so a file edited with
valid checksums gets a `RecordError` naming the file and the field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

import raiiaf_core as rc

from raiiaf_core.report import escape

from . import launch
from .errors import NodeInputError, RecordError
from .record import CAPTURED, FAILED, FLOAT_DTYPES, MAX_BATCH_INDEX, MAX_STEPS, RECONSTRUCTED, RunRecord

log = logging.getLogger(__name__)

MAX_BATCH = 1 << 16
# KSampler stretches steps by 1/denoise before keeping the last ones; bound what a file can make it compute.
MAX_STRETCHED_STEPS = 100 * MAX_STEPS


@dataclass
class ReplayRun:
    """Everything needed to run one stored sampling run again, checked against the file."""

    index: int
    count: int  # runs in the file
    record: RunRecord
    noise: torch.Tensor
    sigmas: torch.Tensor | None
    latent_in: torch.Tensor | None  # None: the run did not start from an empty latent and the file lacks its start
    denoise_mask: torch.Tensor | None
    batch_index: int = 0
    batch_size: int = 1

    @property
    def seed(self) -> int | None:
        return self.record.seed

    @property
    def cfg(self) -> float:
        return float(self.record.cfg) if self.record.cfg is not None else 1.0

    @property
    def steps(self) -> int:
        return self.record.steps or 0

    @property
    def sampler_name(self) -> str:
        return self.record.sampler_name or self.record.sampler


def _entries(meta: dict, name: str) -> tuple[list, str]:
    """The file's run records, and how errors name them."""
    runs = meta.get("runs")
    if runs is not None and not isinstance(runs, list):
        raise RecordError(f"{name}: field 'runs' is not a list")
    if runs:
        return runs, "run"
    # Files from other hosts (diffusers, the CLI) have no runs list, only the top-level noise and settings.
    noise = meta.get("noise")
    if noise is None:
        return [], "run"
    if not isinstance(noise, dict) or not isinstance(noise.get("tensor"), str):
        raise RecordError(f"{name}: field 'noise' is not an object naming a tensor")
    return [{"source": noise.get("source", CAPTURED), "noise": noise["tensor"], "seed": meta.get("seed"),
             "sampler": meta.get("sampler"), "cfg": meta.get("guidance_scale"), "steps": meta.get("steps"),
             "scheduler": meta.get("scheduler"), "positive": meta.get("prompt"),
             "negative": meta.get("negative_prompt")}], "top-level settings as run"


def batch_of(meta: dict, name: str) -> tuple[int, int]:
    """(index, size) of the file's image in its batch."""
    batch = meta.get("batch")
    if batch is None:
        return 0, 1
    index, size = (batch.get("index"), batch.get("size")) if isinstance(batch, dict) else (None, None)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, size)) \
            or not 1 <= size <= MAX_BATCH or not 0 <= index < size:
        raise RecordError(f"{name}: field 'batch' is {str(batch)[:80]}; expected {{index, size}} with "
                          f"0 <= index < size <= {MAX_BATCH}")
    return index, size


def _tensor_infos(art: rc.Artifact) -> dict:
    return {name: art.tensor_info(name) for name in art.tensor_names}


def load_run(art: rc.Artifact, index: int = 0) -> ReplayRun:
    """Run `index` of the file (0 is the first sampling run: the one that started from noise)."""
    meta = art.metadata
    entries, label = _entries(meta, art.name)
    if not entries:
        raise NodeInputError(f"{art.name} holds no sampling run (it was saved without any sampler upstream)")
    if not 0 <= index < len(entries):
        raise NodeInputError(f"{art.name} holds {len(entries)} sampling run(s); run {index} does not exist "
                             f"(use 0 to {len(entries) - 1})")
    where = f"{art.name}: {label} {index}"
    record = RunRecord.from_json(entries[index], where=where, tensors=_tensor_infos(art))
    if record.source == FAILED:
        raise NodeInputError(f"{where} was not captured when the file was saved ({record.error}), so it cannot be "
                             "replayed")
    noise = art.load_tensor(record.noise, framework="torch")
    sigmas = None
    if record.sigmas is not None:
        sigmas = art.load_tensor(record.sigmas, framework="torch")
        if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
            raise RecordError(f"{where} field 'sigmas' names a tensor with negative or non-finite sigmas")
    if record.latent_in is not None:
        latent_in = art.load_tensor(record.latent_in, framework="torch")
    elif record.empty_start:
        # The sampler started from an empty latent: zeros shaped like its noise, in the recorded dtype.
        latent_in = torch.zeros(noise.shape, dtype=getattr(torch, record.latent_dtype))
    else:
        latent_in = None
    mask = art.load_tensor(record.denoise_mask_tensor, framework="torch") if record.denoise_mask_tensor else None
    batch_index, batch_size = batch_of(meta, art.name)
    return ReplayRun(index=index, count=len(entries), record=record, noise=noise, sigmas=sigmas, latent_in=latent_in,
                     denoise_mask=mask, batch_index=batch_index, batch_size=batch_size)


def rebuilt_sigma_settings(run: ReplayRun, name: str) -> dict:
    """The KSampler settings that give the sigmas of a run whose noise was rebuilt (its file stores no sigmas).

    Only a plain KSampler's sigmas follow from its widgets alone; other samplers got theirs from other nodes.
    """
    record = run.record
    if record.source != RECONSTRUCTED or record.class_type != "KSampler":
        raise NodeInputError(f"{name} holds no sigmas for run {run.index} (its noise was rebuilt without Raiiaf "
                             "Capture Sampling and it was not made by a KSampler), so it cannot be resampled "
                             "exactly; use Raiiaf Load Replay with a scheduler node instead")
    missing = [k for k in ("sampler_name", "scheduler", "steps") if getattr(record, k) is None]
    if missing:
        raise NodeInputError(f"{name}: run {run.index} does not record its {', '.join(missing)}, so its sigmas "
                             "cannot be rebuilt")
    denoise = 1.0 if record.denoise is None else record.denoise
    if 0 < denoise < 1 and record.steps / denoise > MAX_STRETCHED_STEPS:
        raise RecordError(f"{name}: run {run.index} field 'denoise' is {denoise} with {record.steps} steps, which "
                          f"would make the scheduler compute over {MAX_STRETCHED_STEPS} steps")
    return {"steps": record.steps, "sampler_name": record.sampler_name, "scheduler": record.scheduler,
            "denoise": denoise}


def image_tensor(art: rc.Artifact) -> torch.Tensor:
    """The stored image as a ComfyUI IMAGE: [1, H, W, 3] float32 in 0..1."""
    pixels = np.asarray(art.image().convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


def _comfyui_host(meta: dict, name: str) -> dict:
    host = meta.get("host", {})
    comfy = host.get("comfyui", {}) if isinstance(host, dict) else None
    if not isinstance(comfy, dict):
        raise RecordError(f"{name}: field 'host.comfyui' is not an object")
    return comfy


def stored_latent(art: rc.Artifact) -> dict | None:
    """The sampled LATENT saved with the image, as ComfyUI's LATENT dict, or None if none was saved."""
    if "latent" not in art.tensor_names:
        return None
    info = art.tensor_info("latent")
    if info.dtype not in FLOAT_DTYPES or not 3 <= len(info.shape) <= 5:
        raise RecordError(f"{art.name}: the tensor 'latent' is {info.dtype} of rank {len(info.shape)}; expected a "
                          "floating-point latent of rank 3 to 5")
    latent = {"samples": art.load_tensor("latent", framework="torch")}
    batch_index = _comfyui_host(art.metadata, art.name).get("latent_batch_index")
    if batch_index is not None:
        if (not isinstance(batch_index, list) or len(batch_index) != info.shape[0] or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_BATCH_INDEX for i in batch_index)):
            raise RecordError(f"{art.name}: field 'host.comfyui.latent_batch_index' is not one index below "
                              f"{MAX_BATCH_INDEX} per latent")
        latent["batch_index"] = batch_index
    return latent


def drift_report(art: rc.Artifact, *, current: dict | None = None, launch_now: dict | None = None,
                 remedies: tuple = (), identical: bool | None = None) -> str:
    """The environment drift report between the file and this process (`current`: the environment a replay ran
    in; default: now), with what to do about ComfyUI launch settings that differ and any other `remedies`,
    logged and returned as text. When the replay differs (`identical` False) and nothing recorded explains it,
    the report says so instead of "identical"."""
    report = rc.drift(art.environment, current)
    stored = _comfyui_host(art.metadata, art.name).get("launch")
    fixes = [*remedies, *launch.remedies(stored, launch_now)]
    lines = [f"remedy: {escape(r)}" for r in fixes]
    lines += report.lines(unexplained=identical is False and not fixes and not report.explains_a_difference)
    text = "\n".join(lines)
    level = logging.WARNING if report.can_change_output or fixes else logging.INFO
    log.log(level, "raiiaf: replaying %s\n%s", art.name, text)
    return text


def model_remedies(recorded: dict, current: dict) -> list:
    """The run's model weight and compute dtypes against the MODEL given to the replay."""
    out = []
    for key, what in (("dtype", "weights"), ("manual_cast_dtype", "compute (manual cast) dtype")):
        if key in recorded and key in current and recorded[key] != current[key]:
            out.append(f"the original model's {what} were {escape(str(recorded[key]))}, this one's "
                       f"{escape(str(current[key]))}: start ComfyUI with the same dtype flags (--force-fp16, "
                       "--bf16-unet, --fp32-unet ...) or load the model as the original did")
    return out


def _difference(output: torch.Tensor, stored: torch.Tensor) -> str:
    if output.shape != stored.shape:
        return f"shape {list(output.shape)} against {list(stored.shape)}"
    if output.dtype != stored.dtype:
        return f"dtype {str(output.dtype).replace('torch.', '')} against {str(stored.dtype).replace('torch.', '')}"
    diff = (output.double() - stored.double()).abs().max().item()
    return f"max abs difference {diff:.3g}" if math.isfinite(diff) else "non-finite values differ"


def compare_output(output: torch.Tensor, run: ReplayRun, art: rc.Artifact) -> tuple[bool | None, str]:
    """Is a resampled latent bit-identical to what the file holds?

    True or False only after comparing with the stored `latent` tensor itself; the hashes a record states
    about its own output are never taken as proof. None: the file holds nothing this run can be checked against.
    """
    output = output.detach().cpu()
    claimed = run.record.output_sha256
    latent = stored_latent(art)
    if latent is None:
        hint = ""
        if claimed is not None:
            hint = (" (the output matches the hash the record states, which proves nothing by itself)"
                    if rc.tensor_sha256(output) == claimed else " (nor does it match the hash the record states)")
        return None, ("cannot be checked: the file holds no sampled latent" + hint +
                      "; connect the sampler's LATENT to Raiiaf Save so replays can be checked")
    stored = latent["samples"]
    stored_hash = rc.tensor_sha256(stored)
    if output.dtype == stored.dtype and output.shape == stored.shape and torch.equal(output, stored):
        note = ""
        if claimed is not None and claimed != stored_hash:
            note = "; but the record's own output_sha256 disagrees with the stored latent (record and payload differ)"
        return True, "bit-identical to the stored latent" + note
    # Which run made the stored latent, by the hash of the latent the file really holds.
    makers = [i for i, entry in enumerate(_entries(art.metadata, art.name)[0])
              if isinstance(entry, dict) and entry.get("output_sha256") == stored_hash]
    if run.index in makers:
        return False, f"DIFFERS from the stored latent ({_difference(output, stored)})"
    if makers:
        return None, (f"cannot be checked: the stored latent is the output of run {makers[-1]}; replay that run "
                      "to compare")
    if claimed is not None:
        return None, ("cannot be checked: the record's output_sha256 disagrees with the stored latent, so the file "
                      f"does not say which latent this run made (the output differs from the stored latent: "
                      f"{_difference(output, stored)})")
    return None, (f"cannot be checked: the output differs from the stored latent ({_difference(output, stored)}), "
                  "but the record does not say this run made it")
