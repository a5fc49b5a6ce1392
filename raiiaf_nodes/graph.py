"""Reading ComfyUI's API-format graph (the hidden PROMPT input): {node_id: {"class_type", "inputs"}}.

An input is either a literal widget value or a link `[source_node_id, output_slot]`. The save node reads
from it what the sampler cannot tell: prompt texts, model file names, scheduler and step settings, and,
without the capture node, the seed and latent size to rebuild the noise from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

# Widget names that pick a model file, and ComfyUI's models/ folder each one lives in.
MODEL_FILE_INPUTS = {
    "ckpt_name": ("checkpoints", "checkpoint"),
    "unet_name": ("diffusion_models", "diffusion_model"),
    "vae_name": ("vae", "vae"),
    "lora_name": ("loras", "lora"),
    "clip_name": ("text_encoders", "text_encoder"),
    "clip_name1": ("text_encoders", "text_encoder"),
    "clip_name2": ("text_encoders", "text_encoder"),
    "clip_name3": ("text_encoders", "text_encoder"),
    "clip_name4": ("text_encoders", "text_encoder"),
    "control_net_name": ("controlnet", "controlnet"),
    "style_model_name": ("style_models", "style_model"),
    "upscale_model_name": ("upscale_models", "upscale_model"),
}
# Text widgets of the text encoders (CLIPTextEncode, the SDXL/SD3/Flux variants) and of string nodes.
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl", "prompt", "value", "string")
# Latent sources whose size the widgets give, with the latent channels of the models they serve.
EMPTY_LATENTS = {"EmptyLatentImage": 4, "EmptySD3LatentImage": 16}
LATENT_DOWNSCALE = 8


def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


class Graph:
    """An API-format graph with the lookups the nodes need."""

    def __init__(self, prompt: dict | None):
        self.nodes: dict[str, dict] = {str(k): v for k, v in (prompt or {}).items() if isinstance(v, dict)}

    def inputs(self, node_id: str) -> dict:
        return self.nodes.get(str(node_id), {}).get("inputs", {}) or {}

    def class_type(self, node_id: str) -> str | None:
        return self.nodes.get(str(node_id), {}).get("class_type")

    def source(self, node_id: str, input_name: str) -> tuple[str, int] | None:
        value = self.inputs(node_id).get(input_name)
        return (str(value[0]), value[1]) if is_link(value) and str(value[0]) in self.nodes else None

    def literal(self, node_id: str, input_name: str):
        """A widget value, following a link to a primitive-like node that only passes a value on."""
        value = self.inputs(node_id).get(input_name)
        seen = set()
        while is_link(value) and str(value[0]) in self.nodes and str(value[0]) not in seen:
            seen.add(str(value[0]))
            src = self.inputs(value[0])
            literals = [v for k, v in src.items() if k in ("value", "seed", "noise_seed", "int", "string", "text")
                        and not is_link(v)]
            if len(literals) != 1:
                return None
            value = literals[0]
        return None if is_link(value) else value

    def ancestors(self, node_id: str) -> list[str]:
        """Every node upstream of `node_id`, sources before their users (the order ComfyUI can run them)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(current: str) -> None:
            # Iterative depth-first walk; real graphs can be deep enough to hit Python's recursion limit.
            stack = [(current, iter(self._links(current)))]
            seen.add(current)
            while stack:
                node, links = stack[-1]
                for src in links:
                    if src not in seen:
                        seen.add(src)
                        stack.append((src, iter(self._links(src))))
                        break
                else:
                    stack.pop()
                    order.append(node)

        visit(str(node_id))
        return [n for n in order if n != str(node_id)]

    def _links(self, node_id: str) -> list[str]:
        return [str(v[0]) for v in self.inputs(node_id).values() if is_link(v) and str(v[0]) in self.nodes]

    def signature(self, node_id: str) -> str:
        """A hash of the node and everything upstream, independent of node ids.

        Two queue runs give a node the same signature when its inputs and their whole history are the same;
        that is when ComfyUI reuses a cached result instead of running the node again.
        """
        nodes = [*self.ancestors(node_id), str(node_id)]
        rename = {n: i for i, n in enumerate(nodes)}
        canon = []
        for n in nodes:
            inputs = {k: ([rename.get(str(v[0])), v[1]] if is_link(v) else v) for k, v in self.inputs(n).items()}
            canon.append([self.class_type(n), inputs])
        return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()

    def texts(self, node_id: str, input_name: str) -> str | None:
        """The prompt text(s) feeding a conditioning input, joined by newlines in graph order."""
        start = self.source(node_id, input_name)
        if start is None:
            return None
        found: list[str] = []
        seen: set[tuple[str, int]] = set()
        pending = [start]
        while pending:
            node, slot = pending.pop(0)
            if (node, slot) in seen:
                continue
            seen.add((node, slot))
            inputs = self.inputs(node)
            for name in TEXT_INPUTS:
                if name in inputs:
                    text = self.literal(node, name)
                    if isinstance(text, str) and text and text not in found:
                        found.append(text)
            for name, value in inputs.items():
                if not is_link(value) or name in TEXT_INPUTS or name in ("clip", "model", "vae", "image", "pixels"):
                    continue
                # Nodes that pass both conditionings through (ControlNet apply, inpaint conditioning) give
                # positive on output 0 and negative on output 1: follow only the one that was linked.
                if "positive" in inputs and "negative" in inputs and name in ("positive", "negative") \
                        and name != ("positive" if slot == 0 else "negative"):
                    continue
                pending.append((str(value[0]), value[1]))
        return "\n".join(found) if found else None

    def prompt_texts(self, sampler_id: str) -> tuple[str | None, str | None]:
        """(positive, negative) texts of a sampler node, looking through a GUIDER input if it has one."""
        node = str(sampler_id)
        guider = self.source(node, "guider")
        if guider is not None:
            node = guider[0]
            if "conditioning" in self.inputs(node):
                return self.texts(node, "conditioning"), None
        return self.texts(node, "positive"), self.texts(node, "negative")

    def model_files(self, node_ids: Iterable[str]) -> list[dict]:
        """Model files picked by widgets of the given nodes: [{role, folder, name, node_id}] without repeats."""
        files, seen = [], set()
        for node in node_ids:
            for name, value in self.inputs(node).items():
                if name in MODEL_FILE_INPUTS and isinstance(value, str) and value:
                    folder, role = MODEL_FILE_INPUTS[name]
                    if (folder, value) not in seen:
                        seen.add((folder, value))
                        files.append({"role": role, "folder": folder, "name": value, "node_id": node})
        return files

    def sampler_settings(self, sampler_id: str) -> dict:
        """Widget settings of a sampler node that the sampler itself does not report (scheduler, steps, ...)."""
        node = str(sampler_id)
        found = {"class_type": self.class_type(node)}
        places = [node]
        for name in ("sigmas", "sampler", "guider", "noise"):
            src = self.source(node, name)
            if src is not None:
                places.append(src[0])
        for place in places:
            for key in ("sampler_name", "scheduler", "steps", "denoise", "cfg"):
                value = self.literal(place, key)
                if value is not None and key not in found:
                    found[key] = value
        return found

    def noise_settings(self, sampler_id: str) -> dict | None:
        """{seed, add_noise} of a sampler node as its widgets give them, None if it is not a known sampler."""
        node = str(sampler_id)
        kind = self.class_type(node)
        if kind == "KSampler":
            return {"seed": self.literal(node, "seed"), "add_noise": True}
        if kind == "KSamplerAdvanced":
            return {"seed": self.literal(node, "noise_seed"), "add_noise": self.literal(node, "add_noise") != "disable"}
        if kind == "SamplerCustom":
            return {"seed": self.literal(node, "noise_seed"), "add_noise": bool(self.literal(node, "add_noise"))}
        if kind == "SamplerCustomAdvanced":
            src = self.source(node, "noise")
            if src is None:
                return None
            if self.class_type(src[0]) == "DisableNoise":
                return {"seed": 0, "add_noise": False}
            if self.class_type(src[0]) == "RandomNoise":
                return {"seed": self.literal(src[0], "noise_seed"), "add_noise": True}
        return None

    def latent_shape(self, sampler_id: str) -> list[int] | None:
        """[batch, channels, height, width] of an empty latent feeding the sampler directly, if there is one."""
        src = self.source(sampler_id, "latent_image")
        if src is None or self.class_type(src[0]) not in EMPTY_LATENTS:
            return None
        width, height = self.literal(src[0], "width"), self.literal(src[0], "height")
        batch = self.literal(src[0], "batch_size")
        if not all(isinstance(v, int) for v in (width, height, batch)):
            return None
        channels = EMPTY_LATENTS[self.class_type(src[0])]
        return [batch, channels, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE]
