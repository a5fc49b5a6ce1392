"""Offline demo: generate with a tiny pipeline, write a .raiiaf, replay it in a new process.

    python -m raiiaf_diffusers.demo [--out DIR]

Builds the tiny random-weight StableDiffusionPipeline shipped in raiiaf_diffusers.tiny (no
download), generates one 64x64 image with an ancestral sampler (fresh noise every step, drawn from
the generator), writes DIR/demo.raiiaf, prints its inspect summary, replays it in a new Python
process and prints the fidelity verdict. Exit status 0 only when the replay is bit-exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _subprocess_env() -> dict:
    # The new process must import this same raiiaf_diffusers, installed or not.
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raiiaf_diffusers.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="folder for demo.raiiaf (default: out)")
    args = parser.parse_args(argv)

    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    import raiiaf_core as rc
    from raiiaf_core import cli

    from . import tiny
    from .capture import RaiiafCapture

    t0 = time.perf_counter()
    pipe = tiny.tiny_sd()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    path = Path(args.out) / "demo.raiiaf"
    capture = RaiiafCapture(path)
    with capture.recording(pipe):
        pipe(
            "a painting of a cat",
            negative_prompt="blurry",
            num_inference_steps=8,
            guidance_scale=5.0,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(42),
            callback_on_step_end=capture,
        )
    print(f"generated and wrote {path} ({path.stat().st_size} bytes) in {time.perf_counter() - t0:.2f} s\n")

    cli.main(["inspect", str(path)])
    rc.verify(path)

    print(f"\nreplaying {path} in a new Python process ...")
    proc = subprocess.run(
        [sys.executable, "-m", "raiiaf_diffusers.tiny_replay", str(path)],
        capture_output=True, text=True, env=_subprocess_env(), check=False,
    )
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not reports or "verdict" not in reports[0]:
        print(proc.stdout + proc.stderr)
        print("replay FAILED")
        return 1
    report = reports[0]
    print(report["verdict"])
    for note in report["notes"]:
        print(f"note: {note}")
    differences = report["drift"]["differences"]
    if differences:
        print(f"environment: {len(differences)} difference(s)")
        for d in differences:
            print(f"  [{d['impact']}] {d['key']}: {d['stored']!r} -> {d['current']!r}")
    else:
        print("environment: identical")
    return 0 if report["bit_exact"] and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
