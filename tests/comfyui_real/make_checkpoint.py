"""Write a small SD1.5-type checkpoint with random weights, built from ComfyUI's own model classes.

Run with ComfyUI's python, from the ComfyUI folder:  python make_checkpoint.py OUT.safetensors
ComfyUI detects an SD1.5 UNet by model_channels=320 and context_dim=768 only, so a one-level UNet (~26M
parameters) loads as SD1.5; the CLIP-L text encoder and the VAE must be complete (missing weights would be
left uninitialised), so they have their real sizes. The weights are seeded: the file is the same every time.
"""

import sys

import torch
from safetensors.torch import save_file

from comfy.cli_args import args

args.cpu = True  # must be set before comfy.model_management is imported (by comfy.ops), which picks the device

import comfy.ops  # noqa: E402
import comfy.sd1_clip  # noqa: E402
from comfy.ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def seeded(state: dict, generator: torch.Generator) -> dict:
    out = {}
    for name in sorted(state):
        value = state[name]
        if not value.is_floating_point():
            out[name] = value.clone()
        elif name.endswith("bias"):
            out[name] = torch.zeros_like(value)
        elif value.ndim == 1:  # norm scales
            out[name] = torch.ones_like(value)
        else:
            out[name] = torch.randn(value.shape, generator=generator) * 0.02
    return out


def main(path: str) -> None:
    generator = torch.Generator().manual_seed(20240601)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                     transformer_depth_middle=1, transformer_depth_output=[1, 1], context_dim=768, legacy=False,
                     use_linear_in_transformer=False, operations=comfy.ops.disable_weight_init, device="cpu")
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    vae = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    state = {}
    for prefix, module in (("model.diffusion_model.", unet), ("cond_stage_model.", clip),
                           ("first_stage_model.", vae)):
        for name, value in seeded(module.state_dict(), generator).items():
            state[prefix + name] = value.contiguous()
    save_file(state, path)


if __name__ == "__main__":
    main(sys.argv[1])
