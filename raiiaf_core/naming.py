"""Output names from a filename prefix, as ComfyUI's SaveImage makes them, and the one test of whether a path
stays inside a folder."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from .errors import WriteError

EXTENSION = ".raiiaf"
# Folder levels a prefix may have: deeper ones are refused (Path.mkdir(parents=True) recurses once per level).
MAX_PREFIX_LEVELS = 64


def inside(folder, path) -> bool:
    """Whether `path` is `folder` or lies under it once every symlink in either has been followed.

    A link planted inside the folder and pointing out of it is outside; a dangling link is judged by where it
    points. The answer does not depend on whether `path` exists.
    """
    try:
        root, target = os.path.realpath(folder), os.path.realpath(path)
        return os.path.normcase(os.path.commonpath((root, target))) == os.path.normcase(root)
    except (OSError, ValueError, RecursionError):  # a link cycle too deep to follow, paths on two drives
        return False


def resolve_prefix(output_dir, prefix: str) -> tuple[Path, str]:
    """Split 'sub/dir/name' into (checked folder, 'name'); the folder must stay inside output_dir.

    The check follows links, so '..', absolute prefixes and symlinked folders pointing outside are all
    refused the same way.
    """
    if not isinstance(prefix, str) or not prefix.strip() or "\0" in prefix:
        raise WriteError(f"filename prefix {prefix!r} is empty or invalid")
    root = Path(os.path.realpath(output_dir))
    relative = Path(prefix.replace("\\", "/"))
    shown = prefix if len(prefix) <= 200 else f"{prefix[:200]}… ({len(prefix):,} characters)"
    if relative.is_absolute() or relative.drive:
        raise WriteError(f"filename prefix {shown!r} is an absolute path; it must stay inside {root}")
    if len(relative.parts) > MAX_PREFIX_LEVELS + 1:
        raise WriteError(f"filename prefix {shown!r} has {len(relative.parts) - 1:,} folder levels; at most "
                         f"{MAX_PREFIX_LEVELS} are allowed")
    folder = root / relative.parent
    if not inside(root, folder):
        raise WriteError(f"filename prefix {shown!r} leads outside the output folder {root}")
    name = relative.name
    if name in ("", ".", "..") or prefix.endswith(("/", "\\")):
        raise WriteError(f"filename prefix {shown!r} does not end in a file name")
    return Path(os.path.realpath(folder)), name


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
