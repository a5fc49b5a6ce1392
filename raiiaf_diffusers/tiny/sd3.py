"""Stable Diffusion 3."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import clip_text_config, clip_tokenizer, t5_encoder, t5_tokenizer


def tiny_sd3():
    """StableDiffusion3Pipeline (1 transformer block, two CLIP + T5), FlowMatch Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: SD3Transformer2DModel(
                sample_size=32,
                patch_size=1,
                in_channels=4,
                num_layers=1,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,
                joint_attention_dim=32,
                pooled_projection_dim=64,
                out_channels=4,
            )
        )
        config = clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_2 = seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_3 = seeded(t5_encoder)
        vae = seeded(
            lambda: AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            )
        )
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
    return finish(pipe, "sd3")


KINDS = {"sd3": tiny_sd3}

CALL_ARGS = {
    "sd3": {"height": 32, "width": 32, "max_sequence_length": 16},
}
