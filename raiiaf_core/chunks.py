"""The chunk types of a v2 file, one handler each: how the writer builds a chunk, what open checks in its
index entry, how the reader reads it and what verify checks (docs/FORMAT.md, "Chunk types").

The writer and the reader dispatch through TYPES, the way Pillow's PngImagePlugin dispatches one handler per
PNG chunk type; a type not in the table (from a newer writer) is skipped on read and only hash-checked by
verify. A handler's `role` says which accessor of Artifact serves its chunks, so another way of storing a
tensor (say, a recipe the reader regenerates and checks against a sha256) is one more handler with the role
"tensor", and load_tensor serves it unchanged.

Handlers read through the artifact they are given: `art.decoded(entry)` returns a chunk's bytes after checking
its sha256 (and decompressing them within the limits), whatever source holds them.
"""

from __future__ import annotations

from typing import NamedTuple

from . import images, layout, recipe, tensors
from .errors import CorruptFileError, LimitExceededError, MissingDependencyError

# JSON chunks above this size are zstd-compressed (ComfyUI workflows run to hundreds of KiB). Below it, JSON is
# stored as is: it still fits the reader's first read with the header and index, and hashing the extra bytes
# costs less than decompressing them (what SaveImage stores as tEXt is not compressed either).
COMPRESS_JSON_ABOVE = 6 * 1024
ZSTD_LEVEL = 9


class Built(NamedTuple):
    """A chunk made by the writer, before it has an offset: its index fields and its payload."""

    type: str
    name: str
    payload: bytes
    codec: str
    size: int
    info: dict


class ChunkType:
    """A chunk type this reader does not know: skipped by every accessor, its bytes checked by verify."""

    type = ""
    role = None  # the Artifact accessor that serves this type's chunks, or None
    named = False  # whether chunks of this type are told apart by name; a named chunk of an unnamed type is unknown
    required = False  # whether every file holds one
    checks = False  # whether check() looks at anything (open skips the call otherwise)

    def check(self, art, fields: dict):
        """Check the type-specific fields of a chunk's index object when the file is opened; returns what
        reads need (the spec)."""
        return None

    def verify(self, art, entry: layout.ChunkEntry, spec) -> str | None:
        """Check the chunk as far as this reader can; returns what it could not check, or None."""
        art.check_hash(entry)


class JsonChunk(ChunkType):
    """`metadata` and `environment`: one JSON object each, canonical encoding, zstd when that is smaller."""

    def __init__(self, kind: str, required: bool = False):
        self.type = self.role = kind
        self.required = required

    def build(self, value: dict) -> Built:
        raw = layout.canonical_json(value)
        if len(raw) > COMPRESS_JSON_ABOVE:
            import zstandard

            packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
            if len(packed) < len(raw):
                return Built(self.type, "", packed, "zstd", len(raw), {})
        return Built(self.type, "", raw, "none", len(raw), {})

    def read(self, art, entry: layout.ChunkEntry) -> dict:
        limits = art.limits
        # Held to the limit whether it is stored compressed or not: the parse, not the read, costs the memory.
        if entry.size > limits.max_json_bytes:
            raise LimitExceededError(f"{art.describe(entry)} is {entry.size:,} bytes of JSON, over "
                                     f"Limits.max_json_bytes={limits.max_json_bytes:,}")
        value = layout.decode_json(art.decoded(entry), f"{self.type} chunk", art.name, limits)
        if type(value) is not dict:
            raise CorruptFileError(f"{art.describe(entry)} is not a JSON object")
        return value

    def verify(self, art, entry, spec) -> None:
        self.read(art, entry)


class ImageSpec(NamedTuple):
    format: str | None  # "png", "webp", "jpeg"; None for an image of another format (only v1 files hold those)
    size: tuple | None  # (width, height) as the index states it, checked against the image when it is read


class ImageChunk(ChunkType):
    """The image file exactly as given; its format, media type and size in the index agree with its bytes."""

    type = role = "image"
    checks = True

    def build(self, data: bytes) -> Built:
        fmt = images.sniff_format(data)
        info = {"format": fmt, "media_type": images.MEDIA_TYPES[fmt]} if fmt else {}
        size = images.image_size(data, fmt)
        if size is not None:
            info.update(width=size[0], height=size[1])
        return Built(self.type, "", data, "none", len(data), info)

    def check(self, art, fields) -> ImageSpec:
        fmt, media_type = fields.get("format"), fields.get("media_type")
        if fmt is not None and type(fmt) is not str or media_type is not None and type(media_type) is not str:
            raise CorruptFileError(f"{art.describe(fields)}: index fields 'format' and 'media_type' must be strings")
        # A format this reader does not know (from a newer writer) fails when the image is read, not here:
        # the rest of the file stays readable.
        if fmt in images.MEDIA_TYPES and media_type not in (None, images.MEDIA_TYPES[fmt]):
            raise CorruptFileError(f"{art.describe(fields)}: index gives media_type {media_type[:40]!r} for a {fmt} "
                                   f"image (expected {images.MEDIA_TYPES[fmt]!r})")
        width, height = fields.get("width"), fields.get("height")
        if width is None and height is None:
            return layout.new_record(ImageSpec, (fmt, None))
        if type(width) is not int or type(height) is not int or width < 1 or height < 1:
            raise CorruptFileError(f"{art.describe(fields)}: index fields 'width' and 'height' must both be "
                                   "positive integers")
        return layout.new_record(ImageSpec, (fmt, (width, height)))

    def read(self, art, entry, spec: ImageSpec) -> tuple[bytes, tuple | None]:
        """The checked image bytes and the size their own header gives."""
        data = art.decoded(entry)
        fmt = images.sniff_format(data)
        if fmt != spec.format:
            shown = spec.format if spec.format in images.MEDIA_TYPES else f"{str(spec.format)[:40]!r} (unknown here)"
            raise CorruptFileError(f"{art.describe(entry)} is not the {shown} image the index says")
        size = images.image_size(data, fmt)
        if spec.size is not None and size != spec.size:
            found = f"{size[0]}x{size[1]}" if size else "a size its header does not give"
            raise CorruptFileError(f"{art.describe(entry)}: the index says {spec.size[0]}x{spec.size[1]}, the "
                                   f"image is {found}")
        return data, size

    def verify(self, art, entry, spec) -> None:
        self.read(art, entry, spec)


class TensorChunk(ChunkType):
    """A complete safetensors file holding exactly one tensor, named like the chunk; dtype and shape in the
    index agree with its header."""

    type = role = "tensor"
    named = checks = True

    def build(self, name: str, value) -> Built:
        payload, info = tensors.encode(name, value)
        return Built(self.type, name, payload, "none", len(payload), {"dtype": info.dtype, "shape": list(info.shape)})

    def check(self, art, fields) -> tensors.TensorInfo:
        shape, dtype = fields.get("shape"), fields.get("dtype")
        if type(dtype) is str and type(shape) is list:
            for dim in shape:
                if type(dim) is not int or dim < 0:
                    break
            else:
                return layout.new_record(tensors.TensorInfo, (fields["name"], dtype, tuple(shape)))
        raise CorruptFileError(f"{art.describe(fields)}: index entry is malformed (dtype and shape)")

    def payload(self, art, entry, spec: tensors.TensorInfo) -> bytes:
        """The tensor's blob, hash-checked and with a safetensors header that agrees with the index."""
        where = art.describe(entry)
        data = art.decoded(entry)
        if tensors.parse_header(data, spec.name, where) != spec:
            raise CorruptFileError(f"{where}: safetensors header disagrees with the index")
        return data

    def load(self, art, entry, spec, framework: str):
        return tensors.decode(self.payload(art, entry, spec), spec, framework, art.describe(entry))

    def verify(self, art, entry, spec) -> None:
        tensors.check_loadable(self.payload(art, entry, spec), art.describe(entry))


class RecipeChunk(TensorChunk):
    """A tensor stored as the recipe a torch CPU generator draws it from (recipe.py): canonical JSON, dtype and
    shape in the index as for a tensor chunk. Served like a stored tensor: drawn on load, checked against the
    recipe's sha256; generator states it names are raw tensor chunks of the same file."""

    type = "tensor_recipe"

    def build(self, name: str, value: recipe.NoiseRecipe) -> Built:
        raw = layout.canonical_json(value.to_json())
        return Built(self.type, name, raw, "none", len(raw), {"dtype": value.dtype, "shape": list(value.shape)})

    def read_recipe(self, art, entry, spec: tensors.TensorInfo) -> tuple[recipe.NoiseRecipe, str]:
        """The chunk's checked recipe, and the chunk's description for messages."""
        where = art.describe(entry)
        if entry.size > art.limits.max_json_bytes:
            raise LimitExceededError(f"{where} is {entry.size:,} bytes of JSON, over "
                                     f"Limits.max_json_bytes={art.limits.max_json_bytes:,}")
        value = layout.decode_json(art.decoded(entry), "recipe", where, art.limits)
        if type(value) is not dict:
            raise CorruptFileError(f"{where} is not a JSON object")
        made = recipe.from_json(value, spec.shape, spec.dtype, where)
        # A recipe a few bytes long may describe any shape: what it may make the reader allocate is bounded.
        if spec.nbytes > art.limits.max_recipe_bytes:
            raise LimitExceededError(f"{where} draws {spec.nbytes:,} bytes, over "
                                     f"Limits.max_recipe_bytes={art.limits.max_recipe_bytes:,}")
        return made, where

    def _states(self, art, made: recipe.NoiseRecipe, where: str) -> dict:
        states = {}
        for name in made.states:
            part = art._part("tensor", name)
            if part is None or part[0] is not TENSOR or part[2].dtype != "uint8" or len(part[2].shape) != 1:
                raise CorruptFileError(f"{where}: generator state '{name[:80]}' is not a uint8 vector stored in "
                                       "the file")
            states[name] = TENSOR.load(art, part[1], part[2], "torch")
        return states

    def payload(self, art, entry, spec) -> bytes:
        """The safetensors blob of the drawn tensor: what a tensor chunk of it holds (sha256 checked first)."""
        made, where = self.read_recipe(art, entry, spec)
        drawn = recipe.checked_draw(made, self._states(art, made, where), where)
        return tensors.encode(spec.name, drawn)[0]

    def verify(self, art, entry, spec) -> str | None:
        made, where = self.read_recipe(art, entry, spec)
        try:
            recipe.checked_draw(made, self._states(art, made, where), where)
        except MissingDependencyError:
            return f"{where}: recipe not drawn, torch is not installed: its sha256 is checked only with torch"
        return None


UNKNOWN = ChunkType()
METADATA = JsonChunk("metadata", required=True)
ENVIRONMENT = JsonChunk("environment")
IMAGE = ImageChunk()
TENSOR = TensorChunk()
TENSOR_RECIPE = RecipeChunk()
TYPES = {handler.type: handler for handler in (METADATA, ENVIRONMENT, IMAGE, TENSOR, TENSOR_RECIPE)}
REQUIRED = tuple(handler for handler in TYPES.values() if handler.required)


def tensor_built(name: str, value) -> Built:
    """The chunk of one tensor given to the writer: a NoiseRecipe as its recipe, anything else stored."""
    return (TENSOR_RECIPE if isinstance(value, recipe.NoiseRecipe) else TENSOR).build(name, value)


def handler_for(kind: str, name: str) -> ChunkType:
    handler = TYPES.get(kind, UNKNOWN)
    return handler if handler.named or not name else UNKNOWN

