"""Qwen-Image: text-to-image and image-to-image on one set of tiny components (Qwen2.5-VL text encoder).

The edit pipelines (QwenImageEditPipeline, QwenImageEditPlusPipeline) are not built: they need a
Qwen2VLProcessor, which transformers cannot construct without torchvision (its video-processor class
lookup fails), and this project does not depend on torchvision.
"""

from __future__ import annotations

import torch

from ._common import finish, input_image, seeded
from ._text import QWEN_VOCAB_SIZE, qwen_token_ids, qwen_tokenizer


def _qwen_text_encoder(tokenizer):
    """Qwen2.5-VL with a 2-layer, 16-wide language model and vision tower; ids agree with ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = qwen_token_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": QWEN_VOCAB_SIZE,
            **ids,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16,
        vocab_size=QWEN_VOCAB_SIZE,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        **ids,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _qwen_parts() -> dict:
    """2-layer QwenImage transformer, 4-channel Qwen VAE (/8, causal 3-D convolutions), FlowMatch Euler."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=16,
                out_channels=4,
                num_layers=2,
                attention_head_dim=16,
                num_attention_heads=3,
                joint_attention_dim=16,
                guidance_embeds=False,
                axes_dims_rope=(8, 4, 4),
            )
        )
        vae = seeded(
            lambda: AutoencoderKLQwenImage(
                base_dim=24,
                z_dim=4,
                dim_mult=[1, 2, 4],
                num_res_blocks=1,
                temperal_downsample=[False, True],
                latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4,
            )
        )
        text_encoder = seeded(lambda: _qwen_text_encoder(tokenizer))
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                text_encoder=text_encoder, tokenizer=tokenizer)


def tiny_qwenimage():
    """QwenImagePipeline."""
    from diffusers import QwenImagePipeline

    return finish(QwenImagePipeline(**_qwen_parts()), "qwenimage")


def tiny_qwenimage_img2img():
    """QwenImageImg2ImgPipeline."""
    from diffusers import QwenImageImg2ImgPipeline

    return finish(QwenImageImg2ImgPipeline(**_qwen_parts()), "qwenimage_img2img")


KINDS = {"qwenimage": tiny_qwenimage, "qwenimage_img2img": tiny_qwenimage_img2img}

# Real classifier-free guidance (true_cfg_scale, default 4) runs only when a negative prompt is given.
# FlowMatch img2img starts at sigma 1 (pure noise, the image ignored) unless strength leaves out the first of
# the 2 to 4 steps; 0.5 does.
CALL_ARGS = {
    "qwenimage": {"height": 32, "width": 32, "max_sequence_length": 16},
    "qwenimage_img2img": {"image": input_image(32, 32), "height": 32, "width": 32, "strength": 0.5,
                          "max_sequence_length": 16},
}
