"""`python -m bench`: how raiiaf compares with what users would pick instead, in one run on one machine.

Sections: machine, size, compact noise against SaveImage (bench/bench_recipe.py), save time, metadata scan,
latent load, archive index (bench/bench_index.py), the shareable PNG (bench/bench_share.py), capture
overhead (bench/bench_capture.py), capture overhead in a real ComfyUI (bench/bench_comfyui.py; opt-in: runs
only when RAIIAF_COMFYUI_PATH is set).
`--tiny` (alias `--quick`) runs everything on tiny inputs in seconds, for the smoke test.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import bench_format, bench_index, bench_recipe, bench_share
from .common import load_average, machine_description


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", "--quick", action="store_true", help="tiny inputs, few repeats (smoke test)")
    parser.add_argument("--no-v1", action="store_true", help="skip the raiiaf 1.1.0 library (its own venv)")
    parser.add_argument("--no-capture", action="store_true", help="skip the capture benchmark (the slowest part)")
    parser.add_argument("--no-comfyui", action="store_true",
                        help="skip the capture benchmark in a real ComfyUI (otherwise it runs if RAIIAF_COMFYUI_PATH "
                             "is set)")
    parser.add_argument("--dir", default=None, help="where to write the benchmark files (default: a temp dir)")
    args = parser.parse_args(argv)
    config = bench_format.TINY if args.tiny else bench_format.FULL

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="raiiaf-bench-", dir=args.dir))
    try:
        print("== Machine ==")
        for line in machine_description(str(work)):
            print(line)
        print(f"mode: {'tiny (smoke test; figures meaningless)' if args.tiny else 'full'}", flush=True)

        if args.no_v1:
            v1, v1_note = None, "skipped (--no-v1)"
        else:
            v1, v1_note = bench_format.V1Library.ensure()
            if v1 is None:
                print(f"raiiaf 1.1.0 unavailable: {v1_note}")

        bench_format.run_size(config, work, v1, v1_note)
        bench_recipe.run(args.tiny, work)
        files = bench_format.run_save(config, work)
        bench_format.run_scan(config, work, v1, v1_note)
        bench_format.run_latent_load(config, files)
        bench_index.run(args.tiny, work)
        bench_share.run(args.tiny, work)
        if args.no_capture:
            print("\n== Capture overhead ==\nskipped (--no-capture)")
        else:
            run_capture(args.tiny)
        if args.no_comfyui:
            print("\n== Capture overhead, ComfyUI ==\nskipped (--no-comfyui)")
        else:
            run_comfyui(args.tiny, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n(total {time.perf_counter() - started:.0f} s; {load_average()})")
    return 0


def run_capture(tiny: bool) -> None:
    print("\n== Capture overhead ==", flush=True)
    try:
        # Imported only here: it pulls in diffusers, which the format benchmarks do not need.
        capture = importlib.import_module(f"{__package__}.bench_capture")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.bench_capture":
            raise
        print("the capture benchmark (bench/bench_capture.py) is not available yet")
        return
    capture.main(["--tiny"] if tiny else [])
    sys.stdout.flush()


def run_comfyui(tiny: bool, work: Path) -> None:
    print("\n== Capture overhead, ComfyUI ==", flush=True)
    # Imported only here, like the capture benchmark; it skips itself (and says how to enable it) without ComfyUI.
    comfyui = importlib.import_module(f"{__package__}.bench_comfyui")
    comfyui.main((["--tiny"] if tiny else []) + ["--dir", str(work), "--no-machine"])
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
