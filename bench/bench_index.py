"""The archive index: build rate for many local files and the time of the README's DuckDB queries, each against
what a user does without an index (opening every file), in the same process on the same files.

    python -m bench.bench_index [--tiny] [--files N] [--repeats N] [--dir DIR]

The files are distinct ComfyUI-style saves (prompt + workflow, 96x96 PNG, (1,4,12,12) noise) in three
environments; they are written with rc.write on tmpfs when there is one (its fsync is free: on disk, writing
10 000 files would take longer than everything measured) and copied into the work folder.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import raiiaf_core as rc
from raiiaf_core.layout import FIRST_READ

from .bench_format import comfy_metadata, comfy_prompt, comfy_workflow, encode_png, photo_like
from .common import Spread, load_average, paired, table, time_once

FULL_FILES, FULL_REPEATS = 10_000, 3
TINY_FILES, TINY_REPEATS = 40, 1
SIDE = 96
SAMPLERS = ("euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim")
MODELS = tuple(f"{k:x}" * 64 for k in range(1, 6))  # five checkpoints, by sha256
LORAS = tuple(f"{k:x}" * 64 for k in range(10, 14))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_index", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_FILES} files, one repeat (smoke test)")
    parser.add_argument("--files", type=int, default=None, help=f"files to index (default {FULL_FILES:,})")
    parser.add_argument("--repeats", type=int, default=None, help=f"paired repeats (default {FULL_REPEATS})")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raiiaf-bench-index-", dir=args.dir))
    try:
        run(args.tiny, work, files=args.files, repeats=args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(tiny: bool, work: Path, *, files: int | None = None, repeats: int | None = None) -> None:
    n = files or (TINY_FILES if tiny else FULL_FILES)
    repeats = repeats or (TINY_REPEATS if tiny else FULL_REPEATS)
    print(f"\n== Archive index: {n:,} local files, ComfyUI-style saves in 3 environments; median [min-max] over "
          f"{repeats} paired runs ==", flush=True)
    try:
        import duckdb

        from raiiaf_core.index import EXAMPLE_QUERIES, build_index, environment_key
    except ImportError as exc:
        print(f"  skipped: {exc.name} is not installed (pip install 'raiiaf-plugins[archive]')")
        return
    folder = work / "archive"
    paths = _write_files(folder, n)
    output = work / "archive.parquet"
    size = sum(p.stat().st_size for p in paths) / n

    def scan():
        for path in paths:
            art = rc.open(path)
            art.metadata, art.environment

    def build(workers=None):
        output.unlink(missing_ok=True)
        return build_index([folder], output, workers=workers, progress=False)

    report = build()
    assert report.rows == n and not report.errors, report.format()
    fresh = paired(scan, build, repeats)
    single = Spread.of(time_once(lambda: build(1)) for _ in range(repeats))
    many = Spread.of(time_once(lambda: build(16)) for _ in range(repeats))
    build()
    rerun = Spread.of(time_once(lambda: build_index([folder], output, progress=False)) for _ in range(repeats))

    def rate(seconds: Spread) -> Spread:
        return Spread(n / seconds.median, n / seconds.high, n / seconds.low)

    needed = max(c.offset + c.length for c in rc.open(paths[0]).chunks if c.type in ("metadata", "environment"))
    print(f"  files: {size:,.0f} B each; header, index, metadata and environment: the first {needed:,} B "
          f"({'within' if needed <= FIRST_READ else 'beyond'} the reader's first read of {FIRST_READ:,} B); "
          "page cache warm")
    rows = [("", "files/s", "seconds")]
    rows.append(("sequential rc.open(p).metadata + .environment (baseline)", rate(fresh.baseline).format("{:,.0f}"),
                 fresh.baseline.format("{:.2f}")))
    rows.append(("build_index, no index yet (default 4 threads)", rate(fresh.candidate).format("{:,.0f}"),
                 fresh.candidate.format("{:.2f}")))
    rows.append(("build_index, no index yet, 1 thread", rate(single).format("{:,.0f}"), single.format("{:.2f}")))
    rows.append(("build_index, no index yet, 16 threads", rate(many).format("{:,.0f}"), many.format("{:.2f}")))
    rows.append(("build_index again, nothing changed (stat only)", rate(rerun).format("{:,.0f}"),
                 rerun.format("{:.2f}")))
    for line in table(rows):
        print(line)
    print(f"  ratio build / baseline, wall clock {fresh.ratio.format('{:.2f}')}, process CPU "
          f"{fresh.cpu_ratio.format('{:.2f}')}; index {output.stat().st_size:,} B "
          f"({output.stat().st_size / n:,.0f} B per file)")

    here = rc.capture_environment()
    queries = {
        "model_and_sampler": ({"model_sha256": MODELS[0], "sampler": SAMPLERS[0]},
                              lambda meta, env: (meta.get("model") or {}).get("sha256") == MODELS[0]
                              and meta.get("sampler") == SAMPLERS[0]),
        "environment_differs": ({"environment_key": environment_key(here)},
                                lambda meta, env: rc.drift(env, here).can_change_output),
    }
    rows = [("query", "DuckDB on the index", "opening every file", "ratio", "rows")]
    for name, (params, wanted) in queries.items():
        sql, bound = EXAMPLE_QUERIES[name], {"index": str(output), **params}

        def with_index():
            return sorted(row[0] for row in duckdb.execute(sql, bound).fetchall())

        def without_index():
            found = []
            for path in paths:
                art = rc.open(path)
                if wanted(art.metadata, art.environment):
                    found.append(str(path))
            return sorted(found)

        answer = with_index()
        # Opening every file is timed once, in the same pass that checks the index's answer: it is the scan
        # above again, seconds long, and its spread is in the baseline row there.
        started = time.perf_counter()
        assert without_index() == answer, f"{name}: the index and the files disagree"
        scan_seconds = time.perf_counter() - started
        query = Spread.of(time_once(with_index) for _ in range(5 * repeats))
        rows.append((name, query.scaled(1e3).format("{:.1f}", " ms"), f"{scan_seconds * 1e3:,.0f} ms",
                     f"{query.median / scan_seconds:.4f}", f"{len(answer):,}"))
    for line in table(rows):
        print(line)
    print(f"  the same answers both ways (checked); DuckDB: {5 * repeats} runs, each reading the Parquet file "
          "anew; opening every file: one run")
    print(f"  ({load_average()})", flush=True)


def _write_files(folder: Path, n: int) -> list:
    stage_root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    stage = Path(tempfile.mkdtemp(prefix="raiiaf-bench-index-", dir=stage_root))
    try:
        image = encode_png(photo_like(SIDE, 0))
        noise = np.random.default_rng(0).standard_normal((1, 4, 12, 12)).astype(np.float32)
        environments = _environments()
        for i in range(n):
            prompt = comfy_prompt(i, SIDE)
            meta = comfy_metadata(i, SIDE, prompt, comfy_workflow(prompt))
            meta["sampler"] = SAMPLERS[i % len(SAMPLERS)]
            meta["model"] = {"name": f"model_{i % len(MODELS)}.safetensors", "sha256": MODELS[i % len(MODELS)],
                             "files": [{"role": "lora", "name": f"lora_{i % len(LORAS)}.safetensors",
                                        "sha256": LORAS[i % len(LORAS)]}]}
            sub = stage / f"{i // 1000:03d}"  # a thousand files per folder, as a busy output folder grows
            sub.mkdir(exist_ok=True)
            rc.write(sub / f"ComfyUI_{i:05d}_.raiiaf", image=image, tensors={"noise": noise}, metadata=meta,
                     environment=environments[i % len(environments)])
        shutil.copytree(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return sorted(folder.rglob("*.raiiaf"))


def _environments() -> list:
    """This machine's environment, one with another torch, one on a GPU."""
    here = rc.capture_environment()
    other_torch = copy.deepcopy(here)
    other_torch.setdefault("torch", {})["version"] = "2.4.1+cpu"
    gpu = copy.deepcopy(here)
    gpu["gpu"] = [{"name": "NVIDIA GeForce RTX 4090", "capability": "8.9", "memory": 25_393_692_672,
                   "multiprocessors": 128, "driver": "550.54.14"}]
    return [here, other_torch, gpu]


if __name__ == "__main__":
    sys.exit(main())
