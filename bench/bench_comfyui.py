"""Capture overhead in a real ComfyUI: the same txt2img graph queued with and without the RaiiafCapture node.

    RAIIAF_COMFYUI_PATH=/path/to/ComfyUI RAIIAF_COMFYUI_PYTHON=/path/to/ComfyUI/venv/bin/python \\
        python -m bench.bench_comfyui [--tiny] [--pairs 20] [--warmup 2] [--steps 4] [--size 64] [--threads N]

Opt-in: without RAIIAF_COMFYUI_PATH it prints that it was skipped and how to enable it.
RAIIAF_COMFYUI_CHECKPOINT reuses an existing checkpoint; otherwise a random-weight SD1.5-type one is built
first (tests/comfyui_real/make_checkpoint.py, about 0.9 GB, a minute or two).

ComfyUI is started on 127.0.0.1 (--cpu --cache-none) in a scratch base directory by
tests/comfyui_real/comfyui_server.py, the helper the opt-in ComfyUI test uses. The graph:
CheckpointLoaderSimple -> KSampler (euler_ancestral, fixed seed) -> VAEDecode -> PreviewImage, once with the
checkpoint's MODEL going straight to the KSampler and once through RaiiafCapture. The two prompts are queued
alternately (which goes first alternates too), and each prompt is timed from ComfyUI's own history: the
timestamps (ms) of its execution_start and execution_success messages. --cache-none makes every node run for
every prompt, the checkpoint load included, so both sides do the same work each time (checked on every prompt:
ComfyUI must not report the KSampler as cached; with its default cache it would, even when the two graphs
alternate). Also given: wall clock from POST /prompt until the history says done (polled every 20 ms), and
the CPU time of the ComfyUI server process (/proc/<pid>/stat, 10 ms ticks). Ratios are taken per pair.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    from .common import Spread, load_average, machine_description
except ImportError:  # run as a script: python bench/bench_comfyui.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import Spread, load_average, machine_description

REPO = Path(__file__).resolve().parent.parent
SERVER_HELPER = REPO / "tests" / "comfyui_real" / "comfyui_server.py"
TARGET = 1.02
SEED = 123456789
POLL_S = 0.02
HOW_TO_ENABLE = ("set RAIIAF_COMFYUI_PATH=/path/to/ComfyUI and RAIIAF_COMFYUI_PYTHON=/path/to/its/python "
                 "(optionally RAIIAF_COMFYUI_CHECKPOINT=an SD1.5-type checkpoint to reuse) to run it")


def _server_helper():
    """tests/comfyui_real/comfyui_server.py, imported by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("raiiaf_comfyui_server", SERVER_HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph(ckpt: str, *, capture: bool, steps: int, size: int) -> dict:
    """txt2img, API format; with capture, RaiiafCapture sits on the MODEL line between loader and sampler."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "clip": ["4", 1], "text": "a watercolor painting of a red fox in fresh snow, morning light"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry, low quality"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["10", 0] if capture else ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "seed": SEED, "steps": steps, "cfg": 7.0, "sampler_name": "euler_ancestral",
            "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    if capture:
        prompt["10"] = {"class_type": "RaiiafCapture", "inputs": {"model": ["4", 0]}}
    return prompt


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _messages(entry: dict) -> dict:
    return {name: data for name, data in entry["status"].get("messages", [])}


def run_prompt(server, prompt: dict, *, check_sampled: bool) -> tuple[float, float, float | None]:
    """(ComfyUI execution seconds, wall seconds, server CPU seconds or None) of one prompt."""
    cpu0 = _cpu_seconds(server.pid)
    wall0 = time.perf_counter()
    entry = server.wait(server.queue(prompt), poll_s=POLL_S)
    wall = time.perf_counter() - wall0
    cpu1 = _cpu_seconds(server.pid)
    messages = _messages(entry)
    if check_sampled and "3" in messages.get("execution_cached", {}).get("nodes", []):
        raise RuntimeError("ComfyUI reused the cached KSampler result: the timed prompts would not sample")
    execution = (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000.0
    return execution, wall, None if cpu0 is None or cpu1 is None else cpu1 - cpu0


def check_capture(server, ckpt: str, steps: int, size: int) -> str:
    """One extra prompt with RaiiafSave after the capture node: proves the wrapper records in this ComfyUI."""
    import raiiaf_core as rc

    prompt = graph(ckpt, capture=True, steps=steps, size=size)
    prompt["9"] = {"class_type": "RaiiafSave", "inputs": {"images": ["8", 0], "latent": ["3", 0],
                                                           "filename_prefix": "bench/check", "tags": "", "notes": ""}}
    outputs = server.run(prompt)
    art = rc.open(server.base / "output" / outputs["9"]["raiiaf_files"][0])
    art.verify()
    runs = art.metadata["runs"]
    source = art.metadata["noise"]["source"]
    if source != "captured" or [r["sampler"] for r in runs] != ["euler_ancestral"] or runs[0]["seed"] != SEED:
        raise RuntimeError(f"the capture node did not record the run: noise source {source!r}, runs {runs!r}")
    return f"noise source {source!r}, {len(runs)} run ({runs[0]['sampler']}, seed {runs[0]['seed']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_comfyui", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="few pairs (smoke test; figures meaningless)")
    parser.add_argument("--pairs", type=int, default=None, help="timed pairs (default 20, --tiny 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first (default 2)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the ComfyUI process (OMP_NUM_THREADS; default: ComfyUI's own choice, "
                             "one per core). On a machine shared with other busy processes, 1 avoids the stalls "
                             "of oversubscribed OpenMP threads")
    parser.add_argument("--dir", default=None, help="where ComfyUI's scratch base directory goes (default: temp)")
    parser.add_argument("--no-machine", action="store_true", help="leave out the machine description "
                                                                  "(python -m bench prints its own)")
    args = parser.parse_args(argv)
    pairs = args.pairs or (2 if args.tiny else 20)
    warmup = min(args.warmup, 1) if args.tiny else args.warmup

    comfy_path = os.environ.get("RAIIAF_COMFYUI_PATH")
    if not comfy_path:
        print(f"skipped: needs a real ComfyUI; {HOW_TO_ENABLE}")
        return 0
    python = os.environ.get("RAIIAF_COMFYUI_PYTHON", sys.executable)
    helper = _server_helper()

    base = Path(tempfile.mkdtemp(prefix="raiiaf-bench-comfyui-", dir=args.dir))
    if not args.no_machine:
        for line in machine_description(str(base))[:2]:  # CPU and OS; this benchmark's files are ComfyUI's own
            print(line)
    try:
        started = time.perf_counter()
        env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
        with helper.start(base, comfy=comfy_path, python=python, extra_args=["--cache-none"], env=env) as server:
            startup = time.perf_counter() - started
            system = server.request("/system_stats")["system"]
            prompts = {side: graph(helper.CKPT, capture=bool(side), steps=args.steps, size=args.size)
                       for side in (0, 1)}
            for _ in range(warmup):
                for side in (0, 1):
                    run_prompt(server, prompts[side], check_sampled=False)
            # common.paired times calls in this process; here the work runs in the server, timed by ComfyUI itself.
            samples = {0: [], 1: []}
            for i in range(pairs):
                for side in ((1, 0) if i % 2 else (0, 1)):
                    samples[side].append(run_prompt(server, prompts[side], check_sampled=True))
            check = check_capture(server, helper.CKPT, args.steps, args.size)
        report(args, pairs, warmup, samples, system, python, startup, check)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sys.stdout.flush()
    return 0


def report(args, pairs, warmup, samples, system, python, startup, check) -> None:
    ms = 1000.0
    print(f"ComfyUI {system.get('comfyui_version', '?')} (python {system.get('python_version', '?').split()[0]}, "
          f"torch {system.get('pytorch_version', '?')}), --cpu --cache-none, "
          f"{f'OMP_NUM_THREADS={args.threads}' if args.threads else 'default torch threads'}, "
          f"started in {startup:.0f} s; {python}")
    print(f"txt2img: random-weight SD1.5-type checkpoint (one-level UNet, full CLIP-L and VAE), {args.size}x"
          f"{args.size}, KSampler euler_ancestral {args.steps} steps, cfg 7, seed {SEED}, VAEDecode, PreviewImage; "
          f"{pairs} alternating pairs after {warmup} warm-up pair(s); every node runs for every prompt")
    columns = []
    for k, name in ((0, "ComfyUI execution"), (1, "wall clock"), (2, "server CPU time")):
        base = [s[k] for s in samples[0]]
        cand = [s[k] for s in samples[1]]
        if any(v is None for v in base + cand):
            continue
        ratios = [c / b if b > 0 else float("nan") for b, c in zip(base, cand)]
        columns.append((name, Spread.of(base), Spread.of(cand), Spread.of(ratios),
                        Spread.of(c - b for b, c in zip(base, cand))))
    width = 29
    print(f"  {'(median [min-max])':<31}" + "".join(f"{name:<{width}}" for name, *_ in columns).rstrip())
    for label, k in (("prompt without capture node", 1), ("prompt with RaiiafCapture", 2)):
        print(f"  {label:<31}" + "".join(f"{c[k].scaled(ms).format('{:.1f}', ' ms'):<{width}}"
                                          for c in columns).rstrip())
    print(f"  {'ratio with/without (per pair)':<31}"
          + "".join(f"{c[3].format('{:.3f}'):<{width}}" for c in columns).rstrip())
    print(f"  {'difference (per pair)':<31}"
          + "".join(f"{c[4].scaled(ms).format('{:+.1f}', ' ms'):<{width}}" for c in columns).rstrip())
    print(f"  {'ratio of medians':<31}"
          + "".join(f"{c[2].median / c[1].median:<{width}.3f}" for c in columns).rstrip())
    print("  ComfyUI execution = execution_start to execution_success in /history; wall clock = POST /prompt until "
          f"/history says done (polled every {POLL_S * 1000:.0f} ms)")
    print(f"  check after the timed prompts: RaiiafCapture + RaiiafSave recorded {check}")
    verdict = "met" if columns[0][3].median <= TARGET else "NOT met"
    print(f"  target: median per-pair ratio of ComfyUI execution time <= {TARGET}: {verdict}"
          + ("  (--tiny: too few pairs to judge)" if args.tiny else "") + f"; {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
