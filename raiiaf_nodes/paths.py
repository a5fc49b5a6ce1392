"""File names in ComfyUI's folders: SaveImage-style filename prefixes and LoadImage-style annotated names.

Both refuse anything that would land outside the folder it belongs to: a prefix such as `../x` or `/etc/x`
must not let a shared workflow write elsewhere, and a picked file name must not read elsewhere.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsafePathError

EXTENSION = ".raiiaf"
OUTPUT_SUFFIX = " [output]"
INPUT_SUFFIX = " [input]"


@dataclass(frozen=True)
class SaveTarget:
    """Where the next files of one save go: `folder/<filename>_<counter:05>_.raiiaf`, counter counting up."""

    folder: Path
    filename: str
    counter: int
    subfolder: str

    def name_for(self, counter: int, batch_number: int) -> str:
        return f"{self.filename.replace('%batch_num%', str(batch_number))}_{counter:05}_{EXTENSION}"


def _expand_tokens(prefix: str, width: int, height: int, now: time.struct_time) -> str:
    # The same tokens SaveImage expands server-side (the frontend expands %Node.widget% before sending).
    values = {
        "%width%": str(width), "%height%": str(height),
        "%year%": str(now.tm_year), "%month%": f"{now.tm_mon:02}", "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}", "%minute%": f"{now.tm_min:02}", "%second%": f"{now.tm_sec:02}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


def inside(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    folder = os.path.abspath(folder)
    return os.path.commonpath((folder, os.path.abspath(path))) == folder


def resolve_save_target(filename_prefix: str, output_dir: str | os.PathLike, width: int = 0, height: int = 0,
                        now: time.struct_time | None = None) -> SaveTarget:
    """Resolve a SaveImage-style prefix ("sub/dir/name", tokens like %date parts%) inside `output_dir`.

    The counter continues after the highest `<name>_<digits>_` already in the folder, so a .raiiaf never
    replaces an earlier one; the folder is created when missing.
    """
    output_dir = os.path.abspath(output_dir)
    prefix = _expand_tokens(filename_prefix, width, height, now or time.localtime()) if "%" in filename_prefix \
        else filename_prefix
    normalized = os.path.normpath(prefix)
    subfolder, filename = os.path.split(normalized)
    folder = os.path.join(output_dir, subfolder)
    if not filename or filename in (".", "..") or not inside(output_dir, folder):
        raise UnsafePathError(f"filename prefix {filename_prefix!r} points outside the output folder {output_dir}; "
                              "use a name or a relative sub/folder/name")
    os.makedirs(folder, exist_ok=True)
    counter = 1 + max((_counter_of(entry, filename) for entry in os.listdir(folder)), default=0)
    return SaveTarget(Path(folder), filename, counter, subfolder.replace(os.sep, "/"))


def _counter_of(entry: str, filename: str) -> int:
    head = f"{filename}_"
    if os.path.normcase(entry[:len(head)]) != os.path.normcase(head):
        return 0
    match = re.match(r"(\d+)_", entry[len(head):])
    return int(match.group(1)) if match else 0


def resolve_annotated(name: str, input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """The file behind a LoadImage-style name: "x.raiiaf" (input folder) or "sub/x.raiiaf [output]"."""
    folder, label = input_dir, "input"
    if name.endswith(OUTPUT_SUFFIX):
        name, folder, label = name[:-len(OUTPUT_SUFFIX)], output_dir, "output"
    elif name.endswith(INPUT_SUFFIX):
        name = name[:-len(INPUT_SUFFIX)]
    path = os.path.join(os.path.abspath(folder), name)
    if not name or os.path.isabs(name) or not inside(folder, path):
        raise UnsafePathError(f"file name {name!r} points outside the {label} folder")
    return Path(path)


def list_raiiaf_files(input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[str]:
    """Every .raiiaf under the input folder (plain names) and the output folder (names ending in " [output]")."""
    found = []
    for folder, suffix in ((input_dir, ""), (output_dir, OUTPUT_SUFFIX)):
        root = Path(folder)
        if not root.is_dir():
            continue
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{EXTENSION}") if p.is_file())
        found.extend(name + suffix for name in names)
    return found
