"""What raiiaf_diffusers reads off a pipeline object: its kind, signature, components, model identity, device."""

from __future__ import annotations

import functools
import inspect
import os
import re
from typing import Any

import torch

from . import _attention, _encode, _rng

_SNAPSHOT_RE = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def _modular_base():
    try:
        from diffusers.modular_pipelines import ModularPipeline
    except ImportError:  # diffusers without modular pipelines
        return None
    return ModularPipeline


def is_modular(pipe) -> bool:
    base = _modular_base()
    return base is not None and isinstance(pipe, base)


@functools.lru_cache(maxsize=64)
def signature(function) -> inspect.Signature:
    return inspect.signature(function)


def call_parameters(cls) -> dict:
    return signature(inspect.unwrap(cls.__call__)).parameters


def names_parameter(cls, name: str) -> bool:
    """Whether ``cls.__call__`` has a parameter of that name (not just **kwargs)."""
    param = call_parameters(cls).get(name)
    return param is not None and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)


def has_step_callback(cls) -> bool:
    return names_parameter(cls, "callback_on_step_end")


def makes_video(cls) -> bool:
    """Whether the pipeline generates video (its call takes ``num_frames``, as Wan, LTX, HunyuanVideo do):
    a .raiiaf holds still images, so such calls are neither recorded nor replayed."""
    return names_parameter(cls, "num_frames")


def execution_device(pipe) -> torch.device:
    # _execution_device walks every module's hooks; on a machine without an accelerator it can only be
    # the CPU, so skip that walk (it is a measurable part of a tiny pipeline's call).
    return torch.device(pipe._execution_device) if _rng.accelerator_present() else _rng.CPU


def class_path(obj) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def any_training(module: torch.nn.Module) -> bool:
    # Explicit walk over _modules: several times faster than any(m.training for m in module.modules()),
    # which builds a memo set and name prefixes for every submodule.
    stack = [module]
    while stack:
        m = stack.pop()
        if m.training:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


def training_components(pipe) -> list[str]:
    return sorted(n for n, c in pipe.components.items() if isinstance(c, torch.nn.Module) and any_training(c))


def components(pipe) -> dict:
    """name -> {class, training, dtype, device, name_or_path, config} (config: configurable non-network
    components such as a modular pipeline's guider, whose settings change the image); None for empty slots."""
    out = {}
    for name, comp in pipe.components.items():
        if comp is None:
            out[name] = None
            continue
        info: dict[str, Any] = {"class": class_path(comp)}
        config = getattr(comp, "config", None)
        if isinstance(comp, torch.nn.Module):
            # Any submodule in train() mode matters: its dropout draws from the global RNG.
            info["training"] = any_training(comp)
            param = next(comp.parameters(), None)
            if param is not None:
                info["dtype"] = str(param.dtype).removeprefix("torch.")
                info["device"] = str(param.device)
            # The attention kernels decide the numbers as much as the weights do (see _attention).
            attention = _attention.processors(comp)
            if attention is not None:
                info["attn_processors"] = attention
            implementation = _attention.implementation(comp)
            if implementation is not None:
                info["attn_implementation"] = implementation
            name_or_path = getattr(config, "_name_or_path", None) if config is not None else None
            if isinstance(name_or_path, str) and name_or_path:
                info["name_or_path"] = name_or_path
        elif name != "scheduler" and isinstance(config, dict) and hasattr(comp, "register_to_config"):
            info["config"] = _encode.plain({k: v for k, v in config.items() if not k.startswith("_")})
        out[name] = info
    return out


def model(pipe) -> dict:
    """Model identity for the file's top-level ``model`` field: name, id or path, revision."""
    config = getattr(pipe, "config", None) or {}
    name_or_path = config.get("_name_or_path")
    found: dict[str, Any] = {}
    if isinstance(name_or_path, str) and name_or_path:
        found["name"] = name_or_path
        if os.path.isdir(name_or_path):
            found["path"] = os.path.abspath(name_or_path)
        else:
            found["id"] = name_or_path
    revision = config.get("_commit_hash")
    candidates = [name_or_path]
    for comp in pipe.components.values():
        comp_config = getattr(comp, "config", None)
        if comp_config is not None:
            revision = revision or getattr(comp_config, "_commit_hash", None)
            candidates.append(getattr(comp_config, "_name_or_path", None))
    if not revision:
        # A model loaded from the Hugging Face cache lives under .../snapshots/<commit>/.
        for c in candidates:
            m = _SNAPSHOT_RE.search(c) if isinstance(c, str) else None
            if m:
                revision = m.group(1)
                break
    if isinstance(revision, str) and revision:
        found["revision"] = revision
    return found


def model_name(pipe) -> str | None:
    config = getattr(pipe, "config", None) or {}
    value = config.get("_name_or_path")
    return value if isinstance(value, str) else None


__all__ = ["is_modular", "signature", "call_parameters", "names_parameter", "has_step_callback", "makes_video",
           "execution_device", "class_path", "any_training", "training_components", "components", "model",
           "model_name"]
