"""Z-Image: a single-stream DiT with a Qwen3 text encoder; text-to-image and image-to-image."""

from __future__ import annotations

import torch

from ._common import finish, input_image, seeded
from ._text import qwen3_config, qwen_tokenizer


def _zimage_transformer():
    from diffusers import ZImageTransformer2DModel

    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    # The pad tokens are allocated with torch.empty (checkpoints overwrite them): without fixed values
    # each build would get whatever the memory held, and outputs would differ between builds.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    return transformer


def _zimage_parts() -> dict:
    """2+1-layer Z-Image transformer, 16-channel VAE /2, 2-layer Qwen3, FlowMatch Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Model

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(_zimage_transformer)
        vae = seeded(
            lambda: AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
                block_out_channels=[32, 64],
                layers_per_block=1,
                latent_channels=16,
                norm_num_groups=32,
                sample_size=32,
                scaling_factor=0.3611,
                shift_factor=0.1159,
            )
        )
        text_encoder = seeded(lambda: Qwen3Model(qwen3_config(tokenizer)))
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_zimage():
    """ZImagePipeline."""
    from diffusers import ZImagePipeline

    return finish(ZImagePipeline(**_zimage_parts()), "zimage")


def tiny_zimage_img2img():
    """ZImageImg2ImgPipeline."""
    from diffusers import ZImageImg2ImgPipeline

    return finish(ZImageImg2ImgPipeline(**_zimage_parts()), "zimage_img2img")


KINDS = {"zimage": tiny_zimage, "zimage_img2img": tiny_zimage_img2img}

# FlowMatch img2img starts at sigma 1 (pure noise, the image ignored) unless strength leaves out the first of
# the 2 to 4 steps; 0.5 does.
CALL_ARGS = {
    "zimage": {"height": 32, "width": 32, "max_sequence_length": 32},
    "zimage_img2img": {"image": input_image(32, 32), "height": 32, "width": 32, "strength": 0.5,
                       "max_sequence_length": 32},
}
