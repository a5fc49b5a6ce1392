"""CapturedCall: everything recorded for one pipeline call, and how it is written (one file per image)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import raiiaf_core as rc
from raiiaf_core.recipe import STORAGE as NOISE_STORAGE
from raiiaf_core.recipe import compact as compact_noise

from . import _encode, _output, _pipeline
from .errors import CaptureError
from .record import (
    Call,
    DiffusersRecord,
    FinalLatents,
    Generators,
    Noise,
    Output,
    Pipeline,
    RNGTape,
    StepLatents,
)

logger = logging.getLogger(__name__)

# What a capture writes per image: the .raiiaf, its shareable PNG (raiiaf_core/png_share.py), or both.
OUTPUTS = ("raiiaf", "png", "both")
# torch.Generator().initial_seed() of a generator nobody seeded: not a seed the user chose.
_UNSEEDED = 67280421310721


def _version() -> str:
    from . import __version__

    return __version__


def _noise_schedule(config: dict) -> str | None:
    for flag, name in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                       ("use_beta_sigmas", "beta")):
        if config.get(flag):
            return name
    return None


def _pick(value, index: int, per_prompt: int):
    """The prompt for image `index`: prompts repeat num_images_per_prompt times, in order."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return value[min(index // max(per_prompt, 1), len(value) - 1)]
    return None


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class CapturedCall:
    """Everything recorded for one pipeline call; one file per image of its batch."""

    images: list  # PIL images, one per batch item
    outputs: list | None  # the raw np/pt output per item when output_type was not "pil"
    noise: torch.Tensor | None  # the initial noise as drawn (whole batch, on CPU)
    final_latents: torch.Tensor | None  # latents after the last step (whole batch, on CPU); None without a step callback
    final_latents_sha256: str | None
    shared_tensors: dict[str, Any]  # tensors stored in every file of this call
    record: DiffusersRecord  # metadata["host"]["diffusers"] of image 0
    image_outputs: list  # the record's per-image Output
    common: dict  # top-level metadata shared by every file
    per_image: list = field(default_factory=list)  # top-level metadata that differs per image

    @property
    def batch_size(self) -> int:
        return len(self.images)

    @property
    def not_replayable(self) -> str | None:
        return self.record.not_replayable

    @property
    def warnings(self) -> list[str]:
        return self.record.rng.warnings()

    @classmethod
    def build(cls, call, pils: list, raw: list | None) -> CapturedCall:
        pipe, capture, tape = call.pipe, call.capture, call.tape
        problem = call.problem
        noise, source, draw, feed, preparation, why = call.noise_and_feed() if problem is None else (None,) * 6
        problem = problem or why
        if noise is not None and noise.shape[0] != len(pils):
            problem = f"the pipeline returned {len(pils)} images for a noise batch of {noise.shape[0]}"
        if problem is None and call.has_callback and call.final is None:
            problem = f"{type(pipe).__name__} ran no denoising step"
        tensors: dict[str, Any] = {}
        noise_record = None
        if noise is not None and problem is None:
            device = str(noise.device)
            noise = noise.detach().cpu()
            tensors["noise"] = noise
            noise_record = Noise("noise", source, draw, feed, preparation, tuple(noise.shape), _dtype_name(noise.dtype),
                                 device, call.sampled_shape)
        tensors.update(call.arg_tensors)

        def state(prefix: str):
            def store(i: int, moment: str, value: torch.Tensor) -> str:
                name = f"rng.{prefix}.{i}.{moment}"
                tensors[name] = value
                return name
            return store

        noise_drawn = noise_record is not None and noise_record.source == "randn_tensor"
        gen_state = state("generator")
        generators = Generators(
            call.gen_kind, tuple(str(g.device) for g in call.generators),
            tuple(None if g.initial_seed() == _UNSEEDED else int(g.initial_seed()) for g in call.generators),
            tuple(gen_state(i, "at_start", s.at_start) for i, s in enumerate(tape.gen_streams)),
            tuple(gen_state(i, "after_noise", s.after_noise) if noise_drawn and s.after_noise is not None else None
                  for i, s in enumerate(tape.gen_streams)))
        global_state = state("global")
        global_rng = tape.global_records(lambda i, moment, value: global_state(i, moment, value)
                                         if moment == "at_start" or noise_drawn else None)
        rng = RNGTape(generators, global_rng, tuple(tape.draws), tuple(tape.untracked))

        final = final_sha = final_record = None
        if call.final is not None:
            final = call.final.detach().cpu()
            final_sha = rc.tensor_sha256(final)
            if capture.store_final_latents:
                tensors["final_latents"] = final
            final_record = FinalLatents(final_sha, tuple(final.shape), _dtype_name(final.dtype),
                                        "final_latents" if capture.store_final_latents else None)
        step_names = {}
        for step, t in sorted(call.step_latents.items()):
            tensors[f"step_latents.{step}"] = t.detach().cpu()
            step_names[str(step)] = f"step_latents.{step}"

        components = _pipeline.components(pipe)
        training = sorted(n for n, c in components.items() if c and c.get("training"))
        if training:
            logger.warning("raiiaf_diffusers: components in train() mode (%s): dropout uses the global RNG, "
                           "call .eval() for reproducible images", ", ".join(training))
        for line in rng.warnings():
            logger.info("raiiaf_diffusers: %s", line)
        if problem is not None:
            logger.warning("raiiaf_diffusers: %s; the file is written but says it cannot be replayed", problem)
        import diffusers

        image_outputs = [Output(call.output_type, "output" if raw is not None else None, _output.pixels_sha256(img))
                         for img in pils]
        record = DiffusersRecord(
            diffusers_version=diffusers.__version__,
            pipeline=Pipeline(type(pipe).__name__, type(pipe).__module__, call.modular),
            components=components,
            training_components=tuple(training),
            scheduler=call.scheduler,
            call=Call(call.encoded, tuple(call.explicit), str(call.device),
                      _dtype_name(noise.dtype) if noise is not None else None, call.output_type),
            noise=noise_record, rng=rng, output=image_outputs[0],
            final_latents=final_record,
            step_latents=StepLatents(capture.step_latents_every, step_names) if capture.step_latents_every else None,
            steps_run=call.steps if call.has_callback else None,
            not_replayable=problem,
        )
        common, per_image = cls._metadata(call, pils, noise_record is not None)
        return cls(images=pils, outputs=raw, noise=noise if noise_record is not None else None, final_latents=final,
                   final_latents_sha256=final_sha, shared_tensors=tensors, record=record, image_outputs=image_outputs,
                   common=common, per_image=per_image)

    @staticmethod
    def _metadata(call, pils: list, has_noise: bool) -> tuple[dict, list]:
        args = call.arguments
        common: dict[str, Any] = {
            "generator": {"name": "raiiaf_diffusers", "version": _version()},
            "sampler": call.scheduler.class_name,
            "sampler_settings": _encode.plain(call.scheduler_config),
        }
        if call.has_callback:
            common["steps"] = call.steps
        if has_noise:
            common["noise"] = {"tensor": "noise", "source": "captured"}
        model = _pipeline.model(call.pipe)
        if model:
            common["model"] = model
        schedule = _noise_schedule(call.scheduler_config)
        if schedule:
            common["scheduler"] = schedule
        for key in ("guidance_scale", "strength"):
            v = args.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                common[key] = float(v)
        capture = call.capture
        if capture.tags:
            common["tags"] = capture.tags
        if capture.notes:
            common["notes"] = capture.notes
        if capture.extra:
            common["extra"] = capture.extra

        seeds = [None if g.initial_seed() == _UNSEEDED else int(g.initial_seed()) for g in call.generators]
        per_prompt = args.get("num_images_per_prompt") or 1
        per_image = []
        for i, img in enumerate(pils):
            md: dict[str, Any] = {"batch": {"index": i, "size": len(pils)}, "width": img.size[0], "height": img.size[1]}
            for key in ("prompt", "negative_prompt"):
                v = _pick(args.get(key), i, per_prompt if isinstance(per_prompt, int) else 1)
                if v is not None:
                    md[key] = v
            md["seed"] = seeds[i] if call.gen_kind == "list" and i < len(seeds) else (seeds[0] if seeds else None)
            per_image.append(md)
        return common, per_image

    def record_for(self, index: int) -> DiffusersRecord:
        return dataclasses.replace(self.record, output=self.image_outputs[index])

    def metadata_for(self, index: int) -> dict:
        md = {**self.common, **self.per_image[index]}
        md["host"] = {"diffusers": self.record_for(index).to_json()}
        return md

    def tensors_for(self, index: int, shared: dict | None = None) -> dict:
        tensors = dict(self.shared_tensors if shared is None else shared)
        if self.outputs is not None:
            tensors["output"] = _output.raw_tensor(self.outputs[index])
        return tensors

    def paths_for(self, path: str | os.PathLike, call: int = 0) -> list[Path]:
        template = os.fspath(path)
        if os.path.isdir(template):
            template = os.path.join(template, "{call:05d}-{index}.raiiaf")
        elif self.batch_size > 1 and "{index" not in template:
            p = Path(template)
            template = str(p.with_name(p.stem + "-{index}" + p.suffix))
        out = []
        for i, md in enumerate(self.per_image):
            try:
                out.append(Path(template.format(index=i, call=call, seed=md.get("seed"))))
            except (KeyError, IndexError, ValueError) as exc:
                raise CaptureError(f"path template {os.fspath(path)!r}: {exc!r}; fields are {{index}}, {{call}}, {{seed}}") from None
        if len(set(out)) != len(out):
            raise CaptureError(f"path template {os.fspath(path)!r} gives the same file name to several images")
        return out

    def write(self, path: str | os.PathLike, *, call: int = 0, exclusive: bool = False,
              output: str = "raiiaf", noise_storage: str = "raw") -> list[Path]:
        """Write one file per image (`output` "png": its shareable PNG instead, the path with the suffix .png;
        "both": the two); returns the paths. Environment is captured once for the batch. `noise_storage`
        "recipe": noise drawn by CPU generators is stored as its checked recipe (raiiaf_core/recipe.py) when
        drawing it from the recorded seeds or generator states gives it back bit for bit; else raw."""
        if output not in OUTPUTS:
            raise CaptureError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, not {output!r}")
        if noise_storage not in NOISE_STORAGE:
            raise CaptureError(f"noise_storage must be one of {', '.join(map(repr, NOISE_STORAGE))}, not "
                               f"{noise_storage!r}")
        shared = self.shared_tensors
        if noise_storage == "recipe":
            shared, kept = compact_noise(shared, self.metadata_for(0))
            for name, why in kept.items():
                logger.warning("raiiaf_diffusers: %s stored raw: %s", name, why)
        paths = self.paths_for(path, call)
        if output == "both" and any(p.suffix == ".png" for p in paths):
            raise CaptureError(f"path {os.fspath(path)!r} ends in .png: with output='both' the .raiiaf and its PNG "
                               "would get the same name")
        environment = rc.capture_environment()
        written = []
        for i, p in enumerate(paths):
            if p.parent and not p.parent.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
            contents = dict(image=_output.png_bytes(self.images[i]), tensors=self.tensors_for(i, shared),
                            metadata=self.metadata_for(i), environment=environment, exclusive=exclusive)
            if output != "png":
                written.append(Path(rc.write(p, **contents)))
            if output != "raiiaf":
                written.append(Path(rc.write(p.with_suffix(".png"), png=True, **contents)))
        return written


__all__ = ["CapturedCall"]
