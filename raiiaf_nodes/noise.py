"""Initial noise: rebuilding ComfyUI's KSampler noise from a seed, and feeding stored noise back as a NOISE.

ComfyUI's KSampler seeds the CPU generator with the seed and draws float32 noise of the latent's shape on
the CPU; when the latent carries a `batch_index` (a latent picked out of a larger batch), it draws one
noise per index from 0 up to the largest index, in order, and keeps the ones asked for. `reconstruct_noise`
follows those rules with a private generator, so rebuilding noise never disturbs the global RNG that the
rest of ComfyUI draws from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from raiiaf_core.recipe import NoiseRecipe, draw

from .errors import NoiseShapeError


def reconstruct_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The noise KSampler draws for a latent of `shape` with `seed` (and the latent's `batch_index`, if any):
    the draw a noise recipe of a file describes (raiiaf_core/recipe.py holds the one implementation)."""
    how = NoiseRecipe(tuple(int(s) for s in shape), str(dtype).removeprefix("torch."), (("seed", int(seed)),),
                      None if batch_index is None else tuple(int(i) for i in batch_index), "", "")
    return draw(how, {}, "reconstructed noise")


class StoredNoise:
    """A ComfyUI NOISE object that hands out noise read from a .raiiaf file.

    Samplers ask a NOISE for `generate_noise(latent)` and also read `.seed`: ancestral and SDE samplers seed
    their per-step noise with it, so the original seed travels with the stored noise.
    """

    def __init__(self, noise: torch.Tensor, seed: int | None):
        self.noise = noise
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise NoiseShapeError(
                f"the stored noise has shape {list(self.noise.shape)} but the latent to sample has shape "
                f"{list(samples.shape)}; use the latent from the Raiiaf Load Replay node (or an empty latent of "
                "the same batch size, width, height and model type)")
        return self.noise.clone()
