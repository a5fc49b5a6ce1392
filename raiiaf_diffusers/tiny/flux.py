"""Flux.1: text-to-image, image-to-image and Kontext (image editing) on one set of tiny components."""

from __future__ import annotations

import torch

from ._common import finish, input_image, seeded
from ._text import clip_text_config, clip_tokenizer, t5_encoder, t5_tokenizer


def _flux_parts() -> dict:
    """1+1 transformer blocks, CLIP + T5, 1-channel VAE, FlowMatch Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=4,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                pooled_projection_dim=32,
                axes_dims_rope=[4, 4, 8],
            )
        )
        text_encoder = seeded(lambda: CLIPTextModel(clip_text_config(hidden_act="gelu", projection_dim=32)))
        text_encoder_2 = seeded(t5_encoder)
        vae = seeded(
            lambda: AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=1,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            )
        )
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(), transformer=transformer, vae=vae,
                image_encoder=None, feature_extractor=None)


def tiny_flux():
    """FluxPipeline (1+1 transformer blocks, CLIP + T5, 1-channel VAE), FlowMatch Euler scheduler."""
    from diffusers import FluxPipeline

    return finish(FluxPipeline(**_flux_parts()), "flux")


KINDS = {"flux": tiny_flux}

CALL_ARGS = {
    "flux": {"height": 16, "width": 16, "max_sequence_length": 16},
}
