"""The `raiiaf` command on real files: what scripts rely on (exit codes, --json) and what people read."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import raiiaf_core as rc
from raiiaf_core.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def packed(tmp_path, capsys):
    out = tmp_path / "example.raiiaf"
    assert main(["pack", "--image", str(EXAMPLES / "example.png"), "--tensors",
                 str(EXAMPLES / "example.noise.safetensors"), "--metadata", str(EXAMPLES / "example.metadata.json"),
                 "-o", str(out)]) == 0
    capsys.readouterr()
    return out


def test_pack_stores_the_example_exactly(packed):
    art = rc.open(packed)
    assert art.image_bytes() == (EXAMPLES / "example.png").read_bytes()
    expected = safetensors.torch.load_file(str(EXAMPLES / "example.noise.safetensors"))["initial_noise"]
    assert torch.equal(art.load_tensor("initial_noise", "torch"), expected)
    assert art.metadata["seed"] == 42
    assert art.environment["python"]["version"]


def test_inspect_text_and_json(packed, capsys):
    assert main(["inspect", str(packed)]) == 0
    text = capsys.readouterr().out
    for expected in ("png 64x64", "initial_noise  float32 (1, 4, 8, 8)", "a lighthouse at dusk", "seed 42",
                     "sampler euler", "tiny-sd", "environment:"):
        assert expected in text
    assert main(["inspect", "--json", str(packed)]) == 0
    [info] = json.loads(capsys.readouterr().out)
    assert info["image"] == {"format": "png", "width": 64, "height": 64,
                             "bytes": (EXAMPLES / "example.png").stat().st_size}
    assert info["tensors"] == [{"name": "initial_noise", "dtype": "float32", "shape": [1, 4, 8, 8], "stored": "tensor"}]
    assert info["metadata"]["prompt"].startswith("a lighthouse")


def test_verify_exit_codes_and_one_line_per_file(packed, tmp_path, capsys):
    bad = tmp_path / "bad.raiiaf"
    data = bytearray(packed.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["verify", str(packed)]) == 0
    assert capsys.readouterr().out == f"OK    {packed}\n"
    assert main(["verify", str(packed), str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"OK    {packed}" and lines[1].startswith(f"FAIL  {bad}: ") and "damaged" in lines[1]
    assert main(["verify", "--json", str(bad)]) == 1
    assert json.loads(capsys.readouterr().out)[0]["ok"] is False


def test_extract_writes_files_other_tools_open(packed, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["extract", str(packed), "-o", str(out)]) == 0
    assert (out / "example.png").read_bytes() == (EXAMPLES / "example.png").read_bytes()
    loaded = safetensors.torch.load_file(str(out / "example.safetensors"))
    expected = safetensors.torch.load_file(str(EXAMPLES / "example.noise.safetensors"))
    assert loaded.keys() == expected.keys() and torch.equal(loaded["initial_noise"], expected["initial_noise"])
    assert json.loads((out / "example.metadata.json").read_text())["seed"] == 42
    assert "python" in json.loads((out / "example.environment.json").read_text())


def test_extract_bfloat16_tensors(tmp_path, capsys):
    t = torch.randn(2, 3).to(torch.bfloat16)
    path = rc.write(tmp_path / "bf.raiiaf", tensors={"x": t, "y": np.arange(4, dtype=np.float32)})
    assert main(["extract", str(path), "-o", str(tmp_path / "o")]) == 0
    loaded = safetensors.torch.load_file(str(tmp_path / "o" / "bf.safetensors"))
    assert torch.equal(loaded["x"], t) and loaded["y"].tolist() == [0, 1, 2, 3]


def test_diff_reports_settings_tensors_and_environment(packed, tmp_path, capsys):
    other = rc.write(tmp_path / "other.raiiaf", image=(EXAMPLES / "example.png").read_bytes(),
                     tensors={"initial_noise": np.zeros((1, 4, 8, 8), np.float32)},
                     metadata={**rc.open(packed).metadata, "seed": 43},
                     environment={**rc.open(packed).environment, "torch": {"version": "0.0"}})
    assert main(["diff", str(packed), str(packed)]) == 0
    capsys.readouterr()
    assert main(["diff", "--json", str(packed), str(other)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert {"key": "seed", "a": 42, "b": 43} in result["settings"]
    largest = float(np.abs(rc.open(packed).load_tensor("initial_noise")).max())
    assert result["tensors"] == [{"name": "initial_noise", "status": "different", "max_abs_diff": largest}]
    assert result["image_equal"] is True
    assert result["environment"]["can_change_output"] is True
    assert main(["diff", str(packed), str(other)]) == 1
    text = capsys.readouterr().out
    assert "setting  seed: 42 -> 43" in text and f"max abs diff {largest:.6g}" in text and "[yes] torch" in text


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["torch"]["version"] == torch.__version__
    assert "determinism" in env


def test_errors_go_to_stderr_with_exit_1(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.raiiaf")]) == 1
    assert "missing.raiiaf" in capsys.readouterr().err
    bad_meta = tmp_path / "m.json"
    bad_meta.write_text('{"seed": "x"}')
    assert main(["pack", "--image", str(EXAMPLES / "example.png"), "--metadata", str(bad_meta),
                 "-o", str(tmp_path / "o.raiiaf")]) == 1
    assert "metadata field 'seed'" in capsys.readouterr().err
    assert not (tmp_path / "o.raiiaf").exists()


def test_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "raiiaf_core.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
