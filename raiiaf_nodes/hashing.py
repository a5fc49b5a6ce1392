"""sha256 of model files, computed once per file version.

A checkpoint can be several GB; hashing it on every save would stall every queue run. Hashes are kept by
real path, size and modification time (in memory, and in a small JSON file that survives restarts), so a
file is read again only when it changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 8 << 20

Progress = Callable[[int, int], None]


class FileHashCache:
    """sha256 of files keyed by (real path, size, mtime_ns); `cache_file` (optional) persists the entries."""

    def __init__(self, cache_file: str | os.PathLike | None = None):
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._entries: dict[str, dict] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = {}
            if self.cache_file is not None and self.cache_file.is_file():
                try:
                    loaded = json.loads(self.cache_file.read_text(encoding="utf-8"))
                    if isinstance(loaded, dict):
                        self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}
                except (OSError, ValueError) as exc:
                    # A damaged cache only costs re-hashing; it must not stop a save.
                    log.warning("raiiaf: ignoring unreadable hash cache %s (%s)", self.cache_file, exc)
        return self._entries

    def _store(self) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".sha256-cache-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._entries, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("raiiaf: could not write hash cache %s (%s)", self.cache_file, exc)

    def sha256(self, path: str | os.PathLike, progress: Progress | None = None) -> str:
        """The file's sha256 (hex); `progress(bytes_done, bytes_total)` is called while a file is read."""
        real = os.path.realpath(path)
        stat = os.stat(real)
        with self._lock:
            entry = self._load().get(real)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
                return entry["sha256"]
        log.info("raiiaf: computing the sha256 of %s (once per file version)", real)
        digest = hashlib.sha256()
        done = 0
        with open(real, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, stat.st_size)
        value = digest.hexdigest()
        with self._lock:
            self._load()[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
            self._store()
        return value
