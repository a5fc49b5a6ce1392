"""Output names from a filename prefix, as ComfyUI's SaveImage makes them, refusing escapes from the folder."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from .errors import WriteError

EXTENSION = ".raiiaf"


def resolve_prefix(output_dir, prefix: str) -> tuple[Path, str]:
    """Split 'sub/dir/name' into (checked folder, 'name'); the folder must stay inside output_dir.

    The check runs on resolved paths, so '..', absolute prefixes and symlinked folders pointing outside
    are all refused the same way.
    """
    if not isinstance(prefix, str) or not prefix.strip() or "\0" in prefix:
        raise WriteError(f"filename prefix {prefix!r} is empty or invalid")
    root = Path(output_dir).resolve()
    relative = Path(prefix.replace("\\", "/"))
    if relative.is_absolute() or relative.drive:
        raise WriteError(f"filename prefix {prefix!r} is an absolute path; it must stay inside {root}")
    folder = (root / relative).parent.resolve()
    if folder != root and root not in folder.parents:
        raise WriteError(f"filename prefix {prefix!r} leads outside the output folder {root}")
    name = relative.name
    if name in ("", ".", "..") or prefix.endswith(("/", "\\")):
        raise WriteError(f"filename prefix {prefix!r} does not end in a file name")
    return folder, name


def numbered_names(folder: Path, name: str, extension: str = EXTENSION):
    """'name_00001_.raiiaf', 'name_00002_.raiiaf', ... starting after the highest number already there."""
    pattern = re.compile(re.escape(name) + r"_(\d+)_" + re.escape(extension) + "$")
    highest = 0
    try:
        for entry in os.scandir(folder):
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    except FileNotFoundError:
        pass
    return (f"{name}_{counter:05d}_{extension}" for counter in itertools.count(highest + 1))
