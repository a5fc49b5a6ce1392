"""Kill savers with SIGKILL at random moments and check that nothing saved is lost, damaged or left behind.

    python -m bench.killtest --kills 200 [--dir FOLDER] [--seed 1] [--json out.json]

Each round forks a process that saves in a loop -- alternately rc.write replacing one existing file, and
rc.write_numbered adding files with one prefix -- and kills it with SIGKILL after a random delay, spread
over several save durations, so kills land while building, writing, syncing, renaming and cleaning up.
After every kill the folder is checked:

* the replaced file exists, verifies, holds exactly one of the versions the saver meant to write, and is
  not older than the last save the saver reported complete (nothing saved is lost);
* every numbered file verifies and holds what its save meant, every save reported complete is there, and
  no numbered file ever changes once written (never an overwrite);
* no other files appear; temporaries (.raiiaf-tmp) are counted.

At the end one more save goes into each folder: it must leave no temporary behind (the save removes the
ones whose writer is dead). The summary counts kills, completed saves, files lost or damaged (target 0) and
stray temporaries after the next save (target 0), and where the kills landed: before the saver finished any
save, mid-write (the saver's own temporary was left behind) and after it had replaced the file. POSIX only
(fork, SIGKILL); it shows crash safety against killed processes, not against power loss.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENVIRONMENT = {"schema_version": 1, "python": {"version": "3.11.7"}}
TEMP_SUFFIX = ".raiiaf-tmp"  # how saves name their temporaries (raiiaf_core/atomic.py): .<name>.<pid>-<random>.raiiaf-tmp
PREFIX = "batch"


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Versions:
    """What save number `seq` writes: its tensor is one of a fixed pool, so any file can be checked in full."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        # 16 KiB to 1 MiB: big enough that writing and syncing take most of a save, small enough for 200 rounds.
        self.pool = [rng.standard_normal(n).astype(np.float32) for n in (4096, 32768, 65536, 131072, 262144)]
        self.image = _png()

    def tensor(self, seq: int):
        return self.pool[seq % len(self.pool)]

    def save(self, mode: str, folder: Path, seq: int) -> Path:
        import raiiaf_core as rc

        parts = dict(image=self.image, tensors={"noise": self.tensor(seq)}, metadata={"seed": seq},
                     environment=ENVIRONMENT)
        if mode == "replace":
            return rc.write(folder / "target.raiiaf", **parts)
        return rc.write_numbered(folder, PREFIX, **parts)

    def check(self, path: Path) -> tuple[int | None, str | None]:
        """(seq, None) when the file verifies and is exactly what save `seq` wrote, else (seq?, problem)."""
        import raiiaf_core as rc

        try:
            art = rc.verify(path)
            seq = art.metadata.get("seed")
            if not isinstance(seq, int):
                return None, "no save number in the metadata"
            if art.image_bytes() != self.image or not np.array_equal(art.load_tensor("noise"), self.tensor(seq)):
                return seq, f"content differs from what save {seq} wrote"
            return seq, None
        except rc.RaiiafError as exc:
            return None, f"{type(exc).__name__}: {exc}"


def _saver(mode: str, folder: Path, first_seq: int, versions: Versions, report_fd: int) -> None:
    """The forked child: save forever, reporting each completed save on the pipe, until killed."""
    seq = first_seq
    while True:
        path = versions.save(mode, folder, seq)
        os.write(report_fd, f"{seq} {path.name}\n".encode())
        seq += 1


def _temporaries(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


class KillTest:
    def __init__(self, root: Path, seed: int):
        self.root, self.rng, self.versions = root, random.Random(seed), Versions(seed)
        self.folders = {"replace": root / "replace", "numbered": root / "numbered"}
        for folder in self.folders.values():
            folder.mkdir(parents=True)
        self.next_seq = 1
        self.versions.save("replace", self.folders["replace"], 0)  # the file every replace round overwrites
        self.replace_floor = 0  # the newest replace save reported complete: the file may never be older
        self.replace_seq = 0  # the save the replaced file held at the last check
        self.round_number = 0
        self.numbered_seen = {}  # name -> (seq, stat signature): written once, never to change
        self.numbered_reported = {}  # name -> seq, every numbered save reported complete
        self.problems = []
        self.counts = {"kills": 0, "saves_completed": 0, "kills_before_first_save": 0, "kills_mid_write": 0,
                       "kills_after_replacing": 0, "max_temporaries_at_once": 0}
        # Kills come after a random delay of up to `window` seconds. The window adapts to this machine and disk:
        # it widens while savers die before finishing a save and narrows once they finish many, so kills stay
        # spread over the first few saves -- before, during and between them.
        self.window = 0.01

    def round(self, mode: str) -> None:
        self.round_number += 1
        folder = self.folders[mode]
        first_seq = self.next_seq
        self.next_seq += 100_000  # each saver numbers its saves in its own range
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the saver; it never returns
            os.close(read_fd)
            try:
                _saver(mode, folder, first_seq, self.versions, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        # From killing at once (mid-way through the first save) to several saves in.
        time.sleep(self.rng.uniform(0, self.window))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            self.problem(f"the saver died by itself before the kill (wait status {status}): a save raised")
        with os.fdopen(read_fd, "rb") as pipe:
            reported = [line.split(" ", 1) for line in pipe.read().decode().splitlines()]
        self.counts["kills"] += 1
        self.counts["saves_completed"] += len(reported)
        self.counts["kills_before_first_save"] += not reported
        self.window = min(2.0, self.window * (1.3 if not reported else 0.8 if len(reported) > 3 else 1.0))
        temporaries = _temporaries(folder)
        # Its own temporary left behind: the saver died between creating it and giving it its final name.
        self.counts["kills_mid_write"] += any(f".{pid}-" in name for name in temporaries)
        self.counts["max_temporaries_at_once"] = max(self.counts["max_temporaries_at_once"], len(temporaries))
        if mode == "replace":
            self._check_replace(folder, reported)
        else:
            self._check_numbered(folder, reported)

    def problem(self, text: str) -> None:
        self.problems.append(f"round {self.round_number}: {text}")

    def _check_replace(self, folder: Path, reported) -> None:
        if reported:
            self.replace_floor = int(reported[-1][0])
        others = [n for n in os.listdir(folder) if n != "target.raiiaf" and not n.endswith(TEMP_SUFFIX)]
        if others:
            self.problem(f"replace: unexpected files {others}")
        target = folder / "target.raiiaf"
        if not target.exists():
            self.problem("replace: the file is gone (neither the old nor the new version is there)")
            return
        seq, problem = self.versions.check(target)
        if problem:
            self.problem(f"replace: {problem}")
        elif seq < self.replace_floor:
            self.problem(f"replace: holds save {seq}, older than save {self.replace_floor} reported complete")
        else:
            self.counts["kills_after_replacing"] += seq != self.replace_seq
            self.replace_seq = seq

    def _check_numbered(self, folder: Path, reported) -> None:
        for seq, name in reported:
            self.numbered_reported[name] = int(seq)
        for entry in os.scandir(folder):
            if entry.name.endswith(TEMP_SUFFIX):
                continue
            if not (entry.name.startswith(PREFIX + "_") and entry.name.endswith("_.raiiaf")):
                self.problem(f"numbered: unexpected file {entry.name}")
                continue
            st = entry.stat()
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            known = self.numbered_seen.get(entry.name)
            if known is not None:
                if known[1] != signature:
                    self.problem(f"numbered: {entry.name} changed after it was written (overwritten)")
                continue
            seq, problem = self.versions.check(Path(entry.path))
            if problem:
                self.problem(f"numbered: {entry.name}: {problem}")
            self.numbered_seen[entry.name] = (seq, signature)
        for name, seq in self.numbered_reported.items():
            if name not in self.numbered_seen:
                self.problem(f"numbered: {name}, reported saved, is missing")
            elif self.numbered_seen[name][0] != seq:
                self.problem(f"numbered: {name} holds save {self.numbered_seen[name][0]}, not save {seq}")

    def finish(self) -> dict:
        """One more save per folder: it must clean every temporary the killed savers left."""
        left_before = {mode: len(_temporaries(folder)) for mode, folder in self.folders.items()}
        self.round_number += 1
        for mode, folder in self.folders.items():
            path = self.versions.save(mode, folder, self.next_seq)
            check = self._check_replace if mode == "replace" else self._check_numbered
            check(folder, [(str(self.next_seq), path.name)])
            self.next_seq += 1
        stray = {mode: _temporaries(folder) for mode, folder in self.folders.items()}
        for mode, names in stray.items():
            for name in names:
                pid = name[: -len(TEMP_SUFFIX)].rpartition(".")[2].partition("-")[0]
                alive = pid.isdigit() and _alive(int(pid))
                self.problems.append(f"{mode}: temporary {name} left after the next save"
                                     + (" (its pid was reused by a live process)" if alive else ""))
        numbered = [n for n in os.listdir(self.folders["numbered"]) if not n.endswith(TEMP_SUFFIX)]
        return {
            **self.counts,
            "numbered_files": len(numbered),
            "numbered_files_verified": len(self.numbered_seen),
            "temporaries_before_final_save": left_before,
            "stray_temporaries_after_next_save": sum(len(v) for v in stray.values()),
            "files_lost_or_damaged": len(self.problems),
            "problems": self.problems[:50],
            "final_kill_window_s": round(self.window, 4),
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(kills: int, root: Path | None = None, seed: int = 1) -> dict:
    """`kills` rounds, alternating replace and numbered saves; returns the summary."""
    with tempfile.TemporaryDirectory(prefix="raiiaf-killtest-", dir=root) as folder:
        started = time.perf_counter()
        test = KillTest(Path(folder), seed)
        for i in range(kills):
            test.round("replace" if i % 2 == 0 else "numbered")
        summary = test.finish()
        summary["seconds"] = round(time.perf_counter() - started, 1)
        summary["folder_filesystem"] = _filesystem(Path(folder))
        return summary


def _filesystem(path: Path) -> str:
    """The filesystem type the saves went to (from /proc/mounts), since rename and fsync semantics depend on it."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best = max((m for m in mounts if str(path.resolve()).startswith(m[1])), key=lambda m: len(m[1]), default=None)
    return f"{best[2]} ({best[1]})" if best else "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.killtest", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="folder to save in (default: the system's temporary folder)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    summary = run(args.kills, args.dir, args.seed)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if summary["files_lost_or_damaged"] or summary["stray_temporaries_after_next_save"] else 0


if __name__ == "__main__":
    sys.exit(main())
