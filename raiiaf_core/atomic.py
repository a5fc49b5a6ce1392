"""Atomic file replacement: a temporary file in the target folder, fsync, then rename (or link when exclusive)."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from .errors import TargetExistsError, WriteError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".raiiaf-tmp"
# A temporary file whose writer is gone, or that is this old, is debris from a crash.
STALE_AFTER_S = 24 * 3600


def temp_path_for(path: Path) -> Path:
    # The writer's pid is in the name so a later save can tell a crashed writer's debris from a live one.
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_atomic(path, parts, *, exclusive: bool = False, durable: bool = True) -> Path:
    """Write the byte strings `parts` to `path` so that readers see the old file or the whole new one.

    A link at `path` is replaced, never written through. `durable=False` skips the fsyncs (for files that
    may be lost in a crash, like previews), not the atomicity.
    """
    path = Path(path)
    if exclusive:
        return write_new(path.parent, [path.name], parts)

    def replace(tmp: Path) -> Path:
        os.replace(tmp, path)
        return path

    return _write(path, parts, replace, durable)


def write_new(folder, names, parts) -> Path:
    """Write `parts` once, then give the file the first name from `names` that is free, atomically.

    link() fails when the name exists, so concurrent writers (threads or processes) never replace each
    other's files; a taken name just moves on to the next one.
    """
    folder = Path(folder)

    def link_first_free(tmp: Path) -> Path:
        target = folder
        for name in names:
            target = folder / name
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError as exc:  # the name itself is refused (too long, invalid): say which name
                raise WriteError(f"{target}: cannot be created ({exc.strerror or exc})") from None
            os.unlink(tmp)
            return target
        raise TargetExistsError(f"{target}: a file already exists under this name")

    return _write(folder / "new", parts, link_first_free)


def _write(path: Path, parts, commit, durable: bool = True) -> Path:
    """Write `parts` to a fresh temporary beside `path`, fsync it, then let `commit` give it its final name."""
    folder = path.parent
    if not folder.is_dir():
        raise WriteError(f"{path}: folder {folder} does not exist")
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        final = commit(tmp)
        if durable:
            _fsync_folder(folder)
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"{path}: write failed, nothing was changed ({exc.strerror or exc})") from exc
        raise
    clean_stale_temporaries(folder)
    return final


def clean_stale_temporaries(folder: Path) -> int:
    """Remove temporaries left by crashed writers in `folder`; returns how many were removed."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
            continue
        pid = _pid_from_name(entry.name)
        try:
            stale = pid is None or not _alive(pid) or now - entry.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if stale and _remove_quietly(Path(entry.path)):
            removed += 1
            log.info("removed a temporary file left by an interrupted save: %s", entry.path)
    return removed


def _pid_from_name(name: str):
    stem = name[: -len(TEMP_SUFFIX)]
    pid, _, _ = stem.rpartition(".")[2].partition("-")
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, and not needed for atomicity.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
