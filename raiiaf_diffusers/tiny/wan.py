"""Wan 2.1 / 2.2 text-to-video: a 3-D DiT, UMT5 text encoder, causal video VAE; tiny frames."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import t5_tokenizer, umt5_encoder


def tiny_wan():
    """WanPipeline: 2-layer Wan transformer, 16-channel Wan VAE (/8 spatial, /4 temporal), UMT5, shift 7."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        vae = seeded(
            lambda: AutoencoderKLWan(
                base_dim=3,
                z_dim=16,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
            )
        )
        text_encoder = seeded(umt5_encoder)
        transformer = seeded(
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=12,
                in_channels=16,
                out_channels=16,
                text_dim=32,
                freq_dim=256,
                ffn_dim=32,
                num_layers=2,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=32,
            )
        )
    pipe = WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer=transformer, transformer_2=None)
    return finish(pipe, "wan")


KINDS = {"wan": tiny_wan}

# num_frames must be 4k + 1 (the VAE compresses time by 4 after the first frame).
CALL_ARGS = {"wan": {"height": 16, "width": 16, "num_frames": 5, "max_sequence_length": 16}}
