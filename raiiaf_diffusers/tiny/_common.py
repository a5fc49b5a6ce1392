"""What every tiny builder shares: seeded construction, finishing a pipeline, deterministic inputs."""

from __future__ import annotations

from typing import Callable

import torch

# Identity recorded as the model id in captured files; the replay side rebuilds the same pipeline
# from the same name (see ``tiny.build``).
MODEL_ID_PREFIX = "raiiaf-tiny/"


def seeded(make: Callable[[], object]) -> object:
    """``make()`` after seeding the CPU RNG: call inside ``torch.random.fork_rng(devices=[])``."""
    torch.manual_seed(0)
    return make()


def finish(pipe, name: str):
    """Name the pipeline ``raiiaf-tiny/<name>`` and put every module in ``eval()`` mode.

    Modules constructed directly start in ``train()`` mode, and their dropout would then draw from the
    global RNG and make generation irreproducible.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.register_to_config(_name_or_path=MODEL_ID_PREFIX + name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quiet_blocks(blocks) -> None:
    """Turn off the progress bars of modular pipeline blocks and all their nested blocks.

    ``ModularPipeline.set_progress_bar_config`` reaches only the top-level blocks, while the denoising
    loop sits a few levels down; the pipeline deep-copies its blocks, so this runs before ``init_pipeline``.
    """
    if hasattr(blocks, "set_progress_bar_config"):
        blocks.set_progress_bar_config(disable=True)
    for sub_block in getattr(blocks, "sub_blocks", {}).values():
        quiet_blocks(sub_block)


def input_image(width: int, height: int):
    """An RGB test picture computed from pixel coordinates (integer arithmetic: the same bytes everywhere)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = ((x // 4 + y // 4) % 2) * 191 + 32  # a 4-pixel checkerboard, so the VAE sees edges
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8))


def input_mask(width: int, height: int):
    """An inpainting mask: white (repaint) over the central half of each side, black elsewhere."""
    import numpy as np
    from PIL import Image

    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = 255
    return Image.fromarray(mask)  # 2-D uint8: mode "L"
