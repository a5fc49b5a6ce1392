"""Sana: a linear-attention DiT over the deep-compression autoencoder (DC-AE), Gemma2 text encoder."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import gemma2_config, gemma_tokenizer


def tiny_sana():
    """SanaPipeline: 1-layer Sana transformer, 2-block DC-AE (/2), 1-layer 8-wide Gemma2, FlowMatch (shift 7)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Model

    tokenizer = gemma_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: SanaTransformer2DModel(
                patch_size=1,
                in_channels=4,
                out_channels=4,
                num_layers=1,
                num_attention_heads=2,
                attention_head_dim=4,
                num_cross_attention_heads=2,
                cross_attention_head_dim=4,
                cross_attention_dim=8,
                caption_channels=8,
                sample_size=32,
            )
        )
        vae = seeded(
            lambda: AutoencoderDC(
                in_channels=3,
                latent_channels=4,
                attention_head_dim=2,
                encoder_block_types=("ResBlock", "EfficientViTBlock"),
                decoder_block_types=("ResBlock", "EfficientViTBlock"),
                encoder_block_out_channels=(8, 8),
                decoder_block_out_channels=(8, 8),
                encoder_qkv_multiscales=((), (5,)),
                decoder_qkv_multiscales=((), (5,)),
                encoder_layers_per_block=(1, 1),
                decoder_layers_per_block=[1, 1],
                downsample_block_type="conv",
                upsample_block_type="interpolate",
                decoder_norm_types="rms_norm",
                decoder_act_fns="silu",
                scaling_factor=0.41407,
            )
        )
        config = gemma2_config(tokenizer, head_dim=16, hidden_size=8, intermediate_size=64, num_attention_heads=2,
                               num_hidden_layers=1, num_key_value_heads=2, attn_implementation="eager")
        text_encoder = seeded(lambda: Gemma2Model(config))
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    return finish(pipe, "sana")


KINDS = {"sana": tiny_sana}

# As for PixArt: no resolution bins for the tiny transformer, and no caption cleaning (it needs bs4/ftfy).
CALL_ARGS = {"sana": {"height": 32, "width": 32, "max_sequence_length": 16, "use_resolution_binning": False,
                      "clean_caption": False}}
