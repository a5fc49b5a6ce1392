"""Tiny random-weight diffusers pipelines that build offline in well under a second.

They exist for the demo, the tests and the benchmark: real pipeline classes, real schedulers, real
tokenizers, only the networks are a few thousand parameters with seeded random weights. The layer
configurations follow diffusers' own ``get_dummy_components`` fast tests; the tokenizers, which those
tests download from the Hub, are built here from vocabulary files written to a temporary folder, so
nothing touches the network.

Every builder returns the same weights in every process (seeded construction inside
``torch.random.fork_rng`` so the caller's global RNG is left alone) and puts every module in
``eval()`` mode: modules constructed directly start in ``train()`` mode, and their dropout would then
draw from the global RNG and make generation irreproducible.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import torch

__all__ = ["build", "scheduler", "SCHEDULERS", "tiny_sd", "tiny_sdxl", "tiny_flux", "tiny_sd3", "clip_tokenizer", "t5_tokenizer", "KINDS", "CALL_ARGS"]

# Identity recorded as the model id in captured files; the replay side rebuilds the same pipeline
# from the same name (see ``build``).
MODEL_ID_PREFIX = "raiiaf-tiny/"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level BPE alphabet: every byte maps to a printable unicode character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# A few merges of common English letter pairs, so prompts tokenize into more than single letters.
_MERGES = ["t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "a t", "e n", "o r", "s t", "a r", "c a", "ca t</w>"]


def _clip_vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch + "</w>"] = len(vocab)
    for merge in _MERGES:
        merged = merge.replace(" ", "")
        if merged not in vocab:
            vocab[merged] = len(vocab)
    return vocab  # 530 entries: fits the 1000-token text encoders below


def clip_tokenizer(model_max_length: int = 77):
    """A CLIP byte-level BPE tokenizer loaded from vocab.json / merges.txt written to a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="raiiaf-tiny-clip-") as folder:
        vocab_file = os.path.join(folder, "vocab.json")
        merges_file = os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(_clip_vocab(), f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
        return CLIPTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 512):
    """A T5 (Unigram) tokenizer over lowercase letters, digits and a few word pieces; ids stay below 100."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for word in ("the", "a", "of", "cat", "dog", "painting", "photo"):
        pieces.append(("▁" + word, -3.0))
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        pieces.append(("▁" + ch, -6.0))
        pieces.append((ch, -5.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        **extra,
    )


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=1000,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.1,  # as in real T5: eval() must switch it off
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _seeded(make: Callable[[], object]) -> object:
    torch.manual_seed(0)
    return make()


def _finish(pipe, name: str):
    # eval() on every module: see the module docstring.
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.register_to_config(_name_or_path=MODEL_ID_PREFIX + name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd():
    """StableDiffusionPipeline (UNet 32/64 channels, VAE /2, 5-layer CLIP), DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        unet = _seeded(
            lambda: UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=32,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
            )
        )
        vae = _seeded(
            lambda: AutoencoderKL(
                block_out_channels=[32, 64],
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
                latent_channels=4,
            )
        )
        text_encoder = _seeded(lambda: CLIPTextModel(_clip_text_config()))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _finish(pipe, "sd")


def tiny_sdxl():
    """StableDiffusionXLPipeline with two CLIP encoders, Euler scheduler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        unet = _seeded(
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
                projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
                cross_attention_dim=64,
                norm_num_groups=1,
            )
        )
        vae = _seeded(
            lambda: AutoencoderKL(
                block_out_channels=[32, 64],
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
                latent_channels=4,
                sample_size=128,
            )
        )
        config = _clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = _seeded(lambda: CLIPTextModel(config))
        text_encoder_2 = _seeded(lambda: CLIPTextModelWithProjection(config))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(),
        image_encoder=None,
        feature_extractor=None,
    )
    return _finish(pipe, "sdxl")


def tiny_flux():
    """FluxPipeline (1+1 transformer blocks, CLIP + T5, 1-channel VAE), FlowMatch Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
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
        text_encoder = _seeded(lambda: CLIPTextModel(_clip_text_config(hidden_act="gelu", projection_dim=32)))
        text_encoder_2 = _seeded(_t5_encoder)
        vae = _seeded(
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
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
        vae=vae,
        image_encoder=None,
        feature_extractor=None,
    )
    return _finish(pipe, "flux")


def tiny_sd3():
    """StableDiffusion3Pipeline (1 transformer block, two CLIP + T5), FlowMatch Euler scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
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
        config = _clip_text_config(hidden_act="gelu", projection_dim=32)
        text_encoder = _seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_2 = _seeded(lambda: CLIPTextModelWithProjection(config))
        text_encoder_3 = _seeded(_t5_encoder)
        vae = _seeded(
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
    return _finish(pipe, "sd3")


KINDS: dict[str, Callable[[], object]] = {"sd": tiny_sd, "sdxl": tiny_sdxl, "flux": tiny_flux, "sd3": tiny_sd3}


def build(kind: str):
    """Build a tiny pipeline by name ("sd", "sdxl", "flux", "sd3"; a "raiiaf-tiny/" prefix is accepted)."""
    name = kind[len(MODEL_ID_PREFIX) :] if kind.startswith(MODEL_ID_PREFIX) else kind
    try:
        maker = KINDS[name]
    except KeyError:
        raise ValueError(f"unknown tiny pipeline {kind!r}; choose one of {sorted(KINDS)}") from None
    return maker()


# The samplers covered by the tests, as diffusers users name them; each is built from the
# pipeline's current scheduler config, as users switch schedulers.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),  # needs torchsde; seeds its Brownian tree from the global RNG
}


def scheduler(name: str, config):
    """A scheduler from SCHEDULERS, configured from ``config`` (e.g. ``pipe.scheduler.config``)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)


# Call arguments that fit each tiny pipeline (its default sizes are needlessly large for it).
CALL_ARGS = {
    "sd": {"height": 64, "width": 64},
    "sdxl": {"height": 64, "width": 64},
    "flux": {"height": 16, "width": 16, "max_sequence_length": 16},
    "sd3": {"height": 32, "width": 32, "max_sequence_length": 16},
}
