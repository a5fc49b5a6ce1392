"""`raiiaf import`: PNGs turned into .raiiaf files, their bytes stored unchanged.

Three kinds are recognised, in this order:

- a PNG made by `raiiaf export` (png_share.py): the .raiiaf inside it, checked, written back byte for byte;
- a ComfyUI PNG (SaveImage, PreviewImage and the image saver packs store the API graph as `prompt`): the
  graph's settings, prompts and model names, and KSampler's initial noise rebuilt from seed and latent size,
  as Raiiaf Save would have recorded them (raiiaf_nodes/from_saveimage.py);
- an A1111/Forge PNG (`parameters`, infotext.py): its settings; such a PNG holds no noise, and the file says so.

Anything else is reported and skipped. The PNG is not re-encoded, and the machine that made it is unknown:
the environment is stored empty rather than this machine's. Imports are deterministic: importing the same
PNG again gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import infotext, layout, png, png_share
from .atomic import write_atomic
from .errors import CorruptFileError, NoArtifactError, RaiiafError, ReadError
from .naming import EXTENSION
from .reader import open_artifact
from .writer import write

KINDS = {"raiiaf": "raiiaf export", "comfyui": "ComfyUI", "a1111": "A1111/Forge"}
MAX_PNG_BYTES = 1 << 30  # a PNG is read whole (its bytes are the file's image); larger ones are refused
A1111_NOISE = ("none: an A1111/Forge PNG records the seed, not the noise, which the web UI draws with its own "
               "RNG settings; this file holds the settings only and cannot be replayed")


@dataclass(frozen=True)
class Imported:
    """One PNG's outcome: `kind` and `output` when it was imported; `failed` when it was skipped for a fault
    (damaged, unreadable) rather than for holding nothing to import."""

    source: Path
    output: Path | None
    kind: str | None
    message: str
    failed: bool = False


def import_png(source, output, *, limits: layout.Limits = layout.DEFAULT_LIMITS) -> Imported:
    """Write the .raiiaf of one PNG at `output` (atomically, replacing a file there); returns what was done.

    Raises NoArtifactError for a PNG that holds nothing to import, another RaiiafError when it cannot be read
    or is damaged.
    """
    source, output = Path(source), Path(output)
    if _head(source) != png.SIGNATURE:
        raise NoArtifactError(f"{source}: not a PNG file")
    try:
        art = open_artifact(source, limits)
    except NoArtifactError:  # no raiiaf chunk: an image with generation metadata, or not
        art = None
    if art is not None:
        art.verify()
        write_atomic(output, png_share.raiiaf_bytes(art))
        return Imported(source, output, "raiiaf", "the .raiiaf it was exported from, byte for byte")
    data = _read(source)
    texts = png.texts(data, str(source), max_text=limits.max_json_bytes, max_chunks=limits.max_chunks)
    width, height = png_size(data)
    prompt = _json_text(texts.get("prompt"), source, limits)
    from raiiaf_nodes import from_saveimage  # the ComfyUI graph, read as the save node reads it

    if from_saveimage.is_graph(prompt):
        made = from_saveimage.contents(prompt, _json_text(texts.get("workflow"), source, limits), width, height)
        kind, metadata, tensors, noise = "comfyui", made.metadata, made.tensors, made.noise
    elif texts.get("parameters", "").strip():
        text = texts["parameters"]
        # The image's own size: the infotext's Size is the first pass's (before a hires upscale); it is kept below.
        metadata = {**infotext.metadata_of(text), "width": width, "height": height,
                    "host": {"a1111": {"parameters": text, "settings": infotext.parse(text)[2]}}}
        kind, tensors, noise = "a1111", {}, A1111_NOISE
    else:
        raise NoArtifactError(f"{source}: holds no generation metadata (no ComfyUI prompt, no A1111 parameters, "
                              "no raiiaf chunk)")
    from . import __version__

    metadata = {**metadata, "generator": {"name": "raiiaf import", "version": __version__},
                "extra": {"import": {"from": kind, "file": source.name, "noise": noise}}}
    write(output, image=data, tensors=tensors, metadata=metadata, environment={})
    return Imported(source, output, kind, f"noise {noise}" if kind == "comfyui" else "settings only, no noise")


def png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _head(source: Path) -> bytes:
    try:
        with open(source, "rb") as f:
            return f.read(len(png.SIGNATURE))
    except OSError as exc:
        raise ReadError(f"{source}: cannot read ({exc.strerror or exc})") from None


def _read(source: Path) -> bytes:
    try:
        size = source.stat().st_size
        if size > MAX_PNG_BYTES:
            raise RaiiafError(f"{source}: {size:,} bytes, over the {MAX_PNG_BYTES:,} bytes an import reads")
        return source.read_bytes()
    except OSError as exc:
        raise ReadError(f"{source}: cannot read ({exc.strerror or exc})") from None


def _json_text(text: str | None, source: Path, limits: layout.Limits):
    """A JSON text chunk, parsed within the limits a .raiiaf's JSON is held to; None when absent or not JSON."""
    if text is None:
        return None
    try:
        return layout.decode_json(text.encode("utf-8"), "text chunk", str(source), limits)
    except CorruptFileError:
        return None


# -- many PNGs --------------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    results: list = field(default_factory=list)  # Imported, in the order the PNGs were done

    @property
    def imported(self) -> list:
        return [r for r in self.results if r.kind is not None]

    @property
    def failed(self) -> list:
        return [r for r in self.results if r.failed]

    def format(self) -> str:
        """The closing line: how many of each kind were imported, how many skipped and failed."""
        counts = {label: sum(r.kind == kind for r in self.results) for kind, label in KINDS.items()}
        kinds = ", ".join(f"{n} {label}" for label, n in counts.items() if n) or "none"
        skipped = len(self.results) - len(self.imported) - len(self.failed)
        return (f"imported {len(self.imported)} of {len(self.results)} PNG(s): {kinds}; {skipped} skipped (no "
                f"generation metadata); {len(self.failed)} failed")


def import_pngs(sources, output, *, limits: layout.Limits = layout.DEFAULT_LIMITS,
                progress: Callable[[int, int, Imported], None] | None = None) -> ImportReport:
    """Import PNG files and every *.png under folders (recursively) into .raiiaf files under the folder
    `output`, keeping the folders' layout; or into the file `output` for one PNG and an `output` ending in
    .raiiaf. Each PNG is reported, never raised: `progress(done, total, result)` after each."""
    sources = [Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    jobs = _jobs(sources, Path(output))
    report, taken = ImportReport(), set()
    for done, (source, target) in enumerate(jobs, 1):
        if target in taken:
            result = Imported(source, None, None, f"another PNG of this import is written to {target}", True)
        else:
            taken.add(target)
            result = _one(source, target, limits)
        report.results.append(result)
        if progress is not None:
            progress(done, len(jobs), result)
    return report


def _one(source: Path, target: Path, limits: layout.Limits) -> Imported:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return import_png(source, target, limits=limits)
    except NoArtifactError as exc:
        return Imported(source, None, None, str(exc))
    except RaiiafError as exc:
        return Imported(source, None, None, str(exc), True)
    except OSError as exc:
        return Imported(source, None, None, f"{target.parent}: cannot create the folder ({exc.strerror or exc})",
                        True)


def _jobs(sources: list[Path], output: Path) -> list[tuple[Path, Path]]:
    if output.suffix == EXTENSION:
        if len(sources) != 1 or sources[0].is_dir():
            raise RaiiafError(f"{output}: names one .raiiaf, for one PNG; give a folder to import several")
        return [(sources[0], output)]
    jobs = []
    for source in sources:
        if source.is_dir():
            found = sorted(p for p in source.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
            jobs += [(p, output / p.relative_to(source).with_suffix(EXTENSION)) for p in found]
        elif source.exists():
            jobs.append((source, output / source.with_suffix(EXTENSION).name))
        else:
            raise ReadError(f"{source}: no such file or folder")
    return jobs
