"""Stable Diffusion 3 and 3.5 (the 3.5 Medium layout: MMDiT-X dual-attention blocks, RMS-normalised q/k)."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import clip_text_config, clip_tokenizer, t5_encoder, t5_tokenizer
from .flux import one_block_vae


def _sd3_pipeline(name: str, **transformer_extra):
    """StableDiffusion3Pipeline (transformer ``transformer_extra``, two CLIP + T5), FlowMatch Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: SD3Transformer2DModel(
                sample_size=32,
                patch_size=1,
                in_channels=4,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,
                joint_attention_dim=32,
                pooled_projection_dim=64,
                out_channels=4,
                **transformer_extra,
            )
        )
        config = clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_2 = seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_3 = seeded(t5_encoder)
        vae = seeded(lambda: one_block_vae(latent_channels=4))
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=text_encoder_3,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        tokenizer_3=t5_tokenizer(),
        transformer=transformer,
        vae=vae,
    )
    return finish(pipe, name)


def tiny_sd3():
    """StableDiffusion3Pipeline with one transformer block."""
    return _sd3_pipeline("sd3", num_layers=1)


def tiny_sd35():
    """StableDiffusion3Pipeline with two blocks, the first with dual attention, q/k RMSNorm (as SD3.5 Medium)."""
    return _sd3_pipeline("sd35", num_layers=2, dual_attention_layers=(0,), qk_norm="rms_norm")


KINDS = {"sd3": tiny_sd3, "sd35": tiny_sd35}

CALL_ARGS = {
    "sd3": {"height": 32, "width": 32, "max_sequence_length": 16},
    "sd35": {"height": 32, "width": 32, "max_sequence_length": 16},
}
