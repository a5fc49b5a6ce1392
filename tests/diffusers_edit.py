"""Rewriting a real capture with edits, through the project's own writer (every checksum valid): the
hostile-record tests use it to make well-formed files that lie."""

import copy

import raiiaf_core as rc


def rewrite(src, dst, *, record=None, metadata=None, tensors=None, image=None):
    """Write `src` again as `dst` with edits: `record(rec)` / `metadata(md)` edit in place, `tensors` replaces
    some tensors, `image` replaces the image bytes. rc.write computes every checksum anew."""
    art = rc.open(src)
    md = copy.deepcopy(art.metadata)
    md.pop("schema_version", None)
    if record is not None:
        record(md["host"]["diffusers"])
    if metadata is not None:
        metadata(md)
    stored = {name: art.load_tensor(name, framework="torch") for name in art.tensor_names}
    stored.update(tensors or {})
    rc.write(dst, image=image if image is not None else art.image_bytes(), tensors=stored, metadata=md,
             environment=art.environment)
    return dst
