"""What raiiaf says about files, to people and to scripts: file summaries, comparisons of two files, the
environment in one line, JSON values flattened to dotted keys, and text from files made safe to print.

The CLI, drift and anything else that reports on files use these, so a file says the same everywhere. Every
function here takes files written by other tools: values of unexpected types are shown, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

# -- text from a file, on a terminal -------------------------------------------------------------------------

# Characters a terminal may act on instead of showing: C0 and C1 controls and DEL (escape sequences: cursor
# moves, OSC 52 clipboard writes, CSI U+009B), and Unicode format and separator characters (bidi overrides
# and isolates that reorder a line, zero-width characters, line/paragraph separators, tag characters) and
# lone surrogates (from file names that are not UTF-8, which a UTF-8 terminal cannot even receive).
_FORMAT = ("\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e"
           "\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
           "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
_UNSAFE = re.compile(f"[\x00-\x1f{_FORMAT}]")
# json.dumps already escapes C0 inside strings; what is left of C0 in its output is its own layout.
_UNSAFE_IN_JSON = re.compile(f"[{_FORMAT}]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(value) -> str:
    """`value` as text (str() of it unless it is a str) with every character a terminal could act on written
    as a visible escape (\\x1b, \\u202e, \\n): the text cannot move the cursor, rewrite a line or reorder it."""
    return _UNSAFE.sub(_visible, value if isinstance(value, str) else str(value))


def _visible(match) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                                else f"\\U{code:08x}")


def to_json(value, indent: int | None = 2) -> str:
    """JSON text for output: non-ASCII text stays readable, characters a terminal could act on become \\uXXXX
    escapes (json.dumps lets DEL, C1 controls such as U+009B and bidi overrides through). Indented unless
    indenting would blow the text up (see `indented`): then compact."""
    compact = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    text = compact if indent is None else indented(value, compact, indent=indent, default=str) or compact
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


def indented(value, compact: str, **options) -> str | None:
    """`value` as indented JSON text, or None where that would be over 4x its `compact` text (plus 1 MiB): a
    deeply nested value gains the indent once per level on every line, so kilobytes of JSON (a small file's
    metadata) could become gigabytes. `options` go to json.JSONEncoder."""
    options = {"indent": 2, "ensure_ascii": False, **options}
    budget, pieces = 4 * len(compact) + (1 << 20), []
    for piece in json.JSONEncoder(**options).iterencode(value):
        budget -= len(piece)
        if budget < 0:
            return None
        pieces.append(piece)
    return "".join(pieces)


def _json_escape(match) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # JSON escapes code points above the BMP as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


# -- JSON values as dotted keys --------------------------------------------------------------------------------

MAX_FLAT_KEYS = 50_000
MAX_KEY_LENGTH = 200
OMITTED_KEY = "…"


def flatten(value) -> dict:
    """`value` as {dotted key: leaf}: object keys joined with '.', list items as '[i]'; empty objects and lists
    are leaves.

    Bounded whatever the value holds, because a record of a few hundred bytes on disk can decode to a
    megabyte-long key over a list of thousands of items: a key over MAX_KEY_LENGTH characters is shortened
    (its start, its length and a hash of the whole, so distinct keys stay distinct), and past MAX_FLAT_KEYS
    leaves the rest are counted under the key '…' instead of listed.
    """
    flat: dict = {}
    omitted = 0
    stack = [("", value)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict) and node:
            children = [(f"{key}.{k}" if key else str(k), item) for k, item in node.items()]
        elif isinstance(node, (list, tuple)) and node:
            children = [(f"{key}[{i}]", item) for i, item in enumerate(node)]
        elif len(flat) < MAX_FLAT_KEYS:
            flat[key] = node
            continue
        else:
            omitted += _count_leaves(node)
            continue
        stack.extend((_bounded(k), item) for k, item in reversed(children))
    if omitted:
        flat[OMITTED_KEY] = f"{omitted:,} more values, not listed (over {MAX_FLAT_KEYS:,})"
    return flat


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{key[:MAX_KEY_LENGTH - 40]}…({len(key):,} chars, {digest})"


def _count_leaves(value) -> int:
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and node:
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)) and node:
            stack.extend(node)
        else:
            count += 1
    return count


# -- one file ------------------------------------------------------------------------------------------------

def _object(value) -> dict:
    # Files from other writers may break the schema (the reader does not enforce it): show what is readable.
    return value if isinstance(value, dict) else {}


def environment_headline(env: dict) -> str:
    """The environment in one line: torch and CUDA, GPUs, Python, OS (not escaped: see escape())."""
    if not env:
        return "not recorded"
    parts = []
    torch = _object(env.get("torch"))
    if torch.get("version"):
        parts.append(f"torch {torch['version']} (CUDA {torch.get('cuda') or 'none'})")
    gpus = env.get("gpu") if isinstance(env.get("gpu"), list) else []
    parts.append("GPU " + ", ".join(str(_object(g).get("name", "?")) for g in gpus) if gpus else "no GPU")
    python = _object(env.get("python"))
    if python.get("version"):
        parts.append(f"Python {python['version']}")
    os_info = _object(env.get("os"))
    if os_info:
        parts.append(f"{os_info.get('system', '?')} {os_info.get('machine', '')}".strip())
    return ", ".join(parts)


def summary(art) -> dict:
    """What `raiiaf inspect --json` prints for one file; stable keys for scripts. The image size is the
    image's own (read and checked), never only what the index claims."""
    image = None
    if art.has_image:
        size = art.image_size
        image = {"format": art.image_format, "width": size[0] if size else None, "height": size[1] if size else None,
                 "bytes": next(c.length for c in art.chunks if c.type == "image" and not c.name)}
    return {
        "path": art.name,
        "format_version": f"{art.version[0]}.{art.version[1]}",
        "size": art.size,
        "image": image,
        "tensors": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "stored": art.tensor_stored_as(i.name)}
                    for i in map(art.tensor_info, art.tensor_names)],
        "metadata": art.metadata,
        "environment": art.environment,
    }


def format_summary(info: dict) -> str:
    """summary() for people: one labelled line per part, every value from the file escaped."""
    meta, env = info["metadata"], info["environment"]
    lines = [f"{escape(info['path'])}  (raiiaf {info['format_version']}, {info['size']:,} bytes)"]
    image = info["image"]
    lines.append(f"  image:       {escape(image['format'])} {image['width']}x{image['height']}, "
                 f"{image['bytes']:,} bytes" if image else "  image:       none")
    for i, t in enumerate(info["tensors"]):
        label = "tensors:" if i == 0 else ""
        recipe = "  (a recipe: drawn when loaded)" if t.get("stored") == "tensor_recipe" else ""
        lines.append(f"  {label:<12} {escape(t['name'])}  {escape(t['dtype'])} {tuple(t['shape'])}{recipe}")
    model = _object(meta.get("model"))
    model_name = model.get("name") or model.get("id") or model.get("path")
    for label, value in (("model", model_name), ("prompt", meta.get("prompt")),
                         ("negative", meta.get("negative_prompt"))):
        if value:
            lines.append(f"  {label + ':':<12} {escape(value)}")
    settings = [f"{k} {meta[k]}" for k in ("seed", "sampler", "scheduler", "steps", "guidance_scale") if k in meta]
    if "width" in meta and "height" in meta:
        settings.append(f"size {meta['width']}x{meta['height']}")
    if "batch" in meta:
        batch = _object(meta["batch"])
        settings.append(f"batch {batch.get('index')}/{batch.get('size')}")
    if settings:
        lines.append(f"  {'settings:':<12} " + escape(", ".join(settings)))
    noise = _object(meta.get("noise"))
    if noise:
        lines.append(f"  {'noise:':<12} " + escape(f"{noise.get('tensor')} ({noise.get('source')})"))
    if isinstance(meta.get("tags"), list) and meta["tags"]:
        lines.append(f"  {'tags:':<12} " + ", ".join(map(escape, meta["tags"])))
    lines.append(f"  {'environment:':<12} {escape(environment_headline(env))}")
    return "\n".join(lines)


# -- two files -------------------------------------------------------------------------------------------------

# dtypes numpy cannot hold: comparing or extracting them needs torch.
NEEDS_TORCH = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def framework_for(dtypes) -> str:
    return "torch" if any(d in NEEDS_TORCH for d in dtypes) else "numpy"


@dataclass(frozen=True)
class Comparison:
    """Differences between two artifacts: metadata fields, environment drift, tensors and image."""

    a: str
    b: str
    settings: list  # [{"key", "a", "b"}] for every flattened metadata key whose values differ
    drift: object  # drift.DriftReport of b's environment against a's
    tensors: list  # [{"name", "status", ...}] for every tensor name in either file
    image_equal: bool

    @property
    def identical(self) -> bool:
        return not self.settings and not self.drift.differences and self.image_equal \
            and all(t["status"] == "equal" for t in self.tensors)

    def to_dict(self) -> dict:
        """What `raiiaf diff --json` prints; stable keys for scripts."""
        return {"a": self.a, "b": self.b, "identical": self.identical, "settings": self.settings,
                "environment": self.drift.to_dict(), "tensors": self.tensors, "image_equal": self.image_equal}

    def __str__(self) -> str:
        if self.identical:
            return "identical settings, environment, tensors and image"
        lines = [f"setting  {escape(s['key'])}: {escape(repr(s['a']))} -> {escape(repr(s['b']))}"
                 for s in self.settings]
        for t in self.tensors:
            detail = f" (max abs diff {t['max_abs_diff']:.6g})" if "max_abs_diff" in t else ""
            lines.append(f"tensor   {escape(t['name'])}: {t['status']}{detail}")
        lines.append(f"image    {'equal' if self.image_equal else 'different'}")
        lines.append(str(self.drift))
        return "\n".join(lines)


def compare(a, b) -> Comparison:
    """Compare two open artifacts: every metadata field, the environments, every tensor, the images."""
    from .drift import drift  # drift builds on this module's flatten

    meta_a, meta_b = flatten(a.metadata), flatten(b.metadata)
    settings = [{"key": k, "a": meta_a.get(k), "b": meta_b.get(k)}
                for k in sorted(set(meta_a) | set(meta_b)) if meta_a.get(k) != meta_b.get(k)]
    tensors = [_compare_tensor(a, b, name) for name in sorted(set(a.tensor_names) | set(b.tensor_names))]
    image_equal = (a.image_bytes() == b.image_bytes()) if a.has_image and b.has_image else a.has_image == b.has_image
    return Comparison(a.name, b.name, settings, drift(a.environment, b.environment), tensors, image_equal)


def _compare_tensor(a, b, name: str) -> dict:
    if name not in a.tensor_names or name not in b.tensor_names:
        return {"name": name, "status": "only in a" if name in a.tensor_names else "only in b"}
    ia, ib = a.tensor_info(name), b.tensor_info(name)
    if ia.shape != ib.shape or ia.dtype != ib.dtype:
        return {"name": name, "status": "different shape or dtype",
                "a": [ia.dtype, list(ia.shape)], "b": [ib.dtype, list(ib.shape)]}
    if a.tensor_bytes(name) == b.tensor_bytes(name):
        return {"name": name, "status": "equal"}
    framework = framework_for([ia.dtype])
    ta, tb = a.load_tensor(name, framework), b.load_tensor(name, framework)
    if framework == "torch":
        diff = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
    else:
        import numpy as np

        diff = float(np.max(np.abs(ta.astype(np.float64) - tb.astype(np.float64)))) if ta.size else 0.0
    return {"name": name, "status": "different", "max_abs_diff": diff}
