"""The ComfyUI launch settings that change the numbers a graph computes, and what to do when they differ.

A node cannot change them: ComfyUI picks the attention function and the weight and compute dtypes when it
starts. The file records them (``host.comfyui.launch``, read through comfy_bridge.launch_settings), and a
replay says how to start ComfyUI as the original was started.
"""

from __future__ import annotations

from raiiaf_core.report import escape

# Destinations of ComfyUI's command-line arguments (comfy.cli_args.args) that change what a sampler computes:
# the device, weight and compute dtypes, attention, memory modes that split or cast the model, determinism,
# the --fast optimizations. Names this ComfyUI lacks are not recorded.
NUMERIC_ARGS = (
    "cpu", "directml", "oneapi_device_selector", "cuda_device", "default_device", "gpu_only", "highvram",
    "normalvram", "lowvram", "novram",
    "force_fp32", "force_fp16", "fp32_unet", "fp64_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet",
    "fp8_e5m2_unet", "fp8_e8m0fnu_unet", "fp16_vae", "fp32_vae", "bf16_vae", "cpu_vae", "fp8_e4m3fn_text_enc",
    "fp8_e5m2_text_enc", "fp16_text_enc", "fp32_text_enc", "bf16_text_enc", "supports_fp8_compute",
    "force_channels_last", "disable_ipex_optimize",
    "use_split_cross_attention", "use_quad_cross_attention", "use_pytorch_cross_attention", "use_sage_attention",
    "use_flash_attention", "disable_xformers", "force_upcast_attention", "dont_upcast_attention",
    "deterministic", "fast",
)
# ComfyUI's attention functions (comfy.ldm.modules.attention.optimized_attention) and the flag that picks each.
ATTENTION_FLAGS = {
    "attention_pytorch": "--use-pytorch-cross-attention",
    "attention_split": "--use-split-cross-attention",
    "attention_sub_quad": "--use-quad-cross-attention",
    "attention_sage": "--use-sage-attention",
    "attention_flash": "--use-flash-attention",
    "attention_xformers": "xformers installed and without --disable-xformers",
}


def plain(value):
    """A launch argument as JSON: sets (--fast) as sorted lists, enums by their value."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(str(getattr(v, "value", v)) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


def _flag(option: str, value) -> str:
    if value is True:
        return option
    if isinstance(value, list):
        return " ".join([option, *map(str, value)])
    return f"{option} {value}"


def _off(value) -> bool:
    return value in (None, False, [], "")


def remedies(stored, current) -> list:
    """What to do so that this ComfyUI starts like the one that made the file; `stored` comes from the file
    (checked here: anything but the recorded shape is said so, never trusted)."""
    if not isinstance(stored, dict):
        return [] if stored is None else ["the file's host.comfyui.launch is not an object; ignored"]
    if not isinstance(current, dict) or "error" in current:
        return []
    out = []
    stored_args, current_args = stored.get("args"), current.get("args") or {}
    if isinstance(stored_args, dict):
        for option, value in stored_args.items():
            now = current_args.get(option)
            if option not in current_args or value == now:
                continue
            if _off(value):
                out.append(f"start ComfyUI without {escape(_flag(option, now))}, as the original was started")
            else:
                out.append(f"start ComfyUI with {escape(_flag(option, value))} as the original did"
                           + (f" (this one has {escape(_flag(option, now))})" if not _off(now) else ""))
    attention, now = stored.get("attention"), current.get("attention")
    if isinstance(attention, str) and isinstance(now, str) and attention != now:
        how = ATTENTION_FLAGS.get(attention)
        out.append(f"the original ComfyUI attended with {escape(attention)}, this one with {escape(now)}: start "
                   f"ComfyUI with {how}" if how else
                   f"the original ComfyUI attended with {escape(attention)}, this one with {escape(now)}")
    return out


__all__ = ["NUMERIC_ARGS", "ATTENTION_FLAGS", "plain", "remedies"]
