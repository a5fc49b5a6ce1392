"""The CUDA side of capture and replay, in one short run on a machine with an NVIDIA GPU.

    python -m bench.gpu_check [--out DIR]

1. The environment a file records on the GPU: GPU name, compute capability, driver, cuDNN, the TF32 / cuDNN /
   SDPA switches.
2. A tiny SD pipeline on cuda with a cuda torch.Generator (Euler ancestral, 6 steps, 64x64) is captured, then
   replayed on a freshly built pipeline: it must be bit-exact, and the generator's recorded state must be a
   cuda state.
3. The same file replayed after this process switches TF32 and the SDPA backends away from what the file
   records: replay recreates them for its call (bit-exact again, and the report lists what it set);
   ``recreate=False`` shows what the switches alone change.
4. A fresh process replays the file (python -m raiiaf_diffusers.tiny_replay): bit-exact across processes.

Prints one line per check and a JSON summary; exits 1 if a check fails, 2 (with a message) without CUDA. Record
its output in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _call(pipe, capture, torch):
    return pipe("a cat", num_inference_steps=6, height=64, width=64,
                generator=torch.Generator(device="cuda").manual_seed(11), callback_on_step_end=capture)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the .raiiaf (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); nothing was checked. Run it on a machine "
              "with an NVIDIA GPU and a CUDA build of torch.")
        return 2

    import raiiaf_core as rc
    from raiiaf_diffusers import RaiiafCapture, replay, tiny

    out = args.out or Path(tempfile.mkdtemp(prefix="raiiaf-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    failed = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        results[name] = {"ok": bool(ok), "detail": detail}
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            failed.append(name)

    environment = rc.capture_environment()
    gpus = environment.get("gpu") or []
    check("environment records the GPU", bool(gpus) and all(g.get("name") and g.get("capability") for g in gpus),
          json.dumps(gpus))
    check("environment records cuDNN and the CUDA switches",
          environment["torch"].get("cudnn") is not None and "matmul_allow_tf32" in environment["determinism"]
          and "flash" in environment.get("sdpa", {}),
          json.dumps({"cudnn": environment["torch"].get("cudnn"), "sdpa": environment.get("sdpa")}))

    pipe = tiny.build("sd").to("cuda")
    pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
    capture = RaiiafCapture(out / "gpu.raiiaf", store_final_latents=True)
    with capture.recording(pipe):
        _call(pipe, capture, torch)
    (path,) = capture.paths
    record = rc.open(path).metadata["host"]["diffusers"]
    check("the generator is recorded as a cuda generator", record["rng"]["generators"]["devices"] == ["cuda"],
          json.dumps(record["rng"]["generators"]["devices"]))

    fresh = tiny.build("sd").to("cuda")
    same = replay(fresh, path)
    check("replay on the GPU, same process, fresh pipeline", same.bit_exact, same.verdict)

    matmul, cudnn, flash = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                            torch.backends.cuda.flash_sdp_enabled())
    try:
        torch.backends.cuda.matmul.allow_tf32 = not matmul
        torch.backends.cudnn.allow_tf32 = not cudnn
        torch.backends.cuda.enable_flash_sdp(not flash)
        switched = replay(fresh, path)
        check("replay recreates TF32 and SDPA switches", switched.bit_exact and bool(switched.recreated),
              "; ".join(switched.recreated) + " | " + switched.verdict)
        plain = replay(fresh, path, recreate=False)
        check("recreate=False runs under this process's switches", not plain.recreated,
              f"{plain.verdict} (informational: whether the switches alone change this tiny model's image)")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.enable_flash_sdp(flash)

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "raiiaf_diffusers.tiny_replay", str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    check("replay on the GPU in a fresh process", proc.returncode == 0 and bool(lines) and lines[0]["bit_exact"],
          lines[0]["verdict"] if lines else proc.stderr[-500:])

    print(json.dumps({"gpu": gpus, "torch": torch.__version__, "cuda": torch.version.cuda, "file": str(path),
                      "checks": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
