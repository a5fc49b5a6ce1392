"""Capture -> write -> replay in a fresh Python process, bit for bit, for every covered pipeline and sampler.

Each case generates with a real tiny pipeline (raiiaf_diffusers.tiny), writes a real .raiiaf, and a
single new Python process (python -m raiiaf_diffusers.tiny_replay) replays all the files and saves
what it regenerated; the checks below compare those bytes with what this process produced.

Covered: text-to-image (SD, SDXL with six samplers each, including ancestral and SDE ones; Flux and SD3
with their flow-matching Euler, deterministic and stochastic), image-to-image and inpainting (the VAE
samples its input with the generator before the noise is drawn), Flux image-to-image, inpainting and
Kontext, PixArt-α and -Σ (no callback_on_step_end) and the SDXL modular pipeline (no step callback at all); then SD3.5,
Chroma, Qwen-Image (text-to-image and image-to-image), Z-Image (both), Flux.2 [klein], Lumina2 and Sana,
with flow-matching Euler and, for Qwen-Image, Z-Image img2img and Sana, its stochastic form.
"""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("torchsde")

import safetensors.torch  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import RaiiafCapture  # noqa: E402
from raiiaf_diffusers import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Flow matching with fresh noise at every step (FlowMatchEulerDiscreteScheduler draws it through its own
# module's randn_tensor).
FLOW_SDE = ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True})
# Before 0.37 that scheduler drew the noise with torch.randn_like instead.
OLD_FLOW_NOISE = tuple(int(p) for p in diffusers.__version__.split(".")[:2]) < (0, 37)

CASES = [("sd", s) for s in tiny.SCHEDULERS] + [("sdxl", s) for s in tiny.SCHEDULERS] + [
    ("flux", "default"), ("flux", "flow_sde"),
    ("sd3", "default"), ("sd3", "flow_sde"),
    ("sd_img2img", "default"), ("sd_img2img", "euler_a"),
    ("sd_inpaint", "euler_a"),
    ("sdxl_img2img", "euler_a"),
    ("sdxl_inpaint", "dpmpp_2m_sde"),
    ("flux_img2img", "flow_sde"), ("flux_kontext", "default"),
    ("pixart_alpha", "euler_a"),
    ("sdxl_modular", "euler_a"),
    ("flux_inpaint", "default"), ("pixart_sigma", "default"),
    ("sd35", "default"), ("chroma", "default"),
    ("qwenimage", "default"), ("qwenimage", "flow_sde"), ("qwenimage_img2img", "default"),
    ("zimage", "default"), ("zimage_img2img", "flow_sde"),
    ("flux2_klein", "default"),
    ("lumina2", "default"),
    ("sana", "default"), ("sana", "flow_sde"),
]
# Pipelines whose step loop takes no callback_on_step_end: their files hold no final latents.
NO_CALLBACK = {"pixart_alpha", "pixart_sigma", "sdxl_modular"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _scheduler(name, config):
    if name == "flow_sde":
        class_name, overrides = FLOW_SDE
        return getattr(diffusers, class_name).from_config(config, **overrides)
    return tiny.scheduler(name, config)


def _generate(pipe, kind, capture):
    args = dict(tiny.CALL_ARGS[kind], prompt="a painting of a cat", num_inference_steps=3,
                generator=torch.Generator().manual_seed(7))
    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" in params:
        args["callback_on_step_end"] = capture
    if "negative_prompt" in params and "guidance_scale" in params:
        args.update(negative_prompt="blurry", guidance_scale=5.0)
    if kind == "sdxl_modular":
        args["output"] = "images"
        return pipe(**args)[0]
    return pipe(**args).images[0]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Capture every case here, replay all of them in one new process; return per-case results."""
    folder = tmp_path_factory.mktemp("diffusers-replay")
    captured = {}
    pipes = {}
    for kind, sched in CASES:
        if kind not in pipes:
            try:
                pipes[kind] = tiny.build(kind)
            except ImportError as exc:  # a family newer than this diffusers (Flux.2 came after 0.36)
                pipes[kind] = exc
            else:
                pipes[kind].default_scheduler = pipes[kind].scheduler
        pipe = pipes[kind]
        if isinstance(pipe, ImportError):
            captured[(kind, sched)] = {"missing": str(pipe)}
            continue
        default = pipe.default_scheduler
        pipe.scheduler = default if sched == "default" else _scheduler(sched, default.config)
        capture = RaiiafCapture(folder / f"{kind}-{sched}.raiiaf", store_final_latents=True)
        with capture.recording(pipe):
            image = _generate(pipe, kind, capture)
        (path,) = capture.paths
        captured[(kind, sched)] = {"path": path, "final": capture.last.final_latents, "image": image}
    del pipes

    save = folder / "replayed"
    present = [c for c in CASES if "missing" not in captured[c]]
    files = [str(captured[c]["path"]) for c in present]
    proc = subprocess.run(
        [sys.executable, "-m", "raiiaf_diffusers.tiny_replay", "--save", str(save), *files],
        capture_output=True, text=True, env=_env(), cwd=str(folder), timeout=900,
    )
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(present), proc.stdout + proc.stderr
    for k, case in enumerate(present):
        assert reports[k]["path"] == files[k]
        captured[case]["report"] = reports[k]
        latents = save / f"{k}.latents.safetensors"
        captured[case]["latents"] = safetensors.torch.load_file(str(latents))["final_latents"] if latents.exists() else None
        captured[case]["png"] = (save / f"{k}.png").read_bytes()
    captured["returncode"] = proc.returncode
    return captured


def _case(replayed, kind, sched):
    case = replayed[(kind, sched)]
    if "missing" in case:
        pytest.skip(f"{kind} cannot be built with diffusers {diffusers.__version__}: {case['missing']}")
    return case


@pytest.mark.parametrize("kind,sched", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_replay_in_new_process_is_bit_exact(replayed, kind, sched):
    case = _case(replayed, kind, sched)
    art = rc.open(case["path"])
    rec = art.metadata["host"]["diffusers"]
    report = case["report"]
    if kind in NO_CALLBACK:
        # no step callback: no final latents in the file or the replay; image and tape decide
        assert case["final"] is None and case["latents"] is None and rec["final_latents"] is None
        assert report["latents_equal"] is None
    else:
        # final latents: the new process's are torch.equal to the ones this process sampled
        assert case["latents"].dtype == case["final"].dtype
        assert torch.equal(case["latents"], case["final"])
        assert report["latents_equal"] is True
    # image: the new process's PNG is byte-identical to the one stored in the file,
    # and the stored image's pixels are the ones the pipeline returned here
    assert case["png"] == art.image_bytes()
    assert art.image().tobytes() == case["image"].tobytes()
    assert report["bit_exact"] is True, report
    assert report["image_equal"] and report["png_bytes_equal"]
    assert report["tape_mismatch"] is None and report["record_problems"] == []
    # every draw after the ones replay feeds from the file was checked against the tape
    noise = rec["noise"]
    fed = noise["draw"] + 1 if noise["feed"] == "latents" else 0
    assert report["draws_checked"] == len(rec["rng"]["draws"]) - fed
    assert report["drift"]["can_change_output"] is False


def test_all_replays_exit_zero(replayed):
    assert replayed["returncode"] == 0


def _record(replayed, kind, sched):
    return rc.open(_case(replayed, kind, sched)["path"]).metadata["host"]["diffusers"]


def test_flux_noise_is_stored_unpacked_and_replayed_packed(replayed):
    art = rc.open(replayed[("flux", "default")]["path"])
    rec = art.metadata["host"]["diffusers"]
    noise = art.load_tensor("noise", framework="torch")
    assert noise.ndim == 4  # (B, C, H, W) as drawn, not the packed (B, H*W/4, C*4)
    assert rec["noise"]["preparation"] == "pack_latents" and rec["noise"]["feed"] == "latents"
    assert len(rec["noise"]["sampled_shape"]) == 3
    for kind in ("sd", "sdxl", "sd3"):
        rec = _record(replayed, kind, "ddim" if kind != "sd3" else "default")
        assert rec["noise"]["preparation"] == "as_is"
    # Chroma packs as Flux does; SD3.5, Z-Image, Lumina2 and Sana take their draw as it is
    assert _record(replayed, "chroma", "default")["noise"]["preparation"] == "pack_latents"
    for kind in ("sd35", "zimage", "lumina2", "sana"):
        noise = _record(replayed, kind, "default")["noise"]
        assert (noise["feed"], noise["preparation"], noise["shape"]) == ("latents", "as_is", noise["sampled_shape"])


@pytest.mark.parametrize("kind,drawn", [("qwenimage", [1, 1, 4, 8, 8]), ("flux2_klein", [1, 4, 8, 8])])
def test_other_packings_replay_from_the_tape(replayed, kind, drawn):
    # Qwen-Image draws (B, 1, C, h, w) with a frame axis and packs it its own way; Flux.2 draws (B, C, h, w)
    # patchified and takes it unpacked while its steps see it packed: rather than copying either packing,
    # replay restores the generator at call start, lets the pipeline draw again and checks the draw
    rec = _record(replayed, kind, "default")
    noise = rec["noise"]
    assert (noise["shape"], noise["feed"], noise["preparation"], noise["draw"]) == (drawn, "tape", None, 0)
    assert len(noise["sampled_shape"]) == 3  # the steps saw the packed (B, tokens, channels)
    assert rec["rng"]["draws"][0]["site"]["function"] == f"{rec['pipeline']['class']}.prepare_latents"
    assert replayed[(kind, "default")]["report"]["draws_checked"] == len(rec["rng"]["draws"]) >= 1


def test_img2img_and_inpaint_draw_the_vae_sample_first_and_replay_from_the_tape(replayed):
    # vae.encode(image).latent_dist.sample(generator) consumes the generator before the noise draw, so the
    # noise cannot be fed back as latents=: replay restores the generator at call start and draws again
    for kind, sched in (("sd_img2img", "euler_a"), ("sdxl_img2img", "euler_a"), ("sdxl_inpaint", "dpmpp_2m_sde"),
                        ("flux_img2img", "flow_sde"), ("qwenimage_img2img", "default"),
                        ("zimage_img2img", "flow_sde")):
        rec = _record(replayed, kind, sched)
        draws = rec["rng"]["draws"]
        assert draws[0]["site"] == {"module": "diffusers.models.autoencoders.vae",
                                    "function": "DiagonalGaussianDistribution.sample"}, kind
        assert rec["noise"]["draw"] == 1 and rec["noise"]["feed"] == "tape", kind
        assert draws[1]["site"]["function"].endswith("prepare_latents"), kind
        assert draws[0]["generators"] == draws[1]["generators"] == [0], kind
    # the 9-channel inpainting UNet draws the noise first (latents= works) and samples the masked image after
    rec = _record(replayed, "sd_inpaint", "euler_a")
    assert rec["noise"]["draw"] == 0 and rec["noise"]["feed"] == "latents"
    assert rec["rng"]["draws"][1]["site"]["module"] == "diffusers.models.autoencoders.vae"


def test_stochastic_schedulers_draw_through_their_own_module(replayed):
    # SD, SDXL and Sana pass the call's generator to scheduler.step; Flux, SD3 and Qwen-Image do not, so their
    # stochastic flow-matching steps draw from the global torch RNG, which the file restores as it was at call start
    for kind, sched, module, generators in (("sd", "euler_a", "scheduling_euler_ancestral_discrete", [0]),
                                            ("sdxl", "dpmpp_2m_sde", "scheduling_dpmsolver_multistep", [0]),
                                            ("flux", "flow_sde", "scheduling_flow_match_euler_discrete", []),
                                            ("sd3", "flow_sde", "scheduling_flow_match_euler_discrete", []),
                                            ("qwenimage", "flow_sde", "scheduling_flow_match_euler_discrete", []),
                                            ("sana", "flow_sde", "scheduling_flow_match_euler_discrete", [0])):
        rec = _record(replayed, kind, sched)
        steps = [d for d in rec["rng"]["draws"] if d["site"]["module"] == f"diffusers.schedulers.{module}"]
        if not steps and OLD_FLOW_NOISE:
            # diffusers < 0.37 draws this noise with torch.randn_like (ignoring a generator it is given):
            # the tape sees the global RNG change
            assert {"stream": "global", "index": 0, "before": None} in rec["rng"]["untracked"], kind
            continue
        assert len(steps) >= 2, (kind, sched)
        assert [d["step"] for d in steps] == sorted(d["step"] for d in steps)
        assert all(d["generators"] == generators for d in steps), (kind, sched)


def test_no_callback_and_modular_pipelines_record_the_tape(replayed):
    for kind, module in (("pixart_alpha", "diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha"),
                         ("sdxl_modular", "diffusers.modular_pipelines.stable_diffusion_xl.before_denoise")):
        rec = _record(replayed, kind, "euler_a")
        assert rec["steps_run"] is None and rec["final_latents"] is None
        assert rec["pipeline"]["modular"] is (kind == "sdxl_modular")
        draws = rec["rng"]["draws"]
        assert draws[0]["site"]["module"] == module and draws[0]["step"] is None
        assert rec["noise"] == {**rec["noise"], "draw": 0, "feed": "tape", "sampled_shape": None}
        assert sum(d["site"]["module"].startswith("diffusers.schedulers.") for d in draws) == 3  # one per step


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
    assert replayed[("sd", "dpmpp_sde")]["report"]["bit_exact"] is True  # restored at call start, it repeats
    sde2m = _record(replayed, "sdxl", "dpmpp_2m_sde")
    assert sde2m["scheduler"]["config"]["algorithm_type"] == "sde-dpmsolver++"
