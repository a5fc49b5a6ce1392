"""Start, drive and stop a real ComfyUI: shared by the opt-in test (test_comfyui_real.py) and the benchmark
(bench/bench_comfyui.py). Standard library only, so that either can import it.

`start(base)` lays out a scratch base directory (this repository linked into custom_nodes/, a checkpoint in
models/checkpoints/), starts ComfyUI on 127.0.0.1 (CPU) and yields a `Comfy` client; leaving the block stops
it. `targets()` lists the ComfyUI trees to run against: RAIIAF_COMFYUI_HARNESS names one or more harness
folders written by build_harness.py (os.pathsep-separated: `/h/a:/h/b`), each with its ComfyUI checkout,
python and cached checkpoint; without it, RAIIAF_COMFYUI_PATH names one ComfyUI checkout,
RAIIAF_COMFYUI_PYTHON the python that runs it (default: this one) and RAIIAF_COMFYUI_CHECKPOINT an existing
checkpoint to link instead of building one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

COMFY = os.environ.get("RAIIAF_COMFYUI_PATH")
PYTHON = os.environ.get("RAIIAF_COMFYUI_PYTHON", sys.executable)
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CKPT = "tiny_sd15.safetensors"
HARNESS_FILE = "harness.json"
START_TIMEOUT_S = 240
PROMPT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Target:
    """One ComfyUI to test against."""

    comfyui: str
    python: str
    checkpoint: str | None
    version: str


def comfyui_version(comfy: str | os.PathLike) -> str:
    """The version a ComfyUI checkout declares in comfyui_version.py (read as text: nothing is imported)."""
    text = (Path(comfy) / "comfyui_version.py").read_text(encoding="utf-8")
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    if not found:
        raise RuntimeError(f"{comfy}/comfyui_version.py names no __version__")
    return found.group(1)


def targets() -> list[Target]:
    """The ComfyUI trees named by the environment (see the module docstring), in the order given."""
    harnesses = [h for h in os.environ.get("RAIIAF_COMFYUI_HARNESS", "").split(os.pathsep) if h]
    found = []
    for harness in harnesses:
        record = json.loads((Path(harness) / HARNESS_FILE).read_text(encoding="utf-8"))
        found.append(Target(record["comfyui"], record["python"], record["checkpoint"],
                            comfyui_version(record["comfyui"])))
    if not found and COMFY:
        found.append(Target(COMFY, PYTHON, os.environ.get("RAIIAF_COMFYUI_CHECKPOINT"), comfyui_version(COMFY)))
    return found


class Comfy:
    def __init__(self, url: str, base: Path, log: Path, pid: int | None = None):
        self.url, self.base, self.log, self.pid = url, base, log, pid  # pid: the ComfyUI server process

    def request(self, path: str, payload=None, data: bytes | None = None, headers=None):
        body = json.dumps(payload).encode() if payload is not None else data
        req = urllib.request.Request(self.url + path, data=body, headers=headers or
                                     ({"Content-Type": "application/json"} if payload is not None else {}))
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:4000]}") from None

    def queue(self, prompt: dict, workflow: dict | None = None) -> str:
        """Queue an API-format graph (with its UI workflow, as the browser sends it); return its prompt id."""
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        return self.request("/prompt", {"prompt": prompt, "client_id": "raiiaf-test", "extra_data": extra})["prompt_id"]

    def wait(self, prompt_id: str, poll_s: float = 0.25) -> dict:
        """The finished prompt's history entry (outputs, and status with its timestamped messages)."""
        deadline = time.monotonic() + PROMPT_TIMEOUT_S
        while time.monotonic() < deadline:
            history = self.request(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") != "success":
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:4000]}\n{self.tail()}")
                return entry
            time.sleep(poll_s)
        raise AssertionError(f"prompt {prompt_id} did not finish in {PROMPT_TIMEOUT_S}s\n{self.tail()}")

    def run(self, prompt: dict, workflow: dict | None = None) -> dict:
        """Queue a graph, wait for it, return its outputs."""
        return self.wait(self.queue(prompt, workflow))["outputs"]

    def upload(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
            (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
             f"--{boundary}--\r\n").encode()
        answer = self.request("/upload/image", data=body,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def fetch(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def tail(self) -> str:
        return "--- ComfyUI log (tail) ---\n" + self.log.read_text(errors="replace")[-6000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def needs_torchvision_shim(python: str = PYTHON) -> bool:
    probe = subprocess.run([python, "-c", "import torchvision"], capture_output=True, text=True, timeout=120)
    return probe.returncode != 0 and "torchvision::nms" in probe.stderr


def install_custom_nodes(base: Path, python: str, extra_nodes=()) -> None:
    """custom_nodes/ of a scratch base directory: this repository, the torchvision stand-in where needed, and
    the node packages in extra_nodes (folders)."""
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "raiiaf").symlink_to(REPO, target_is_directory=True)
    for folder in extra_nodes:
        (base / "custom_nodes" / Path(folder).name).symlink_to(Path(folder).resolve(), target_is_directory=True)
    if needs_torchvision_shim(python):
        (base / "custom_nodes" / "torchvision_shim").symlink_to(HERE / "torchvision_shim", target_is_directory=True)


@contextlib.contextmanager
def start(base: Path, *, comfy: str | None = COMFY, python: str = PYTHON, extra_args=(),
          checkpoint: str | None = None, env: dict | None = None, extra_nodes=()):
    """Lay out `base` (an empty directory), start ComfyUI there, yield a `Comfy`; stop it on leaving.

    checkpoint: an existing file to link as models/checkpoints/tiny_sd15.safetensors (default:
    RAIIAF_COMFYUI_CHECKPOINT, else one is built with make_checkpoint.py). extra_args go to ComfyUI's main.py,
    env (variables added to this process's environment) to its process; extra_nodes are custom node folders
    installed besides this repository.
    """
    if not comfy:
        raise RuntimeError("no ComfyUI checkout: set RAIIAF_COMFYUI_PATH")
    base = Path(base)
    install_custom_nodes(base, python, extra_nodes)
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    given = checkpoint or os.environ.get("RAIIAF_COMFYUI_CHECKPOINT")
    if given:
        (checkpoints / CKPT).symlink_to(Path(given).resolve())
    else:
        subprocess.run([python, str(HERE / "make_checkpoint.py"), str(checkpoints / CKPT)], cwd=comfy, check=True,
                       env={**os.environ, "PYTHONPATH": comfy}, timeout=600)
    port = free_port()
    log = base / "comfyui.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                    "--base-directory", str(base), *extra_args], cwd=comfy, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Comfy(f"http://127.0.0.1:{port}", base, log, process.pid)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {process.returncode}\n{server.tail()}")
            try:
                server.request("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not answer in {START_TIMEOUT_S}s\n{server.tail()}") from None
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
