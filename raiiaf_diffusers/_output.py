"""What a pipeline call returned, as capture stores it and replay compares it: PIL images, raw outputs, PNG bytes."""

from __future__ import annotations

import hashlib
import io

import torch

import raiiaf_core as rc

from .record import OUTPUT_TYPES

# Output types a pipeline call may be given, as record.OUTPUT_TYPES names them.
ALIASES = {"numpy": "np"}


def output_type_of(arguments: dict) -> str | None:
    """The record's output type for a call's arguments; None when the call returns no image (e.g. "latent")."""
    value = arguments.get("output_type", "pil")
    value = ALIASES.get(value, value) if isinstance(value, str) else value
    return value if value in OUTPUT_TYPES else None


def returned_images(out, modular: bool = False, output=None):
    """The batch of images in what a pipeline returned: ``.images`` or the first item of a tuple; for a
    modular pipeline, what its ``output=`` argument asked for (the state, the value, or a dict)."""
    if not modular:
        return out.images if hasattr(out, "images") else out[0]
    if output is None:
        return out.get("images")
    return out if isinstance(output, str) else out["images"]


def modular_output_ok(output) -> bool:
    """Whether a modular pipeline's ``output=`` argument makes it return its images."""
    return output is None or output == "images" or (isinstance(output, (list, tuple)) and "images" in output)


def images(out, output_type: str, modular: bool = False, output=None) -> tuple[list, list | None]:
    """(PIL images, raw per-image outputs or None) of a call's result."""
    from diffusers.image_processor import VaeImageProcessor

    batch = returned_images(out, modular, output)
    if output_type == "pil":
        return list(batch), None
    raw = [batch[i] for i in range(len(batch))]
    if output_type == "np":
        return VaeImageProcessor.numpy_to_pil(batch), raw
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(batch.detach().cpu().float())), raw


def png_bytes(image) -> bytes:
    """The PNG encoding stored in files (zlib level 4, like raiiaf_core); replay re-encodes the same way."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=rc.PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def pixels_sha256(image) -> str:
    """sha256 over mode, size and raw pixel bytes of a PIL image (independent of PNG encoder settings)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def raw_tensor(value) -> torch.Tensor:
    """A raw np/pt output item as a CPU torch tensor."""
    return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(value)


__all__ = ["images", "png_bytes", "pixels_sha256", "output_type_of", "raw_tensor", "modular_output_ok"]
