"""Capture overhead of raiiaf_diffusers: the same pipeline call with and without RaiiafCapture.

    python -m bench.bench_capture [--tiny] [--repeats N] [--steps 4] [--size 64] [--threads 1]

Tiny random-weight StableDiffusionPipeline (raiiaf_diffusers.tiny), 64x64, 4 steps, Euler
ancestral, in this one process. The two calls are timed alternately, by wall clock and by process
CPU time, and the ratio is taken per pair so that drift in machine speed hits both sides alike. "With capture" is the
whole user-visible cost: entering ``capture.recording(pipe)``, the call with
``callback_on_step_end=capture`` (the RNG tape: every randn_tensor draw hashed and every RNG's state
checked around it; per-step latents copy, argument encoding, final-latents hash) and leaving the block. Writing the ``.raiiaf`` file (PNG encoding,
tensors, atomic write with fsync) is timed separately, since it is I/O the user can defer.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

try:
    from .common import Spread
except ImportError:  # run as a script: python bench/bench_capture.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import Spread

TARGET = 1.02


def _paired(baseline, candidate, repeats: int, warmup: int = 3):
    """Alternate the two calls (which goes first alternates too) and time each by wall clock and by
    process CPU time. CPU time leaves out time spent waiting for other processes, so on a busy machine
    it shows the cost of the work itself; ratios are per pair so that drift hits both sides alike."""
    for _ in range(warmup):
        baseline()
        candidate()
    samples = {0: ([], []), 1: ([], [])}
    for i in range(repeats):
        order = (1, 0) if i % 2 else (0, 1)
        for side in order:
            fn = candidate if side else baseline
            gc.collect()  # a collection landing in one side only would be charged to it
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            samples[side][0].append(time.perf_counter() - w0)
            samples[side][1].append(time.process_time() - c0)
    out = []
    for m in (0, 1):  # wall, cpu
        base, cand = samples[0][m], samples[1][m]
        out.append((Spread.of(base), Spread.of(cand), Spread.of(c / b for b, c in zip(base, cand))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_capture", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="few repeats (smoke test; figures meaningless)")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs (default 60, --tiny 4)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, oversubscribed OpenMP threads "
                             "swamp a ratio of a few percent)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (4 if args.tiny else 60)

    import torch

    from raiiaf_diffusers import RaiiafCapture, tiny

    torch.set_num_threads(args.threads)

    pipe = tiny.tiny_sd()
    pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
    call = {"prompt": "a painting of a cat", "num_inference_steps": args.steps, "height": args.size,
            "width": args.size, "guidance_scale": 5.0}
    capture = RaiiafCapture(None)  # keep the record in memory; the write is timed on its own below

    def without():
        pipe(**call, generator=torch.Generator().manual_seed(0))

    def with_capture():
        with capture.recording(pipe):
            pipe(**call, generator=torch.Generator().manual_seed(0), callback_on_step_end=capture)

    wall, cpu = _paired(without, with_capture, repeats)
    with tempfile.TemporaryDirectory(prefix="raiiaf-bench-capture-") as folder:
        target = Path(folder) / "bench.raiiaf"
        capture.last.write(target)  # first write captures the environment once (cached afterwards)
        writes = []
        for _ in range(max(repeats // 2, 3)):
            gc.collect()
            start = time.perf_counter()
            capture.last.write(target)
            writes.append(time.perf_counter() - start)
        write = Spread.of(writes)
        size = target.stat().st_size

    ms = 1000.0
    print(f"tiny StableDiffusionPipeline {args.size}x{args.size}, {args.steps} steps, Euler ancestral, "
          f"{repeats} alternating pairs, torch {torch.__version__} on {torch.get_num_threads()} thread(s)")
    print("                                 wall clock                  process CPU time   (median [min-max])")
    for label, k in (("pipeline call without capture", 0), ("pipeline call with capture", 1)):
        print(f"  {label:<30} {wall[k].scaled(ms).format('{:.1f}', ' ms'):<27} {cpu[k].scaled(ms).format('{:.1f}', ' ms')}")
    print(f"  {'ratio with/without (per pair)':<30} {wall[2].format('{:.3f}'):<27} {cpu[2].format('{:.3f}')}")
    print(f"  {'ratio of medians':<30} {wall[1].median / wall[0].median:<27.3f} {cpu[1].median / cpu[0].median:.3f}")
    print(f"  file write (separate)          {write.scaled(ms).format('{:.2f}', ' ms')}  ({size:,} bytes, fsync included)")
    verdict = "met" if wall[2].median <= TARGET else "NOT met"
    print(f"  target: median per-pair wall ratio <= {TARGET}: {verdict}"
          + ("  (--tiny: too few repeats to judge)" if args.tiny else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
