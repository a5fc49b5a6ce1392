"""`raiiaf convert`: the same file with its noise stored raw or as a recipe (recipe.py), both ways lossless.

Every other chunk is copied as stored (bytes, codec and index fields), so converting raw -> recipe -> raw gives
back the original bytes whenever safetensors serializes the drawn tensor as it serialized the stored one
(it is deterministic: in practice, always); the tensors are equal bit for bit in any case (the recipe's
sha256 is checked on the way back).
"""

from __future__ import annotations

from typing import NamedTuple

from . import chunks, recipe
from .atomic import write_atomic
from .errors import RaiiafError
from .reader import open_artifact
from .writer import assemble

class Converted(NamedTuple):
    path: object  # the file written
    changed: list  # tensor names whose storage changed
    kept: dict  # {tensor name: why it stays raw} (to recipe only)
    unchecked: list  # what verifying the source could not check (see Artifact.verify)


def convert(source, output, noise: str) -> Converted:
    """Write `source` (a .raiiaf, or an exported PNG) to `output` with its noise stored as `noise` ("raw" or
    "recipe"), atomically. The source is verified first: a damaged file is refused, not carried over.
    An output ending in .png is written as the shareable PNG (what `raiiaf export` makes)."""
    if noise not in recipe.STORAGE:
        raise RaiiafError(f"noise storage is {str(noise)[:40]!r}; expected one of {', '.join(recipe.STORAGE)}")
    art = open_artifact(source)
    unchecked = art.verify()
    stored = {name: art.tensor_stored_as(name) for name in art.tensor_names}
    replaced, kept = {}, {}
    if noise == "raw":
        for name, kind in stored.items():
            if kind != chunks.TENSOR.type:
                replaced[name] = chunks.TENSOR.build(name, art.load_tensor(name, "torch"))
    else:
        options = recipe.candidates(art.metadata)
        needed = set(options) | {gen["state"] for ways in options.values() for gens, _ in ways for gen in gens
                                 if "state" in gen}
        raw = {name: art.load_tensor(name, "torch") for name in needed if stored.get(name) == chunks.TENSOR.type}
        compacted, kept = recipe.compact(raw, art.metadata, f"{art.name}: ")
        for name in options:
            if isinstance(compacted.get(name), recipe.NoiseRecipe):
                replaced[name] = chunks.TENSOR_RECIPE.build(name, compacted[name])
    pending = []
    for entry in art.chunks:
        handler = chunks.handler_for(entry.type, entry.name)
        if handler.role == "tensor" and entry.name in replaced:
            pending.append(replaced[entry.name])
        else:  # as stored: the bytes were checked by verify() above
            pending.append(chunks.Built(entry.type, entry.name, art.chunk_bytes(entry), entry.codec, entry.size,
                                        entry.info))
    parts = assemble(pending)
    if str(output).lower().endswith(".png"):
        from .png_share import from_parts

        parts = from_parts(parts, str(output))
    return Converted(write_atomic(output, parts), sorted(replaced), kept, unchecked)
