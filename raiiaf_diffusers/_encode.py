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

from . import _rng
from .errors import CaptureError

# The shape and dtype a stored PIL image of each mode must have: (rank, channels or None, dtype).
_IMAGE_LAYOUTS = {"L": (2, None, "uint8"), "LA": (3, 2, "uint8"), "RGB": (3, 3, "uint8"), "RGBA": (3, 4, "uint8"),
                  "I;16": (2, None, "uint16"), "I": (2, None, "int32"), "F": (2, None, "float32")}


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
        if value.mode not in _IMAGE_LAYOUTS:
            raise CaptureError(f"{where}: a PIL image in mode {value.mode!r} cannot be stored exactly; convert it first")
        tensors[where] = np.array(value, copy=True)
        return {"$image": where, "mode": value.mode}
    raise CaptureError(
        f"{where}: a value of type {type(value).__module__}.{type(value).__qualname__} cannot be recorded, "
        "so a replay could not pass it again"
    )


_FLOATS = ("inf", "-inf", "nan")


def validate(obj: Any, where: str, tensor: Callable[[str, str], tuple], fail: Callable[[str, str], None]) -> None:
    """Check that ``obj`` is what ``encode`` writes, without loading anything.

    ``tensor(name, where)`` checks a ``$tensor``/``$ndarray``/``$image`` reference (that the file holds it, once)
    and returns its (dtype, shape); ``fail(where, message)`` raises. Afterwards ``decode`` cannot fail on ``obj``.
    """
    stack = [(obj, where)]  # depth first, in document order, so the first bad value is the one reported
    while stack:
        value, at = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed([(v, f"{at}.{i}") for i, v in enumerate(value)]))
            continue
        if not isinstance(value, dict):
            if isinstance(value, float) and not math.isfinite(value):
                fail(at, "a non-finite number must be written as {\"$float\": ...}")
            continue
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            stack.extend(reversed([(v, f"{at}.{k}") for k, v in value.items()]))
            continue
        tag = tags[0]
        allowed = {"$tuple": {"$tuple"}, "$float": {"$float"}, "$tensor": {"$tensor", "device"},
                   "$ndarray": {"$ndarray"}, "$image": {"$image", "mode"}, "$dtype": {"$dtype"}}.get(tag)
        if allowed is None or len(tags) != 1 or not set(value) <= allowed:
            fail(at, f"unknown or malformed tagged value with keys {sorted(value)[:8]}")
        payload = value[tag]
        if tag == "$tuple":
            if not isinstance(payload, list):
                fail(at, "$tuple must hold a list")
            stack.extend(reversed([(v, f"{at}.{i}") for i, v in enumerate(payload)]))
        elif tag == "$float":
            if payload not in _FLOATS:
                fail(at, f"$float must be one of {', '.join(_FLOATS)}")
        elif tag == "$dtype":
            if not isinstance(payload, str) or not isinstance(getattr(torch, payload, None), torch.dtype):
                fail(at, f"{payload!r} is not a torch dtype")
        else:
            if not isinstance(payload, str):
                fail(at, f"{tag} must name a tensor of the file")
            dtype, shape = tensor(payload, at)
            if tag == "$tensor" and "device" in value:
                device = value["device"]
                if not isinstance(device, str) or len(device) > 64:
                    fail(f"{at}.device", "must be a device name such as 'cpu' or 'cuda:0'")
                try:
                    torch.device(device)
                except (RuntimeError, ValueError):
                    fail(f"{at}.device", f"{device!r} is not a torch device")
            if tag == "$image":
                layout = _IMAGE_LAYOUTS.get(value.get("mode"))
                if layout is None:
                    fail(f"{at}.mode", f"must be one of {', '.join(_IMAGE_LAYOUTS)}")
                rank, channels, want = layout
                if dtype != want or len(shape) != rank or (channels and shape[-1] != channels):
                    fail(at, f"tensor {payload!r} ({dtype} {list(shape)}) cannot hold a {value['mode']} image")


def decode(obj: Any, load: Callable[[str], Any], device: torch.device | None = None) -> Any:
    """Inverse of ``encode`` for an ``obj`` that passed ``validate``; ``load(name)`` returns the stored tensor as torch."""
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
        target = stored if _rng.device_available(stored) else (device or _rng.CPU)
        return t.to(target)
    if "$ndarray" in obj:
        return load(obj["$ndarray"]).numpy()
    if "$image" in obj:
        from PIL import Image

        return Image.fromarray(load(obj["$image"]).numpy(), mode=obj["mode"])
    if "$dtype" in obj:
        return getattr(torch, obj["$dtype"])
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
