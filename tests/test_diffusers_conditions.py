"""Replay recreates the capture's thread count (and the other settable torch settings) for its call, and names
what it cannot set with a remedy that works: the CPU kernel level (ATEN_CPU_CAPABILITY).

One process makes the file one kernel level below this CPU's own (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU,
=default on an AVX2 one) with 2 threads; this process (torch's own kernel level) replays it and must name the CPU capability and the remedy; one fresh process follows the remedy with 1
thread and replays twice: by default (threads recreated: bit-exact) and with recreate=False (NOT bit-exact).
Tiny SD, Euler ancestral, 6 steps, 64x64.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from raiiaf_diffusers import RaiiafCapture, replay, tiny  # noqa: E402

from conftest import LOWER_CPU_LEVEL  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

CAPTURE = """
import sys, torch
from raiiaf_diffusers import RaiiafCapture, tiny
torch.set_num_threads(2)
pipe = tiny.build("sd")
pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
capture = RaiiafCapture(sys.argv[1], store_final_latents=True)
with capture.recording(pipe):
    pipe("a cat", num_inference_steps=6, height=64, width=64, generator=torch.Generator().manual_seed(3),
         callback_on_step_end=capture)
"""

REPLAY_AT_ONE_THREAD = """
import json, sys, torch
from raiiaf_diffusers import replay, tiny
torch.set_num_threads(1)
pipe = tiny.build("sd")
for recreate in (True, False):
    result = replay(pipe, sys.argv[1], recreate=recreate)
    print(json.dumps({**result.to_dict(), "threads_after": torch.get_num_threads(),
                      "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
"""


def _python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, **env)
    environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + environ["PYTHONPATH"] if environ.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environ,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


OWN = torch.backends.cpu.get_cpu_capability()
LOWER = LOWER_CPU_LEVEL
MADE_AT = LOWER.get(OWN, "").upper()  # what torch reports running at the level the file is made at


@pytest.fixture(scope="module")
def lower_file(tmp_path_factory):
    if OWN not in LOWER:
        pytest.skip(f"this CPU runs torch's {OWN} kernels: no lower kernel level to make the file with")
    path = tmp_path_factory.mktemp("conditions") / "lower.raiiaf"
    _python(CAPTURE, str(path), ATEN_CPU_CAPABILITY=LOWER[OWN])
    return path


@pytest.fixture(scope="module")
def here(lower_file):
    """The replay in this process, at torch's own kernel level."""
    return replay(tiny.build("sd"), lower_file)


@pytest.fixture(scope="module")
def followed(lower_file, here):
    """A fresh process started as the report's remedy says, at 1 thread: replay by default, then recreate=False."""
    (value,) = set(re.findall(r"ATEN_CPU_CAPABILITY=(\w+)", here.report()))
    proc = _python(REPLAY_AT_ONE_THREAD, str(lower_file), ATEN_CPU_CAPABILITY=value)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_the_file_records_the_cpu_kernel_level_and_build(lower_file):
    import raiiaf_core as rc

    environment = rc.open(lower_file).environment
    assert environment["torch"]["cpu_capability"] == MADE_AT
    assert environment["env_vars"]["ATEN_CPU_CAPABILITY"] == LOWER[OWN]
    assert environment["torch"]["num_threads"] == 2
    assert environment["torch"]["blas_info"] and "mkldnn_available" in environment["torch"]
    assert set(environment["sdpa"]) >= {"flash", "mem_efficient", "math"}
    unet = rc.open(lower_file).metadata["host"]["diffusers"]["components"]["unet"]
    assert unet["attn_processors"] == {"AttnProcessor2_0": 12} and unet["dtype"] == "float32"


def test_another_cpu_kernel_level_is_named_with_its_remedy(here):
    assert not here.bit_exact  # kernels of two levels round differently
    report = here.report()
    assert f"torch.cpu_capability: '{MADE_AT}' -> '{OWN}'" in report
    assert (f"remedy: the file was made with {MADE_AT} kernels; this process uses {OWN}: rerun with "
            f"ATEN_CPU_CAPABILITY={LOWER[OWN]}") in report
    assert "recreated for this call: torch.num_threads" not in report  # this process runs 2 threads too
    assert not here.unexplained


def test_following_the_remedy_at_another_thread_count_is_bit_exact(followed):
    default, _ = followed
    assert default["capability"] == MADE_AT
    assert default["bit_exact"], default["verdict"]
    assert default["image_max_abs_diff"] is None and default["latents_equal"] is True
    assert default["recreated"] == ["recreated for this call: torch.num_threads 1 -> 2"]
    assert default["drift"]["differences"] == []
    assert default["threads_after"] == 1  # put back after the call


def test_without_recreation_the_thread_count_changes_the_image(followed):
    _, plain = followed
    assert not plain["bit_exact"]
    assert plain["recreated"] == []
    assert [d["key"] for d in plain["drift"]["differences"]] == ["torch.num_threads"]
    assert "call torch.set_num_threads(2)" in plain["drift"]["remedies"][0]


def test_attention_processors_are_recreated_and_put_back(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor

    pipe = tiny.build("sd")
    pipe.unet.set_attn_processor(AttnProcessor())
    capture = RaiiafCapture(tmp_path / "classic.raiiaf", store_final_latents=True)
    with capture.recording(pipe):
        pipe("a cat", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1),
             callback_on_step_end=capture)
    fresh = tiny.build("sd")  # AttnProcessor2_0, diffusers' default
    result = replay(fresh, capture.paths[0])
    assert result.bit_exact, result.report()
    assert "unet attention processors {'AttnProcessor2_0': 12} -> {'AttnProcessor': 12}" in result.recreated[0]
    assert {type(p).__name__ for p in fresh.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    plain = replay(fresh, capture.paths[0], recreate=False)
    assert plain.recreated == []
    assert any("unet ran the attention processors {'AttnProcessor': 12}" in r for r in plain.remedies)


def test_settings_are_put_back_when_the_pipeline_raises(tmp_path):
    import raiiaf_core as rc
    from diffusers.callbacks import PipelineCallback

    from raiiaf_diffusers import ReplayError

    pipe = tiny.build("sd")
    capture = RaiiafCapture(tmp_path / "a.raiiaf")
    with capture.recording(pipe):
        pipe("a cat", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1),
             callback_on_step_end=capture)
    art = rc.open(capture.paths[0])
    environment = json.loads(json.dumps(art.environment))
    environment["torch"]["num_threads"] = 1
    environment["determinism"]["deterministic_algorithms"] = True
    environment["sdpa"]["flash"] = False
    edited = rc.write(tmp_path / "edited.raiiaf", image=art.image_bytes(), metadata=art.metadata,
                      tensors={name: art.load_tensor(name, framework="torch") for name in art.tensor_names},
                      environment=environment)

    class Boom(PipelineCallback):
        tensor_inputs = []

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.seen = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                         torch.backends.cuda.flash_sdp_enabled())
            raise RuntimeError("the pipeline fails")

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cuda.flash_sdp_enabled())
    boom = Boom()
    with pytest.raises(ReplayError, match="the pipeline fails"):
        replay(pipe, edited, callback_on_step_end=boom)
    assert boom.seen == (1, True, False) != before
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.cuda.flash_sdp_enabled()) == before


def test_a_difference_nothing_recorded_explains_is_said_plainly(lower_file, tmp_path):
    """The lower-level file with this process's environment in place of its own: nothing recorded differs, yet the
    replay does; the report must say so instead of "identical"."""
    import raiiaf_core as rc

    art = rc.open(lower_file)
    hidden = rc.write(tmp_path / "hidden.raiiaf", image=art.image_bytes(), metadata=art.metadata,
                      tensors={name: art.load_tensor(name, framework="torch") for name in art.tensor_names},
                      environment=rc.capture_environment())
    result = replay(tiny.build("sd"), hidden)
    assert not result.bit_exact and result.unexplained
    assert result.drift.differences == ()
    assert "environment: no recorded difference explains this" in result.report()
    assert "environment: identical" not in result.report()
