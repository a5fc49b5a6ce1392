"""Stable Diffusion 1.x and SDXL: text-to-image, image-to-image, inpainting, and the SDXL modular pipeline.

The variants of one family share its components (``_sd_parts`` / ``_sdxl_parts``), as users switch a
checkpoint between tasks with ``from_pipe``; only the SD inpainting kind has its own 9-channel UNet
(image latents and mask are concatenated to the noise), as the dedicated inpainting checkpoints do.
"""

from __future__ import annotations

import torch

from ._common import finish, input_image, input_mask, quiet_blocks, seeded
from ._text import clip_text_config, clip_tokenizer


def _sd_vae(**extra):
    """The 2-block, 4-latent-channel VAE (/2) of SD and SDXL."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        **extra,
    )


def _sd_parts(unet_in_channels: int = 4) -> dict:
    """UNet 32/64 channels, VAE /2, 5-layer CLIP, DDIM scheduler."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        unet = seeded(
            lambda: UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=32,
                in_channels=unet_in_channels,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
            )
        )
        vae = seeded(_sd_vae)
        text_encoder = seeded(lambda: CLIPTextModel(clip_text_config()))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _sdxl_parts() -> dict:
    """UNet 2/4 channels with text_time embeddings, VAE /2, two CLIP encoders, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        unet = seeded(
            lambda: UNet2DConditionModel(
                block_out_channels=(2, 4),
                layers_per_block=2,
                sample_size=32,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 2),
                projection_class_embeddings_input_dim=80,  # 6 * 8 + 32 (no aesthetic score)
                cross_attention_dim=64,
                norm_num_groups=1,
            )
        )
        vae = seeded(lambda: _sd_vae(sample_size=128))
        config = clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = seeded(lambda: CLIPTextModel(config))
        text_encoder_2 = seeded(lambda: CLIPTextModelWithProjection(config))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    return dict(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer())


def tiny_sd():
    """StableDiffusionPipeline (UNet 32/64 channels, VAE /2, 5-layer CLIP), DDIM scheduler."""
    from diffusers import StableDiffusionPipeline

    return finish(StableDiffusionPipeline(**_sd_parts()), "sd")


def tiny_sd_img2img():
    """StableDiffusionImg2ImgPipeline on the tiny SD components."""
    from diffusers import StableDiffusionImg2ImgPipeline

    return finish(StableDiffusionImg2ImgPipeline(**_sd_parts()), "sd_img2img")


def tiny_sd_inpaint():
    """StableDiffusionInpaintPipeline with a 9-channel UNet (noise + mask + masked-image latents)."""
    from diffusers import StableDiffusionInpaintPipeline

    return finish(StableDiffusionInpaintPipeline(**_sd_parts(unet_in_channels=9)), "sd_inpaint")


def tiny_sdxl():
    """StableDiffusionXLPipeline with two CLIP encoders, Euler scheduler."""
    from diffusers import StableDiffusionXLPipeline

    return finish(StableDiffusionXLPipeline(**_sdxl_parts(), image_encoder=None, feature_extractor=None), "sdxl")


def tiny_sdxl_img2img():
    """StableDiffusionXLImg2ImgPipeline on the tiny SDXL components."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return finish(StableDiffusionXLImg2ImgPipeline(**_sdxl_parts()), "sdxl_img2img")


def tiny_sdxl_inpaint():
    """StableDiffusionXLInpaintPipeline on the tiny (4-channel) SDXL components, as with a base checkpoint."""
    from diffusers import StableDiffusionXLInpaintPipeline

    return finish(StableDiffusionXLInpaintPipeline(**_sdxl_parts()), "sdxl_inpaint")


def tiny_sdxl_modular():
    """StableDiffusionXLModularPipeline: diffusers' SDXL auto blocks over the tiny SDXL components.

    Built without the Hub: ``init_pipeline()`` with no repository creates the config-only components
    (guider, image processors) and leaves the weighted ones empty; ``update_components`` fills them.
    The auto blocks pick text-to-image, image-to-image (``image=``) or inpainting (``image=`` and
    ``mask_image=``) from the call's inputs. Call it as ``pipe(prompt=..., output="images")``.
    """
    from diffusers import StableDiffusionXLAutoBlocks

    blocks = StableDiffusionXLAutoBlocks()
    quiet_blocks(blocks)
    pipe = blocks.init_pipeline()
    pipe.update_components(**_sdxl_parts())
    return finish(pipe, "sdxl_modular")


KINDS = {
    "sd": tiny_sd,
    "sd_img2img": tiny_sd_img2img,
    "sd_inpaint": tiny_sd_inpaint,
    "sdxl": tiny_sdxl,
    "sdxl_img2img": tiny_sdxl_img2img,
    "sdxl_inpaint": tiny_sdxl_inpaint,
    "sdxl_modular": tiny_sdxl_modular,
}

_IMAGE = input_image(64, 64)
_MASK = input_mask(64, 64)

CALL_ARGS = {
    "sd": {"height": 64, "width": 64},
    "sd_img2img": {"image": _IMAGE, "strength": 0.75},
    "sd_inpaint": {"image": _IMAGE, "mask_image": _MASK, "height": 64, "width": 64},
    "sdxl": {"height": 64, "width": 64},
    "sdxl_img2img": {"image": _IMAGE, "strength": 0.75},
    "sdxl_inpaint": {"image": _IMAGE, "mask_image": _MASK, "height": 64, "width": 64, "strength": 0.75},
    "sdxl_modular": {"height": 64, "width": 64},
}
