"""Timing and reporting helpers shared by the benchmarks: medians with min-max spread, paired ratios,
bytes read through /proc/self/io, and a description of the machine the figures came from."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their min-max range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples) -> "Spread":
        samples = list(samples)
        return cls(statistics.median(samples), min(samples), max(samples))

    def scaled(self, factor: float) -> "Spread":
        return Spread(self.median * factor, self.low * factor, self.high * factor)

    def format(self, fmt: str = "{:.2f}", unit: str = "") -> str:
        return f"{fmt.format(self.median)}{unit} [{fmt.format(self.low)}-{fmt.format(self.high)}]"


def time_once(fn, count: int = 1) -> float:
    """Seconds per call of fn() over `count` back-to-back calls (batched so tiny calls rise above timer noise)."""
    return measure(fn, count)[0]


def measure(fn, count: int = 1, collect: bool = True) -> tuple:
    """(wall seconds, process CPU seconds) per call of fn(); `collect=False` for a caller that collects itself
    (a full collection costs more than a short call)."""
    # A collection landing inside one side of a comparison would be charged to that side only.
    if collect:
        gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        fn()
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


@dataclass(frozen=True)
class Comparison:
    baseline: Spread  # wall seconds per call
    candidate: Spread
    ratio: Spread  # candidate / baseline, wall clock, per pair
    cpu_ratio: Spread  # the same for process CPU time: steadier on a busy machine, blind to fsync waits


def paired(baseline, candidate, repeats: int, count: int = 1, warmup: int = 1) -> Comparison:
    """Time two operations alternately, taking the ratios per pair of runs.

    Each repeat times both sides back to back, alternating which goes first: drift in the machine's speed
    (other processes, CPU boost, page cache) then hits both sides alike instead of biasing whichever ran
    later.
    """
    for _ in range(warmup):
        baseline()
        candidate()
    base, cand = [], []
    for i in range(repeats):
        if i % 2:
            c = measure(candidate, count)
            b = measure(baseline, count)
        else:
            b = measure(baseline, count)
            c = measure(candidate, count)
        base.append(b)
        cand.append(c)
    return Comparison(Spread.of(b[0] for b in base), Spread.of(c[0] for c in cand),
                      Spread.of(c[0] / b[0] for b, c in zip(base, cand)),
                      # The floor only guards against a CPU clock too coarse to see a very short call.
                      Spread.of(c[1] / max(b[1], 1e-9) for b, c in zip(base, cand)))


def rchar() -> int | None:
    """Bytes this process has read through read()-style system calls so far (Linux); None elsewhere."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def read_bytes_during(fn):
    """(fn's result, bytes read from files while it ran, or None where the kernel does not count them)."""
    before = rchar()
    # Reading /proc/self/io is itself a read, of a length that changes with the counts' digits: measured
    # right here, next to the reading it is taken off.
    probe = rchar()
    result = fn()
    after = rchar()
    if before is None or after is None:
        return result, None
    return result, after - probe - (probe - before)


def _version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _filesystem(path: str) -> str:
    """The mount type holding `path` (tmpfs and disks behave very differently for fsync-heavy writes)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                    best, kind = fields[1], f"{fields[2]} ({fields[0]})"
    except OSError:
        pass
    return kind


def machine_description(work_dir: str) -> list[str]:
    """Lines naming the machine and the software versions the figures depend on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), memory {_memory_gib()}",
        f"OS: {platform.system()} {platform.release()} {platform.machine()}; Python {platform.python_version()}",
        f"files in: {work_dir} on {_filesystem(os.path.realpath(work_dir))}, page cache warm (files just written)",
        "packages: " + ", ".join(f"{name} {_version(name)}" for name in
                                 ("torch", "numpy", "pillow", "safetensors", "zstandard")),
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {load_average()}",
    ]


def load_average() -> str:
    """Other work on the machine skews the timings; the paired ratios suffer least, but say how busy it was."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def table(rows, indent: str = "  ") -> list[str]:
    """Left-align the first column and right-align the others."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        out.append(indent + "  ".join(cells).rstrip())
    return out
