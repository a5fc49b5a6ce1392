"""Replay .raiiaf files captured from the tiny pipelines, in this (fresh) process.

    python -m raiiaf_diffusers.tiny_replay FILE... [--save DIR] [--no-recreate]

Used by the demo and the tests to show that a file replays in a *new* Python process: each file
names its tiny pipeline ("raiiaf-tiny/sd", ...), which is rebuilt here from the same seeded
configuration. Prints one JSON object per file (the replay's fidelity report). With ``--save``,
also writes, per file number k, ``k.latents.safetensors`` (the replayed final latents, for pipelines
with a step callback) and ``k.png`` (the replayed image, encoded as in the files) so that a caller can
compare them itself.
Exit status 0 only when every file replayed bit-exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import raiiaf_core as rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raiiaf_diffusers.tiny_replay", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--save", metavar="DIR", help="write the replayed final latents and images here")
    parser.add_argument("--no-recreate", action="store_true",
                        help="replay in this process's torch settings, not the capture's (replay(recreate=False))")
    args = parser.parse_args(argv)

    import safetensors.torch

    from . import tiny
    from ._output import png_bytes
    from .replay import replay

    pipes = {}
    all_exact = True
    for k, path in enumerate(args.files):
        name = rc.open(path).metadata.get("model", {}).get("name", "")
        if not name.startswith(tiny.MODEL_ID_PREFIX):
            print(json.dumps({"path": path, "error": f"not captured from a tiny pipeline (model {name!r})"}), flush=True)
            all_exact = False
            continue
        if name not in pipes:
            pipes[name] = tiny.build(name)
        result = replay(pipes[name], path, recreate=not args.no_recreate)
        report = {"path": path, **result.to_dict()}
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            if result.final_latents is not None:  # None for pipelines without a step callback
                safetensors.torch.save_file({"final_latents": result.final_latents.contiguous()},
                                            os.path.join(args.save, f"{k}.latents.safetensors"))
            with open(os.path.join(args.save, f"{k}.png"), "wb") as f:
                f.write(png_bytes(result.image))
        print(json.dumps(report), flush=True)
        all_exact = all_exact and result.bit_exact
    return 0 if all_exact else 1


if __name__ == "__main__":
    sys.exit(main())
