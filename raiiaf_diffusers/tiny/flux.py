"""Flux.1 (text-to-image, image-to-image, inpainting, Kontext editing) and Chroma, its T5-only derivative.

The Flux.1 variants share one set of tiny components, as users load one checkpoint family for all four
(Kontext's own checkpoint has the same layout). The VAE has one block (scale 1), so Flux's 2x2 latent
packing makes 16x16 images 8x8 sequences of 4-channel tokens.
"""

from __future__ import annotations

import torch

from ._common import finish, input_image, input_mask, seeded
from ._text import clip_text_config, clip_tokenizer, t5_encoder, t5_tokenizer


# The transformer blocks of the tiny Flux and Chroma (Chroma adds its guidance approximator).
_FLUX_BLOCKS = dict(
    patch_size=1,
    in_channels=4,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=[4, 4, 8],
)


def one_block_vae(latent_channels: int = 1):
    """A one-block VAE (scale 1) with Flux's shift and scale (also SD3's tiny VAE, with 4 channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def _flux_parts() -> dict:
    """1+1 transformer blocks, CLIP + T5, 1-channel VAE, FlowMatch Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(lambda: FluxTransformer2DModel(**_FLUX_BLOCKS, pooled_projection_dim=32))
        text_encoder = seeded(lambda: CLIPTextModel(clip_text_config(hidden_act="gelu", projection_dim=32)))
        text_encoder_2 = seeded(t5_encoder)
        vae = seeded(one_block_vae)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(), transformer=transformer, vae=vae,
                image_encoder=None, feature_extractor=None)


def tiny_flux():
    """FluxPipeline (1+1 transformer blocks, CLIP + T5, 1-channel VAE), FlowMatch Euler scheduler."""
    from diffusers import FluxPipeline

    return finish(FluxPipeline(**_flux_parts()), "flux")


def tiny_flux_img2img():
    """FluxImg2ImgPipeline on the tiny Flux components."""
    from diffusers import FluxImg2ImgPipeline

    return finish(FluxImg2ImgPipeline(**_flux_parts()), "flux_img2img")


def tiny_flux_inpaint():
    """FluxInpaintPipeline on the tiny Flux components (the mask blends; no dedicated fill model)."""
    from diffusers import FluxInpaintPipeline

    return finish(FluxInpaintPipeline(**_flux_parts()), "flux_inpaint")


def tiny_flux_kontext():
    """FluxKontextPipeline: the reference image's latents are appended to the noise tokens."""
    from diffusers import FluxKontextPipeline

    return finish(FluxKontextPipeline(**_flux_parts()), "flux_kontext")


def tiny_chroma():
    """ChromaPipeline: a Flux-like transformer with a distilled guidance approximator, T5 only, real CFG."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: ChromaTransformer2DModel(
                **_FLUX_BLOCKS, approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16
            )
        )
        text_encoder = seeded(t5_encoder)
        vae = seeded(one_block_vae)
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, tokenizer=t5_tokenizer(),
                          transformer=transformer, vae=vae, image_encoder=None, feature_extractor=None)
    return finish(pipe, "chroma")


KINDS = {
    "flux": tiny_flux,
    "flux_img2img": tiny_flux_img2img,
    "flux_inpaint": tiny_flux_inpaint,
    "flux_kontext": tiny_flux_kontext,
    "chroma": tiny_chroma,
}

_IMAGE = input_image(16, 16)

# FlowMatch img2img starts at sigma 1 (pure noise, the image ignored) unless strength leaves out the first of
# the 2 to 4 steps; 0.5 does.
CALL_ARGS = {
    "flux": {"height": 16, "width": 16, "max_sequence_length": 16},
    "flux_img2img": {"image": _IMAGE, "height": 16, "width": 16, "strength": 0.5, "max_sequence_length": 16},
    "flux_inpaint": {"image": _IMAGE, "mask_image": input_mask(16, 16), "height": 16, "width": 16, "strength": 0.5,
                     "max_sequence_length": 16},
    # Kontext would first resize the reference to its preferred ~1 megapixel resolutions; _auto_resize=False
    # keeps it tiny, as diffusers' own tests do. max_area caps the output at the requested size.
    "flux_kontext": {"image": _IMAGE, "height": 16, "width": 16, "max_area": 16 * 16, "_auto_resize": False,
                     "max_sequence_length": 16},
    "chroma": {"height": 16, "width": 16, "max_sequence_length": 16},
}
