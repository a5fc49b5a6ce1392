"""File names in ComfyUI's folders: SaveImage-style prefix tokens and LoadImage-style annotated names.

Numbering and the refusal of prefixes that leave the output folder are the core's (rc.write_numbered);
here, a picked file name must not read outside the input or output folder either.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from raiiaf_core.naming import EXTENSION, inside
from raiiaf_core.png_share import holds_artifact

from .errors import UnsafePathError

OUTPUT_SUFFIX = " [output]"
INPUT_SUFFIX = " [input]"


def expand_prefix(prefix: str, width: int = 0, height: int = 0, now: time.struct_time | None = None) -> str:
    """Expand the tokens SaveImage expands server-side (%width%, %year%, ...; the frontend expands
    %Node.widget% before sending). %batch_num% stays: it differs per image of a batch."""
    now = now or time.localtime()
    values = {
        "%width%": str(width), "%height%": str(height),
        "%year%": str(now.tm_year), "%month%": f"{now.tm_mon:02}", "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}", "%minute%": f"{now.tm_min:02}", "%second%": f"{now.tm_sec:02}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


def resolve_annotated(name: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """The file behind a LoadImage-style name: "x.raiiaf" (input folder) or "sub/x.raiiaf [output]".

    The name is resolved with every link followed and must stay inside its folder. A name leading outside
    gets the same error whether or not something exists there, so the answer reveals nothing about other
    folders; a name the filesystem refuses (too long, a link loop) is an UnsafePathError too.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"file name {_shown(name)} is not a text")
    folder, label = input_dir, "input"
    if name.endswith(OUTPUT_SUFFIX):
        name, folder, label = name[:-len(OUTPUT_SUFFIX)], output_dir, "output"
    elif name.endswith(INPUT_SUFFIX):
        name = name[:-len(INPUT_SUFFIX)]
    if not name or "\0" in name or os.path.isabs(name):
        raise UnsafePathError(f"file name {_shown(name)} points outside the {label} folder")
    path = os.path.join(folder, name)
    if not inside(folder, path):
        raise UnsafePathError(f"file name {_shown(name)} points outside the {label} folder")
    resolved = Path(os.path.realpath(path))
    try:
        resolved.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass  # a missing file is the caller's to report
    except OSError as exc:
        reason = "too long" if exc.errno == errno.ENAMETOOLONG else exc.strerror or str(exc)
        raise UnsafePathError(f"file name {_shown(name)} in the {label} folder cannot be used ({reason})") from None
    return resolved


def _shown(name) -> str:
    text = repr(name)
    return text if len(text) <= 120 else f"{text[:100]}… ({len(name):,} characters)"


def list_raiiaf_files(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[str]:
    """Every .raiiaf under the input folder (plain names) and the output folder (names ending in " [output]"),
    and every PNG made by `raiiaf export` (or Raiiaf Save's PNG option) there."""
    found = []
    for folder, suffix in ((input_dir, ""), (output_dir, OUTPUT_SUFFIX)):
        root = Path(folder)
        if not root.is_dir():
            continue
        # Links leading out of the folder are left out: resolve_annotated would refuse them.
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if _pickable(p) and p.is_file() and inside(root, p))
        found.extend(name + suffix for name in names)
    return found


def _pickable(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix == EXTENSION or suffix == ".png" and _exported(path)


def _exported(path: Path) -> bool:
    """Whether a PNG holds a .raiiaf; remembered per file version, since the lists are made on every page load."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    known = _EXPORTED.get(key)
    if known is None:
        known = _EXPORTED[key] = holds_artifact(path)
        if len(_EXPORTED) > _EXPORTED_MAX:
            _EXPORTED.pop(next(iter(_EXPORTED)))
    return known


_EXPORTED: dict = {}
_EXPORTED_MAX = 100_000
