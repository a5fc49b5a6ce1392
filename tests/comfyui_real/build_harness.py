"""Build a harness to run tests/comfyui_real against one ComfyUI checkout (standard library only).

    python tests/comfyui_real/build_harness.py /path/to/ComfyUI /path/to/harness [--venv DIR] [--torch 2.13.0]

It takes a ComfyUI checkout that already exists (it never fetches or unpacks ComfyUI) and writes into the
harness folder:

- `constraints.txt`: `torch==VERSION`, passed to every pip install so nothing can replace that torch;
- `requirements.txt`: ComfyUI's requirements without the torch, torchvision and torchaudio lines (those
  are built per accelerator; the pinned torch is installed on its own);
- the virtual environment (`--venv`, default `<harness>/venv`, created if missing, reused if not):
  torch, ComfyUI's requirements, this repository's requirements.txt, and `--extra` packages (default:
  `requests`, which ComfyUI's frontend manager imports at start-up without listing it);
- `tiny_sd15.safetensors`: a random-weight SD1.5-type checkpoint built with that ComfyUI's own classes
  (make_checkpoint.py), built once and kept;
- a start-up check: `main.py --cpu --quick-test-for-ci` in a scratch base directory with this repository
  in its custom_nodes/ must exit cleanly, with raiiaf's nodes imported;
- `harness.json`: the ComfyUI path and version, the python, the checkpoint, and whether the torchvision
  stand-in is needed (PyPI's CUDA torchvision does not import beside a CPU torch; the server helper then
  installs torchvision_shim/ as a custom node).

Run the tests on one or more harnesses (os.pathsep-separated):

    RAIIAF_COMFYUI_HARNESS=/path/to/harness-a:/path/to/harness-b python -m pytest tests/comfyui_real -v
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from comfyui_server import CKPT, HARNESS_FILE, comfyui_version, install_custom_nodes, needs_torchvision_shim  # noqa: E402,E501

# Built per accelerator by the user's own install; the harness installs the pinned torch by itself.
TORCH_FAMILY = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*([<>=!~;\[]|$)", re.IGNORECASE)


def installed_torch(python: str) -> str | None:
    probe = subprocess.run([python, "-c", "import torch; print(torch.__version__.split('+')[0])"],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def pip(python: str, *args: str) -> None:
    print("+ pip install", " ".join(args), flush=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", type=Path, help="an existing ComfyUI checkout (the folder with main.py)")
    parser.add_argument("harness", type=Path, help="folder to write the harness into (created if missing)")
    parser.add_argument("--venv", type=Path, help="virtual environment to create or reuse (default: HARNESS/venv)")
    parser.add_argument("--torch", help="torch version to pin (default: the venv's torch, else this python's)")
    parser.add_argument("--extra", action="append", default=None, metavar="PACKAGE",
                        help="another package to install (repeatable; default: requests)")
    args = parser.parse_args(argv)

    comfy = args.comfyui.resolve()
    if not (comfy / "main.py").is_file() or not (comfy / "comfyui_version.py").is_file():
        raise SystemExit(f"{comfy} is not a ComfyUI checkout (no main.py / comfyui_version.py)")
    harness = args.harness.resolve()
    harness.mkdir(parents=True, exist_ok=True)
    env_dir = (args.venv or harness / "venv").resolve()
    python = str(env_dir / "bin" / "python")
    if not Path(python).exists():
        print(f"+ python -m venv {env_dir}", flush=True)
        venv.create(env_dir, with_pip=True)

    torch_version = args.torch or installed_torch(python) or installed_torch(sys.executable)
    if not torch_version:
        raise SystemExit("no torch version to pin: pass --torch VERSION")
    constraints = harness / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n", encoding="utf-8")
    requirements = harness / "requirements.txt"
    lines = (comfy / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements.write_text("".join(f"{line}\n" for line in lines if not TORCH_FAMILY.match(line)), encoding="utf-8")

    pip(python, f"torch=={torch_version}", "-c", str(constraints))
    pip(python, "-r", str(requirements), "-c", str(constraints))
    pip(python, "-r", str(REPO / "requirements.txt"), "-c", str(constraints))
    extras = args.extra if args.extra is not None else ["requests"]
    if extras:
        pip(python, *extras, "-c", str(constraints))

    checkpoint = harness / CKPT
    if not checkpoint.is_file():
        partial = checkpoint.with_suffix(".partial")
        print(f"+ make_checkpoint.py {checkpoint}", flush=True)
        subprocess.run([python, str(HERE / "make_checkpoint.py"), str(partial)], cwd=comfy, check=True,
                       env={**os.environ, "PYTHONPATH": str(comfy)})
        partial.replace(checkpoint)

    with tempfile.TemporaryDirectory(prefix="raiiaf-harness-") as base:
        install_custom_nodes(Path(base), python)
        started = subprocess.run([python, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", base],
                                 cwd=comfy, capture_output=True, text=True)
    log = started.stdout + started.stderr
    # ComfyUI lists each custom node it imported ("0.0 seconds: .../custom_nodes/raiiaf"), or "(IMPORT FAILED)".
    loaded = re.search(r"seconds: \S*custom_nodes[/\\]raiiaf\s*$", log, re.MULTILINE)
    if started.returncode != 0 or not loaded:
        raise SystemExit(f"ComfyUI does not start with raiiaf's nodes in this environment:\n{log[-4000:]}\n"
                         "(a missing module can be added with --extra PACKAGE)")

    record = {"comfyui": str(comfy), "comfyui_version": comfyui_version(comfy), "python": python,
              "torch": torch_version, "checkpoint": str(checkpoint),
              "torchvision_shim": needs_torchvision_shim(python)}
    (harness / HARNESS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    print(f"\nrun: RAIIAF_COMFYUI_HARNESS={harness} python -m pytest tests/comfyui_real -v")
    return 0


if __name__ == "__main__":
    sys.exit(main())
