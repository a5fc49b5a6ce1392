"""Which attention each model of a pipeline runs, recorded at capture and recreated for a replay.

diffusers models run one attention processor per attention layer (AttnProcessor2_0 uses torch's
scaled_dot_product_attention, AttnProcessor the plain matmuls, XFormersAttnProcessor xformers...): they give
different numbers. transformers text encoders pick theirs through ``config._attn_implementation``.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from raiiaf_core.report import escape

# Only diffusers' own processors, built without arguments, are recreated: a file names a class, and replay must
# never instantiate anything else from it.
_PROCESSOR_MODULE = "diffusers.models.attention_processor"


def processors(module) -> dict | None:
    """{processor class name: how many layers use it} of a diffusers model; None for other components."""
    found = getattr(type(module), "attn_processors", None)
    if not isinstance(found, property):
        return None
    return dict(sorted(Counter(type(p).__name__ for p in module.attn_processors.values()).items()))


def implementation(module) -> str | None:
    """The attention implementation a transformers model was loaded with ("sdpa", "eager", ...)."""
    value = getattr(getattr(module, "config", None), "_attn_implementation", None)
    return value if isinstance(value, str) else None


def _processor_class(name):
    import importlib

    module = importlib.import_module(_PROCESSOR_MODULE)
    cls = getattr(module, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and cls.__module__ == _PROCESSOR_MODULE else None


@contextlib.contextmanager
def recreated(pipe, components: dict, *, enabled: bool = True):
    """Within the block, each diffusers model whose recorded processors differ from its current ones runs the
    recorded processor, when the record names one diffusers class for all its layers; yields (what was set,
    what differs and could not be set, with its remedy). The models' own processors are put back afterwards."""
    done, remedies, restore = [], [], []
    try:
        for name, module in pipe.components.items():
            info = components.get(name) if isinstance(components, dict) else None
            if not isinstance(info, dict) or module is None:
                continue
            wanted, current = info.get("attn_processors"), processors(module)
            if isinstance(wanted, dict) and current is not None and wanted != current:
                cls = _processor_class(next(iter(wanted))) if len(wanted) == 1 else None
                why = ""
                if enabled and cls is not None:
                    try:
                        before = module.attn_processors
                        module.set_attn_processor(cls())
                    except Exception as exc:  # noqa: BLE001 - a processor this torch/diffusers cannot run
                        why = f" (replay could not: {type(exc).__name__}: {escape(str(exc)[:200])})"
                    else:
                        restore.append((module, before))
                        done.append(f"{name} attention processors {escape(current)} -> {escape(wanted)}")
                        continue
                remedies.append(f"{name} ran the attention processors {escape(wanted)} at capture, here "
                                f"{escape(current)}: set them as the original had them "
                                f"(pipe.{name}.set_attn_processor(...)){why}")
            recorded, now = info.get("attn_implementation"), implementation(module)
            if isinstance(recorded, str) and now is not None and recorded != now:
                remedies.append(f"{name} used attn_implementation {escape(recorded)} at capture, here {escape(now)}: "
                                f"load it with from_pretrained(..., attn_implementation={escape(repr(recorded))})")
        yield done, remedies
    finally:
        for module, before in reversed(restore):
            module.set_attn_processor(before)


__all__ = ["processors", "implementation", "recreated"]
