"""Lumina-Image 2.0: a unified next-DiT with a Gemma2 text encoder (a system prompt is prepended)."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import gemma2_config, gemma_tokenizer


def tiny_lumina2():
    """Lumina2Pipeline: 2-layer Lumina2 transformer, 4-block VAE (/8, which the pipeline assumes), 2-layer Gemma2."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Model

    tokenizer = gemma_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: Lumina2Transformer2DModel(
                sample_size=4,
                patch_size=2,
                in_channels=4,
                hidden_size=8,
                num_layers=2,
                num_attention_heads=1,
                num_kv_heads=1,
                multiple_of=16,
                ffn_dim_multiplier=None,
                norm_eps=1e-5,
                scaling_factor=1.0,
                axes_dim_rope=[4, 2, 2],
                cap_feat_dim=8,
            )
        )
        # Lumina2Pipeline hard-codes vae_scale_factor = 8, so the VAE downsamples by 8 (four blocks).
        vae = seeded(
            lambda: AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=(4, 4, 4, 4),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            )
        )
        config = gemma2_config(tokenizer, head_dim=4, hidden_size=8, intermediate_size=8, num_attention_heads=2,
                               num_hidden_layers=2, num_key_value_heads=2, sliding_window=2)
        text_encoder = seeded(lambda: Gemma2Model(config))
    pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                           text_encoder=text_encoder, tokenizer=tokenizer)
    return finish(pipe, "lumina2")


KINDS = {"lumina2": tiny_lumina2}

CALL_ARGS = {"lumina2": {"height": 32, "width": 32}}
