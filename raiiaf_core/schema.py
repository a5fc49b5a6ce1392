"""Metadata schema 1: what the writer accepts, checked field by field (docs/FORMAT.md lists it)."""

from __future__ import annotations

import math

from .errors import MetadataError
from .layout import DEFAULT_LIMITS

# What a reader accepts by default: a file nested deeper would be written but refused when read.
MAX_DEPTH = DEFAULT_LIMITS.max_json_depth

SCHEMA_VERSION = 1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, float)


# Each top-level field: (check, what the message says it should be).
_FIELDS = {
    "schema_version": (_is_int, "an integer"),
    "created": (lambda v: isinstance(v, str), "a string (ISO-8601 time)"),
    "generator": (lambda v: isinstance(v, dict), "an object {name, version}"),
    "model": (lambda v: isinstance(v, dict), "an object"),
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "negative_prompt": (lambda v: isinstance(v, str), "a string"),
    "seed": (lambda v: v is None or _is_int(v), "an integer or null"),
    "sampler": (lambda v: isinstance(v, str), "a string"),
    "scheduler": (lambda v: isinstance(v, str), "a string"),
    "sampler_settings": (lambda v: isinstance(v, dict), "an object"),
    "steps": (_is_int, "an integer"),
    "guidance_scale": (_is_number, "a number"),
    "width": (_is_int, "an integer"),
    "height": (_is_int, "an integer"),
    "strength": (_is_number, "a number"),
    "batch": (lambda v: isinstance(v, dict), "an object {index, size}"),
    "noise": (lambda v: isinstance(v, dict), "an object {tensor, source}"),
    "runs": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects"),
    "tags": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings"),
    "notes": (lambda v: isinstance(v, str), "a string"),
    "host": (lambda v: isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()), "an object of objects"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}
_NESTED = {
    ("generator", "name"): (lambda v: isinstance(v, str), "a string"),
    ("generator", "version"): (lambda v: isinstance(v, str), "a string"),
    ("batch", "index"): (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("batch", "size"): (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    ("noise", "tensor"): (lambda v: isinstance(v, str), "a string naming one of the file's tensors"),
    ("noise", "source"): (lambda v: v in ("captured", "reconstructed"), "'captured' or 'reconstructed'"),
}
_REQUIRED = {"batch": ("index", "size"), "noise": ("tensor", "source")}


def validate(metadata, tensor_names) -> dict:
    """Return the metadata as plain JSON values with schema_version filled in, or raise MetadataError."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise MetadataError(f"metadata must be a dict, got {type(metadata).__name__}")
    clean = to_json_value(metadata, "metadata")
    clean.setdefault("schema_version", SCHEMA_VERSION)
    for key, value in clean.items():
        if key not in _FIELDS:
            raise MetadataError(f"metadata field '{key}' is not in schema {SCHEMA_VERSION}; put free-form data under 'extra'")
        check, expected = _FIELDS[key]
        if not check(value):
            raise MetadataError(f"metadata field '{key}' must be {expected}, got {_describe(value)}")
    if clean["schema_version"] != SCHEMA_VERSION:
        raise MetadataError(f"metadata field 'schema_version' is {clean['schema_version']}; this writer knows {SCHEMA_VERSION}")
    for (parent, key), (check, expected) in _NESTED.items():
        if parent in clean and key in clean[parent] and not check(clean[parent][key]):
            raise MetadataError(f"metadata field '{parent}.{key}' must be {expected}, got {_describe(clean[parent][key])}")
    for parent, keys in _REQUIRED.items():
        for key in keys:
            if parent in clean and key not in clean[parent]:
                raise MetadataError(f"metadata field '{parent}.{key}' is required when '{parent}' is given")
    if "noise" in clean and clean["noise"]["tensor"] not in tensor_names:
        raise MetadataError(f"metadata field 'noise.tensor' names '{clean['noise']['tensor']}', which is not a stored tensor")
    return clean


def to_json_value(value, path: str):
    """Copy `value` into plain JSON types, naming the first field that JSON cannot hold exactly.

    Containers nested deeper than MAX_DEPTH are refused: the copy recurses once per level. Field names are
    built only for the message: a long key over a long list would otherwise be copied into every item's name.
    """
    return _copy(value, (None, path), 0)


def _copy(value, where: tuple, depth: int):
    if isinstance(value, str):
        if not _is_text(value):
            raise MetadataError(f"metadata field '{_field(where)}' is not valid Unicode text: {_describe(value)}")
        return value
    if value is None or isinstance(value, bool) or _is_int(value):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(f"metadata field '{_field(where)}' is {value}, which JSON cannot store")
        return value
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        raise MetadataError(f"metadata field '{_field(where)}' nests deeper than {MAX_DEPTH} levels, what readers "
                            "accept (Limits.max_json_depth)")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise MetadataError(f"metadata field '{_field(where)}' has a non-string key {_describe(key)}")
            if not _is_text(key):
                raise MetadataError(f"metadata field '{_field(where)}' has a key that is not valid Unicode text: "
                                    f"{key[:60]!r}")
            out[key] = _copy(item, (where, key), depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_copy(item, (where, i), depth + 1) for i, item in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _copy(value.item(), where, depth)
    raise MetadataError(f"metadata field '{_field(where)}' holds a {type(value).__name__}, which is not a JSON value")


def _field(where: tuple) -> str:
    """'extra.steps[3]' from the chain (((None, 'metadata'), 'extra'), 'steps'), 3); top-level metadata fields
    are named without 'metadata.'; every name is shortened, so is the whole."""
    pieces = []
    while where is not None:
        where, piece = where
        pieces.append(piece)
    root, *rest = reversed(pieces)
    text = "" if rest and root == "metadata" else root
    for piece in rest:
        if isinstance(piece, int):
            text += f"[{piece}]"
        else:
            piece = piece if len(piece) <= 60 else f"{piece[:50]}…"
            text = f"{text}.{piece}" if text else piece
    return text if len(text) <= 200 else f"{text[:120]}…{text[-60:]}"


def _is_text(value: str) -> bool:
    # Lone surrogates (e.g. from os.fsdecode of a file name that is not UTF-8) are str, but no UTF-8 file can hold them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
