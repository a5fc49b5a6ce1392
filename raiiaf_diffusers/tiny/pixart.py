"""PixArt-α and PixArt-Σ: one T5 text encoder, a DiT; neither pipeline has ``callback_on_step_end``."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import t5_encoder, t5_tokenizer


def _pixart_parts() -> dict:
    """2-layer PixArt transformer (patch 2, learned sigma: 8 output channels), VAE /1, T5, DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: PixArtTransformer2DModel(
                sample_size=8,
                num_layers=2,
                patch_size=2,
                attention_head_dim=8,
                num_attention_heads=3,
                caption_channels=32,
                in_channels=4,
                cross_attention_dim=24,
                out_channels=8,
                attention_bias=True,
                activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000,
                norm_type="ada_norm_single",
                norm_elementwise_affine=False,
                norm_eps=1e-6,
            )
        )
        vae = seeded(AutoencoderKL)
        text_encoder = seeded(t5_encoder)
    return dict(transformer=transformer, vae=vae, scheduler=DDIMScheduler(), text_encoder=text_encoder,
                tokenizer=t5_tokenizer())


def tiny_pixart_alpha():
    """PixArtAlphaPipeline."""
    from diffusers import PixArtAlphaPipeline

    return finish(PixArtAlphaPipeline(**_pixart_parts()), "pixart_alpha")


def tiny_pixart_sigma():
    """PixArtSigmaPipeline."""
    from diffusers import PixArtSigmaPipeline

    return finish(PixArtSigmaPipeline(**_pixart_parts()), "pixart_sigma")


KINDS = {"pixart_alpha": tiny_pixart_alpha, "pixart_sigma": tiny_pixart_sigma}

# Resolution binning would resize to the nearest trained aspect ratio (256 px and up); the tiny
# transformer has no bins, so it is off. Caption cleaning needs beautifulsoup4 and ftfy, and falls back
# to no cleaning (with a printed warning) without them.
_ARGS = {"height": 32, "width": 32, "max_sequence_length": 16, "use_resolution_binning": False, "clean_caption": False}
CALL_ARGS = {"pixart_alpha": dict(_ARGS), "pixart_sigma": dict(_ARGS)}
