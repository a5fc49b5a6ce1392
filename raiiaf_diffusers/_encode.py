"""Exact, JSON-only encoding of call arguments and scheduler configs.

Metadata is JSON, but replay has to pass back *the same* Python values: a tuple must come back a
tuple (SDXL adds ``original_size + crops_coords_top_left`` and a list would break it), a tensor
argument (``prompt_embeds``) must come back bit-exact, an ``inf`` must survive. So values are
encoded with a few ``$``-tagged objects, and whatever is not JSON goes into the file's tensors:

    tuple            -> {"$tuple": [...]}
    non-finite float -> {"$float": "inf" | "-inf" | "nan"}
    torch.Tensor     -> {"$tensor": name, "device": "cpu"}          (bytes in tensors[name])
    numpy.ndarray    -> {"$ndarray": name}
    PIL.Image        -> {"$image": name, "mode": "RGB"}             (uint8 pixels in tensors[name])
    torch.dtype      -> {"$dtype": "float16"}

Anything else raises CaptureError naming the argument: an argument replay could not pass again
must not be dropped silently.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .errors import CaptureError, ReplayError

_IMAGE_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I", "F")


def encode(value: Any, where: str, tensors: dict[str, Any]) -> Any:
    """Encode ``value`` (found at ``where``, e.g. "arg.prompt"); tensor payloads are added to ``tensors``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise CaptureError(f"{where}: dictionary key {k!r} cannot be recorded (keys must be strings not starting with '$')")
            out[k] = encode(v, f"{where}.{k}", tensors)
        return out
    if isinstance(value, torch.Tensor):
        tensors[where] = value.detach().to("cpu", copy=True)
        return {"$tensor": where, "device": str(value.device)}
    if isinstance(value, np.ndarray):
        tensors[where] = np.array(value, copy=True)
        return {"$ndarray": where}
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency of diffusers
        Image = None
    if Image is not None and isinstance(value, Image.Image):
        if value.mode not in _IMAGE_MODES:
            raise CaptureError(f"{where}: a PIL image in mode {value.mode!r} cannot be stored exactly; convert it first")
        tensors[where] = np.array(value, copy=True)
        return {"$image": where, "mode": value.mode}
    raise CaptureError(
        f"{where}: a value of type {type(value).__module__}.{type(value).__qualname__} cannot be recorded, "
        "so a replay could not pass it again"
    )


def decode(obj: Any, load: Callable[[str], Any], device: torch.device | None = None) -> Any:
    """Inverse of ``encode``; ``load(name)`` returns the stored tensor as torch."""
    if isinstance(obj, list):
        return [decode(v, load, device) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tuple" in obj:
        return tuple(decode(v, load, device) for v in obj["$tuple"])
    if "$float" in obj:
        return float(obj["$float"])
    if "$tensor" in obj:
        t = load(obj["$tensor"])
        stored = torch.device(obj.get("device", "cpu"))
        # Put the tensor back where the user had it when that device exists here; else on the
        # pipeline's execution device (the pipeline moves its inputs there anyway).
        target = stored if _device_available(stored) else (device or torch.device("cpu"))
        return t.to(target)
    if "$ndarray" in obj:
        return load(obj["$ndarray"]).numpy()
    if "$image" in obj:
        from PIL import Image

        return Image.fromarray(load(obj["$image"]).numpy(), mode=obj["mode"])
    if "$dtype" in obj:
        dtype = getattr(torch, obj["$dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ReplayError(f"unknown torch dtype {obj['$dtype']!r} in the file")
        return dtype
    return {k: decode(v, load, device) for k, v in obj.items()}


def plain(value: Any) -> Any:
    """A readable plain-JSON form (for top-level metadata such as sampler_settings): lists for tuples,
    strings for non-finite floats, nested lists for arrays."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return plain(value.tolist())
    return repr(value)


def _device_available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count())
    if device.type == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return False
