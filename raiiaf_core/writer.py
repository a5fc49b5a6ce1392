"""Assemble a v2 file from an image, tensors, metadata and environment, and write it atomically."""

from __future__ import annotations

import hashlib

from . import chunks, images, layout, naming, recipe, schema
from .atomic import write_atomic, write_new
from .environment import capture_environment
from .errors import RaiiafError, TensorError, WriteError


def write(path, *, image=None, tensors=None, metadata=None, environment=None, exclusive: bool = False,
          png: bool = False):
    """Write one .raiiaf file atomically and return its path. The same inputs always give the same bytes.

    png=True writes the file as its shareable PNG instead (what `raiiaf export` makes of it; png_share.py).
    """
    parts = _parts(path, image, tensors, metadata, environment, png)
    return write_atomic(path, parts, exclusive=exclusive)


def write_numbered(output_dir, prefix: str, *, image=None, tensors=None, metadata=None, environment=None,
                   png: bool = False):
    """Write a new file named like ComfyUI's SaveImage names images ('sub/name' -> sub/name_00001_.raiiaf, or
    sub/name_00001_.png with png=True: the shareable PNG).

    Never replaces a file, also when many threads and processes save with the same prefix at once; a
    prefix leading outside output_dir is refused.
    """
    folder, name = naming.resolve_prefix(output_dir, prefix)
    parts = _parts(folder / name, image, tensors, metadata, environment, png)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    return write_new(folder, naming.numbered_names(folder, name, ".png" if png else naming.EXTENSION), parts)


def _parts(path, image, tensors, metadata, environment, png: bool = False) -> list:
    tensors = dict(tensors or {})
    try:
        metadata = schema.validate(metadata, set(tensors))
        environment = schema.to_json_value(capture_environment() if environment is None else environment,
                                           "environment")
        image_bytes = images.to_image_bytes(image) if image is not None else None
        parts = build(image_bytes, tensors, metadata, environment)
    except RaiiafError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if png:
        from .png_share import from_parts

        parts = from_parts(parts, str(path))
    return parts


def build(image_bytes, tensor_map, metadata: dict, environment: dict) -> list:
    """The file as a list of byte strings (header, index, payloads), ready to be written in order.

    Chunk order: metadata first, so that a reader's first read holds it with the header and index, then the
    environment, the tensors in the order given, the image. A tensor given as a NoiseRecipe is stored as its
    recipe; the generator states it names must be tensors of the same file, stored as they are.
    """
    for name, value in tensor_map.items():
        for state in getattr(value, "states", ()) if isinstance(value, recipe.NoiseRecipe) else ():
            if state not in tensor_map or isinstance(tensor_map[state], recipe.NoiseRecipe):
                raise TensorError(f"tensor '{name}': its recipe draws from the generator state '{state}', which "
                                  "is not a stored tensor of this file")
    pending = [chunks.METADATA.build(metadata), chunks.ENVIRONMENT.build(environment)]
    pending += [chunks.tensor_built(name, value) for name, value in tensor_map.items()]
    if image_bytes is not None:
        pending.append(chunks.IMAGE.build(image_bytes))
    return assemble(pending)


def assemble(pending: list) -> list:
    """Header, index and payloads of a file holding the chunks.Built `pending`, in that order."""
    # Hashed once, outside the loop below: hashing the image is the costliest step of building a file.
    digests = [hashlib.sha256(built.payload).hexdigest() for built in pending]
    # Offsets depend on the index length and the index holds the offsets: iterate to the fixed point
    # (the length only grows with the digits of the offsets, so this settles in two or three rounds).
    index_length = 0
    while True:
        offset = layout.HEADER_SIZE + index_length
        entries = []
        for built, digest in zip(pending, digests):
            entries.append(layout.ChunkEntry(built.type, built.name, offset, len(built.payload), digest, built.codec,
                                             built.size, built.info))
            offset += len(built.payload)
        index = layout.encode_index(entries)
        if len(index) == index_length:
            break
        index_length = len(index)
    header = layout.pack_header(layout.HEADER_SIZE, len(index), offset, hashlib.sha256(index).digest())
    return [header, index, *(built.payload for built in pending)]
