"""Capture -> write -> replay in a fresh Python process, bit for bit, for every covered pipeline and sampler.

Each case generates with a real tiny pipeline (raiiaf_diffusers.tiny), writes a real .raiiaf, and a
single new Python process (python -m raiiaf_diffusers.tiny_replay) replays all the files and saves
what it regenerated; the checks below compare those bytes with what this process produced.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("torchsde")

import safetensors.torch  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import RaiiafCapture  # noqa: E402
from raiiaf_diffusers import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

CASES = [("sd", s) for s in tiny.SCHEDULERS] + [("sdxl", s) for s in tiny.SCHEDULERS] + [
    ("flux", "default"),
    ("sd3", "default"),
]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Capture every case here, replay all of them in one new process; return per-case results."""
    folder = tmp_path_factory.mktemp("diffusers-replay")
    pipes = {kind: tiny.build(kind) for kind in {k for k, _ in CASES}}
    defaults = {kind: pipe.scheduler for kind, pipe in pipes.items()}
    captured = {}
    for kind, sched in CASES:
        pipe = pipes[kind]
        pipe.scheduler = defaults[kind] if sched == "default" else tiny.scheduler(sched, defaults[kind].config)
        capture = RaiiafCapture(folder / f"{kind}-{sched}.raiiaf", store_final_latents=True)
        with capture.recording(pipe):
            out = pipe(
                "a painting of a cat",
                negative_prompt="blurry",
                num_inference_steps=3,
                guidance_scale=5.0,
                generator=torch.Generator().manual_seed(7),
                callback_on_step_end=capture,
                **tiny.CALL_ARGS[kind],
            )
        (path,) = capture.paths
        captured[(kind, sched)] = {"path": path, "final": capture.last.final_latents, "image": out.images[0]}

    save = folder / "replayed"
    files = [str(captured[c]["path"]) for c in CASES]
    proc = subprocess.run(
        [sys.executable, "-m", "raiiaf_diffusers.tiny_replay", "--save", str(save), *files],
        capture_output=True, text=True, env=_env(), cwd=str(folder), timeout=600,
    )
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(CASES), proc.stdout + proc.stderr
    for k, case in enumerate(CASES):
        assert reports[k]["path"] == files[k]
        captured[case]["report"] = reports[k]
        captured[case]["latents"] = safetensors.torch.load_file(str(save / f"{k}.latents.safetensors"))["final_latents"]
        captured[case]["png"] = (save / f"{k}.png").read_bytes()
    captured["returncode"] = proc.returncode
    return captured


@pytest.mark.parametrize("kind,sched", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_replay_in_new_process_is_bit_exact(replayed, kind, sched):
    case = replayed[(kind, sched)]
    art = rc.open(case["path"])
    # final latents: the new process's are torch.equal to the ones this process sampled
    assert case["latents"].dtype == case["final"].dtype
    assert torch.equal(case["latents"], case["final"])
    # image: the new process's PNG is byte-identical to the one stored in the file,
    # and the stored image's pixels are the ones the pipeline returned here
    assert case["png"] == art.image_bytes()
    assert art.image().tobytes() == case["image"].tobytes()
    report = case["report"]
    assert report["bit_exact"] is True, report
    assert report["latents_equal"] and report["image_equal"] and report["png_bytes_equal"]
    assert report["drift"]["can_change_output"] is False


def test_all_replays_exit_zero(replayed):
    assert replayed["returncode"] == 0


def test_flux_noise_is_stored_unpacked_and_replayed_packed(replayed):
    art = rc.open(replayed[("flux", "default")]["path"])
    rec = art.metadata["host"]["diffusers"]
    noise = art.load_tensor("noise", framework="torch")
    assert noise.ndim == 4  # (B, C, H, W) as drawn, not the packed (B, H*W/4, C*4)
    assert rec["noise"]["preparation"] == "pack_latents"
    assert len(rec["noise"]["sampled_shape"]) == 3
    for kind in ("sd", "sdxl", "sd3"):
        rec = rc.open(replayed[(kind, "ddim" if kind != "sd3" else "default")]["path"]).metadata["host"]["diffusers"]
        assert rec["noise"]["preparation"] == "as_is"


def test_sde_files_restore_the_global_rng(replayed):
    # DPMSolverSDEScheduler seeds its Brownian tree from the global torch RNG (torch.randint, not randn_tensor):
    # the file holds that RNG's state at the start of the call, and says that the tape could not see the use
    art = rc.open(replayed[("sd", "dpmpp_sde")]["path"])
    rec = art.metadata["host"]["diffusers"]
    assert rec["scheduler"]["class"] == "DPMSolverSDEScheduler"
    cpu = rec["rng"]["global"][0]
    assert cpu["device"] == "cpu" and cpu["after_noise"] is None  # the noise came from the generator
    assert art.tensor_info(cpu["at_start"]).dtype == "uint8"
    assert {"stream": "global", "index": 0, "before": None} in rec["rng"]["untracked"]
    sde2m = rc.open(replayed[("sdxl", "dpmpp_2m_sde")]["path"]).metadata["host"]["diffusers"]
    assert sde2m["scheduler"]["config"]["algorithm_type"] == "sde-dpmsolver++"
