"""Flux.2 [klein]: the Flux.2 transformer with a Qwen3 text encoder; text-to-image, and editing with ``image=``."""

from __future__ import annotations

import torch

from ._common import finish, seeded
from ._text import qwen3_config, qwen_tokenizer

# Flux.2 [klein] stacks the hidden states of these Qwen3 layers as its text features (the pipeline's
# default text_encoder_out_layers), so the tiny encoder has enough layers for them.
_OUT_LAYERS = (9, 18, 27)


def tiny_flux2_klein():
    """Flux2KleinPipeline: 1+1 transformer blocks, 27-layer 16-wide Qwen3, 1-channel Flux.2 VAE (2x2 patches)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: Flux2Transformer2DModel(
                patch_size=1,
                in_channels=4,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=16 * len(_OUT_LAYERS),
                timestep_guidance_channels=256,
                axes_dims_rope=[4, 4, 4, 4],
                guidance_embeds=False,
            )
        )
        text_encoder = seeded(lambda: Qwen3ForCausalLM(qwen3_config(tokenizer, num_hidden_layers=max(_OUT_LAYERS))))
        vae = seeded(
            lambda: AutoencoderKLFlux2(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",),
                up_block_types=("UpDecoderBlock2D",),
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=1,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
        )
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer, vae=vae)
    return finish(pipe, "flux2_klein")


KINDS = {"flux2_klein": tiny_flux2_klein}

CALL_ARGS = {"flux2_klein": {"height": 16, "width": 16, "max_sequence_length": 32}}
