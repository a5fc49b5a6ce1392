"""raiiaf_core.recreated: a file's torch settings for one block, on the real torch; what a file may not ask for."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import raiiaf_core as rc  # noqa: E402


def _now() -> tuple:
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision(),
            torch.backends.cuda.math_sdp_enabled(), torch.backends.mkldnn.enabled)


def _environment(**changes) -> dict:
    environment = json.loads(json.dumps(rc.capture_environment()))
    for key, value in changes.items():
        section, name = key.split("__")
        environment[section][name] = value
    return environment


def _environment_of_a_process_that_ran(code: str) -> dict:
    """What a file made by a process with these torch settings records: the switches are coupled (the legacy
    float32_matmul_precision writes TF32 flags and fp32_precision), so they are set for real, not edited."""
    script = f"import json, torch, raiiaf_core as rc\n{code}\nprint(json.dumps(rc.capture_environment()))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_recorded_settings_hold_inside_the_block_and_are_put_back_after():
    before = _now()
    environment = _environment_of_a_process_that_ran(
        f"torch.set_num_threads({before[0] + 1}); torch.use_deterministic_algorithms(True)\n"
        "torch.set_float32_matmul_precision('medium'); torch.backends.cuda.enable_math_sdp(False)\n"
        f"torch.backends.mkldnn.enabled = {not before[4]}")
    precision = (torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
                 torch.backends.mkldnn.matmul.fp32_precision)
    with rc.recreated(environment) as recreation:
        assert _now() == (before[0] + 1, True, "medium", False, not before[4])
        assert rc.drift(environment).differences == ()  # nothing left that recreation could set
    assert _now() == before
    assert (torch.backends.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
            torch.backends.mkldnn.matmul.fp32_precision) == precision  # the precision tree exactly as it was
    assert {"torch.num_threads", "determinism.deterministic_algorithms", "determinism.float32_matmul_precision",
            "sdpa.math", "determinism.mkldnn_enabled"} <= {s.key for s in recreation.settings}
    assert recreation.refused == []


def test_the_same_settings_set_nothing_and_disabled_touches_nothing():
    with rc.recreated(rc.capture_environment()) as recreation:
        pass
    assert recreation.settings == [] and recreation.lines() == []
    threads = torch.get_num_threads()
    with rc.recreated(_environment(torch__num_threads=threads + 1), enabled=False) as recreation:
        assert torch.get_num_threads() == threads and recreation.settings == []


@pytest.mark.parametrize("key,value", [
    ("torch__num_threads", 10 ** 9), ("torch__num_threads", 0), ("torch__num_threads", True),
    ("torch__num_threads", "2"), ("determinism__deterministic_algorithms", "yes"),
    ("determinism__float32_matmul_precision", "fastest"), ("sdpa__flash", 1), ("determinism__fp32_precision", "tf64"),
])
def test_values_a_setting_does_not_take_are_refused_and_named(key, value):
    before = _now()
    with rc.recreated(_environment(**{key: value})) as recreation:
        assert _now() == before
    assert recreation.settings == []
    (refused,) = recreation.refused
    assert refused.startswith(key.replace("__", ".") + ": the file records")


@pytest.mark.parametrize("environment", [{}, {"torch": [1, 2]}, {"determinism": "on"}, {"sdpa": None}, []])
def test_environments_of_other_shapes_set_nothing(environment):
    with rc.recreated(environment) as recreation:
        pass
    assert recreation.settings == [] and recreation.refused == []


def test_raiiaf_core_still_imports_without_torch():
    code = "import sys, raiiaf_core; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
