"""Tiny random-weight diffusers pipelines that build offline in well under a second.

They exist for the demo, the tests and the benchmark: real pipeline classes, real schedulers, real
tokenizers, only the networks are a few thousand parameters with seeded random weights. The layer
configurations follow diffusers' own ``get_dummy_components`` fast tests; the tokenizers, which those
tests download from the Hub, are built from vocabularies written here, so nothing touches the network.

Every builder returns the same weights in every process (seeded construction inside
``torch.random.fork_rng``, so the caller's global RNG is left alone) and puts every module in
``eval()`` mode. One module per family; this package assembles their kinds into one table:

    pipe = tiny.build("sd_img2img")
    out = pipe("a cat", num_inference_steps=3, generator=torch.Generator().manual_seed(0),
               **tiny.CALL_ARGS["sd_img2img"])

docs/DIFFUSERS_PIPELINES.md lists, per pipeline class, how it draws its random numbers.
"""

from __future__ import annotations

from typing import Callable

from . import flux, flux2, lumina2, pixart, qwen, sana, sd, sd3, wan, zimage
from ._common import MODEL_ID_PREFIX, input_image, input_mask
from ._text import clip_tokenizer, t5_tokenizer
from .flux import tiny_flux
from .sd import tiny_sd, tiny_sdxl
from .sd3 import tiny_sd3

__all__ = ["build", "scheduler", "SCHEDULERS", "tiny_sd", "tiny_sdxl", "tiny_flux", "tiny_sd3", "clip_tokenizer",
           "t5_tokenizer", "input_image", "input_mask", "KINDS", "CALL_ARGS", "MODEL_ID_PREFIX"]

_FAMILIES = (sd, sd3, flux, flux2, pixart, sana, lumina2, qwen, zimage, wan)

KINDS: dict[str, Callable[[], object]] = {kind: maker for family in _FAMILIES for kind, maker in family.KINDS.items()}

# Call arguments that fit each tiny pipeline: sizes (the defaults are needlessly large for it), and for
# image-to-image and inpainting kinds a deterministic input image and mask. The caller adds the prompt,
# the generator and the step count; every kind runs with 2 to 4 steps (img2img strengths leave at
# least one denoising step at 2).
CALL_ARGS: dict[str, dict] = {kind: args for family in _FAMILIES for kind, args in family.CALL_ARGS.items()}


def build(kind: str):
    """Build a tiny pipeline by name (a key of ``KINDS``; a "raiiaf-tiny/" prefix is accepted)."""
    name = kind[len(MODEL_ID_PREFIX) :] if kind.startswith(MODEL_ID_PREFIX) else kind
    try:
        maker = KINDS[name]
    except KeyError:
        raise ValueError(f"unknown tiny pipeline {kind!r}; choose one of {sorted(KINDS)}") from None
    return maker()


# The samplers covered by the tests, as diffusers users name them; each is built from the
# pipeline's current scheduler config, as users switch schedulers.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),  # needs torchsde; seeds its Brownian tree from the global RNG
}


def scheduler(name: str, config):
    """A scheduler from SCHEDULERS, configured from ``config`` (e.g. ``pipe.scheduler.config``)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)
