"""Noise stored as a recipe: drawn again on load and checked bit for bit, convert both ways, readers without torch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import raiiaf_core as rc  # noqa: E402
from raiiaf_core import chunks, recipe  # noqa: E402
from raiiaf_core.cli import main  # noqa: E402
from raiiaf_core.convert import convert  # noqa: E402
from raiiaf_core.writer import assemble  # noqa: E402

from conftest import png_bytes  # noqa: E402

ENV = {"schema_version": 1, "torch": {"version": torch.__version__}}
ROOT = Path(__file__).resolve().parents[1]


def comfy_noise(shape, seed, batch_index=None):
    """KSampler's noise as comfy.sample.prepare_noise draws it, written out here independently of recipe.py."""
    generator = torch.Generator().manual_seed(seed)
    if batch_index is None:
        return torch.randn(shape, generator=generator, dtype=torch.float32)
    unique, inverse = np.unique(batch_index, return_inverse=True)
    noises = []
    for i in range(unique[-1] + 1):
        noise = torch.randn([1, *shape[1:]], generator=generator, dtype=torch.float32)
        if i in unique:
            noises.append(noise)
    return torch.cat([noises[i] for i in inverse], dim=0)


def comfy_metadata(seed, batch_index=None):
    run = {"source": "captured", "seed": seed, "noise": "run0.noise"}
    meta = {"runs": [run], "noise": {"tensor": "run0.noise", "source": "captured"}, "seed": seed}
    if batch_index is not None:
        meta["host"] = {"comfyui": {"latent_batch_index": batch_index}}
    return meta


def write_raw(path, noise, meta, **extra):
    return rc.write(path, image=png_bytes(), tensors={"run0.noise": noise, **extra}, metadata=meta, environment=ENV)


@pytest.mark.parametrize("batch_index", [None, [3, 0, 3]])
def test_comfyui_noise_round_trips_bit_exact_as_a_recipe(tmp_path, batch_index):
    shape = [3 if batch_index else 1, 4, 24, 16]
    noise = comfy_noise(shape, 123456789, batch_index)
    meta = comfy_metadata(123456789, batch_index)
    tensors, kept = recipe.compact({"run0.noise": noise}, meta)
    assert kept == {} and isinstance(tensors["run0.noise"], rc.NoiseRecipe)
    assert tensors["run0.noise"].batch_index == (None if batch_index is None else tuple(batch_index))
    path = rc.write(tmp_path / "c.raiiaf", image=png_bytes(), tensors=tensors, metadata=meta, environment=ENV)
    art = rc.open(path)
    assert art.tensor_stored_as("run0.noise") == "tensor_recipe"
    assert art.tensor_info("run0.noise") == rc.TensorInfo("run0.noise", "float32", tuple(shape))
    loaded = art.load_tensor("run0.noise", "torch")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, noise)
    assert np.array_equal(art.load_tensor("run0.noise"), noise.numpy())
    assert art.verify() == []
    raw = write_raw(tmp_path / "r.raiiaf", noise, meta)
    assert path.stat().st_size < raw.stat().st_size - noise.numel() * 4 + 1024
    assert rc.open(raw).tensor_bytes("run0.noise") == art.tensor_bytes("run0.noise")


def test_a_recipe_is_made_only_from_a_draw_that_gives_the_tensor(tmp_path):
    noise = comfy_noise([1, 4, 8, 8], 7)
    with pytest.raises(rc.RecipeMismatchError, match="torch"):
        rc.noise_recipe(noise, [{"seed": 8}])
    tensors, kept = recipe.compact({"run0.noise": noise}, comfy_metadata(8))
    assert torch.equal(tensors["run0.noise"], noise) and "run0.noise" in kept  # stays raw, says why
    with pytest.raises(rc.TensorError, match="generators"):
        rc.noise_recipe(noise, [{"seed": -1}])
    with pytest.raises(rc.TensorError, match="generator state 's', which is not a stored tensor"):
        rc.write(tmp_path / "x.raiiaf", tensors={"n": rc.noise_recipe(
            noise, [{"state": "s"}], states={"s": torch.Generator().manual_seed(7).get_state()})}, environment=ENV)


def _rewritten(path, out, edit):
    """The file with its recipe chunk's JSON edited and every checksum made to match again (a careful forger)."""
    art = rc.open(path)
    pending = []
    for entry in art.chunks:
        payload = art.chunk_bytes(entry)
        if entry.type == "tensor_recipe":
            value = json.loads(payload)
            edit(value)
            payload = rc.layout.canonical_json(value)
        pending.append(chunks.Built(entry.type, entry.name, payload, entry.codec, len(payload), entry.info))
    Path(out).write_bytes(b"".join(assemble(pending)))
    return out


def test_an_altered_recipe_or_a_torch_drawing_differently_raises_and_the_rest_stays_readable(tmp_path):
    noise = comfy_noise([1, 4, 8, 8], 5)
    meta = comfy_metadata(5)
    path = rc.write(tmp_path / "a.raiiaf", image=png_bytes(), tensors=recipe.compact({"run0.noise": noise}, meta)[0],
                    metadata=meta, environment=ENV)

    def reseed(value):
        value["generators"] = [{"seed": 6}]

    level = torch.backends.cpu.get_cpu_capability()
    assert json.loads(rc.open(path).chunk_bytes(next(e for e in rc.open(path).chunks if e.type == "tensor_recipe"))
                      )["cpu_capability"] == level
    forged = rc.open(_rewritten(path, tmp_path / "b.raiiaf", reseed))
    same = (f"made with torch {torch.__version__} at CPU kernel level {level}, this is torch {torch.__version__} at "
            f"{level} (the same torch and kernel level: the recipe or its generator state was altered)")
    with pytest.raises(rc.RecipeMismatchError, match=re.escape(same)):
        forged.load_tensor("run0.noise")
    with pytest.raises(rc.RecipeMismatchError):
        forged.verify()
    assert forged.metadata == rc.open(path).metadata and forged.image_bytes() == png_bytes()

    def other_torch(value):  # what a file made by a torch that draws differently looks like here
        value["torch"] = "1.99.0"
        value["generators"] = [{"seed": 6}]

    other = rc.open(_rewritten(path, tmp_path / "c.raiiaf", other_torch))
    other_message = f"made with torch 1.99.0 at CPU kernel level {level}, this is torch {torch.__version__}"
    with pytest.raises(rc.RecipeMismatchError, match=re.escape(other_message)):
        other.load_tensor("run0.noise", "torch")

    def other_level(value):  # a recipe from a CPU running another kernel level, which drew differently
        value["cpu_capability"] = "DEFAULT" if level != "DEFAULT" else "AVX2"
        value["generators"] = [{"seed": 6}]

    with pytest.raises(rc.RecipeMismatchError, match=re.escape(
            "torch can draw differently at another CPU kernel level: load it in a process started with "
            f"ATEN_CPU_CAPABILITY={'default' if level != 'DEFAULT' else 'avx2'}, where this CPU runs that level; or "
            "convert the file to raw noise where it was made")):
        rc.open(_rewritten(path, tmp_path / "g.raiiaf", other_level)).load_tensor("run0.noise")

    def older_writer(value):  # a recipe from before the kernel level was recorded: the cause is not known
        del value["cpu_capability"]
        value["generators"] = [{"seed": 6}]

    with pytest.raises(rc.RecipeMismatchError, match="the same torch, but which CPU kernel level drew it is not known"):
        rc.open(_rewritten(path, tmp_path / "f.raiiaf", older_writer)).load_tensor("run0.noise")

    def huge(value):
        value["batch_index"] = [70_000]

    with pytest.raises(rc.CorruptFileError, match="batch_index"):
        rc.open(_rewritten(path, tmp_path / "d.raiiaf", huge)).load_tensor("run0.noise")
    data = bytearray(path.read_bytes())  # one byte of the recipe flipped, checksums left alone
    entry = next(e for e in rc.open(path).chunks if e.type == "tensor_recipe")
    data[entry.offset + entry.length - 3] ^= 1
    (tmp_path / "e.raiiaf").write_bytes(bytes(data))
    with pytest.raises(rc.CorruptFileError, match="tensor_recipe chunk 'run0.noise' is damaged"):
        rc.open(tmp_path / "e.raiiaf").load_tensor("run0.noise")


MAKE_AT_LEVEL = """
import sys, torch
import raiiaf_core as rc
from raiiaf_core import recipe
noise = torch.randn([1, 4, 64, 64], generator=torch.Generator().manual_seed(77))
meta = {"runs": [{"source": "captured", "seed": 77, "noise": "run0.noise"}], "seed": 77,
        "noise": {"tensor": "run0.noise", "source": "captured"}}
tensors, kept = recipe.compact({"run0.noise": noise}, meta)
assert not kept, kept
rc.write(sys.argv[1], tensors=tensors, metadata=meta, environment={"schema_version": 1})
rc.write(sys.argv[2], tensors={"run0.noise": noise}, metadata=meta, environment={"schema_version": 1})
"""

LOAD_AT_LEVEL = """
import sys, torch
import raiiaf_core as rc
drawn = rc.open(sys.argv[1]).load_tensor("run0.noise", "torch")
print("EQUAL" if torch.equal(drawn, rc.open(sys.argv[2]).load_tensor("run0.noise", "torch")) else "DIFFERENT")
"""


def _python(code, *args, **env):
    import os

    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_recipe_drawn_at_another_cpu_kernel_level_names_the_level_and_its_remedy_works(tmp_path):
    """torch can draw float32 noise with other code at another CPU kernel level (AVX2 code at AVX2 and AVX-512,
    scalar code at DEFAULT), so a recipe from a CPU of another kind can mismatch with the same torch: the error
    must say so, not call the file altered, and its remedy must give the noise back. On an AVX-512 CPU the file
    is made at AVX2, which draws the same noise: the test then checks that it loads."""
    from conftest import LOWER_CPU_LEVEL

    own = torch.backends.cpu.get_cpu_capability()
    if own not in LOWER_CPU_LEVEL:
        pytest.skip(f"this CPU runs torch's {own} kernels: no lower kernel level to make the file at")
    lower = LOWER_CPU_LEVEL[own]
    compact, raw = tmp_path / "compact.raiiaf", tmp_path / "raw.raiiaf"
    _python(MAKE_AT_LEVEL, compact, raw, ATEN_CPU_CAPABILITY=lower)
    art = rc.open(compact)
    assert art.tensor_stored_as("run0.noise") == "tensor_recipe"
    made_there = rc.open(raw).load_tensor("run0.noise", "torch")
    if torch.equal(made_there, torch.randn([1, 4, 64, 64], generator=torch.Generator().manual_seed(77))):
        assert own == "AVX512"  # AVX-512 and AVX2 draw alike; DEFAULT and AVX2 do not
        assert torch.equal(art.load_tensor("run0.noise", "torch"), made_there)
        return
    expected = (f"at CPU kernel level {lower.upper()}, this is torch {torch.__version__} at {own} (torch can draw "
                f"differently at another CPU kernel level: load it in a process started with "
                f"ATEN_CPU_CAPABILITY={lower}, where this CPU runs that level")
    with pytest.raises(rc.RecipeMismatchError, match=re.escape(expected)):
        art.load_tensor("run0.noise")
    assert art.metadata["seed"] == 77  # the rest reads as usual
    (remedy,) = set(re.findall(r"ATEN_CPU_CAPABILITY=(\w+)", expected))
    assert _python(LOAD_AT_LEVEL, compact, raw, ATEN_CPU_CAPABILITY=remedy).strip() == "EQUAL"


def test_a_recipe_asking_for_more_than_the_limit_is_refused(tmp_path):
    noise = comfy_noise([1, 4, 8, 8], 5)
    made = rc.noise_recipe(noise, [{"seed": 5}])
    huge = made._replace(shape=(1, 4, 65536, 65536))
    path = rc.write(tmp_path / "h.raiiaf", tensors={"n": huge}, environment=ENV)
    with pytest.raises(rc.LimitExceededError, match="max_recipe_bytes"):
        rc.open(path).load_tensor("n")


def test_a_generator_state_recipe_draws_from_the_files_own_state_tensor(tmp_path):
    generator = torch.Generator().manual_seed(11)
    torch.randn(5, generator=generator)  # used before: the seed alone no longer gives the noise
    state = generator.get_state()
    noise = torch.cat([torch.randn([1, 4, 8, 8], generator=generator) for _ in range(1)])
    made = rc.noise_recipe(noise, [{"state": "rng.0"}], states={"rng.0": state})
    path = rc.write(tmp_path / "s.raiiaf", tensors={"noise": made, "rng.0": state}, environment=ENV)
    assert torch.equal(rc.open(path).load_tensor("noise", "torch"), noise)


@pytest.mark.parametrize("batch_index", [None, [1, 0]])
def test_convert_both_ways_is_lossless_and_raw_recipe_raw_gives_the_same_bytes(tmp_path, batch_index):
    shape = [2 if batch_index else 1, 4, 16, 16]
    noise = comfy_noise(shape, 99, batch_index)
    meta = comfy_metadata(99, batch_index)
    raw = write_raw(tmp_path / "raw.raiiaf", noise, meta, latent=torch.randn(shape))
    assert main(["convert", str(raw), "--noise", "recipe", "-o", str(tmp_path / "small.raiiaf")]) == 0
    small = rc.open(tmp_path / "small.raiiaf")
    assert small.tensor_stored_as("run0.noise") == "tensor_recipe" and small.tensor_stored_as("latent") == "tensor"
    assert torch.equal(small.load_tensor("run0.noise", "torch"), noise)
    assert small.metadata == rc.open(raw).metadata and small.image_bytes() == png_bytes()
    assert main(["convert", str(tmp_path / "small.raiiaf"), "--noise", "raw", "-o", str(tmp_path / "back.raiiaf")]) == 0
    assert (tmp_path / "back.raiiaf").read_bytes() == raw.read_bytes()
    # converting to what a file already is changes nothing, byte for byte
    assert convert(raw, tmp_path / "same.raiiaf", "raw").changed == []
    assert (tmp_path / "same.raiiaf").read_bytes() == raw.read_bytes()


def test_convert_keeps_noise_no_recipe_reproduces_and_refuses_a_damaged_file(tmp_path, capsys):
    noise = torch.randn([1, 4, 8, 8])  # not drawn from the recorded seed
    raw = write_raw(tmp_path / "raw.raiiaf", noise, comfy_metadata(3))
    done = convert(raw, tmp_path / "out.raiiaf", "recipe")
    assert done.changed == [] and "run0.noise" in done.kept
    assert (tmp_path / "out.raiiaf").read_bytes() == raw.read_bytes()
    data = bytearray(raw.read_bytes())
    data[-20] ^= 1
    (tmp_path / "bad.raiiaf").write_bytes(bytes(data))
    assert main(["convert", str(tmp_path / "bad.raiiaf"), "--noise", "recipe", "-o", str(tmp_path / "o2.raiiaf")]) == 1
    assert "damaged" in capsys.readouterr().err and not (tmp_path / "o2.raiiaf").exists()


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # this process has no torch
import raiiaf_core as rc
from raiiaf_core.cli import main
art = rc.open(sys.argv[1])
assert art.metadata["seed"] == 5 and art.tensor_info("run0.noise").shape == (1, 4, 8, 8)
assert art.image_bytes()
print("UNCHECKED", art.verify())
try:
    art.load_tensor("run0.noise")
except rc.MissingDependencyError as exc:
    print("MISSING", exc)
sys.exit(main(["verify", sys.argv[1]]) + main(["inspect", sys.argv[1]]))
"""


def test_without_torch_the_file_opens_inspects_and_verifies_saying_the_recipe_is_unchecked(tmp_path):
    noise = comfy_noise([1, 4, 8, 8], 5)
    meta = comfy_metadata(5)
    path = rc.write(tmp_path / "a.raiiaf", image=png_bytes(), tensors=recipe.compact({"run0.noise": noise}, meta)[0],
                    metadata=meta, environment=ENV)
    done = subprocess.run([sys.executable, "-c", _NO_TORCH, str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "UNCHECKED [" in done.stdout and "its sha256 is checked only with torch" in done.stdout
    assert "MISSING" in done.stdout and "needs torch installed" in done.stdout
    assert f"OK    {path}\n      unchecked:" in done.stdout
    assert "(a recipe: drawn when loaded)" in done.stdout


HOSTILE = [
    ({"generators": []}, {}),
    ({"generators": [{"seed": 1, "state": "s"}]}, {}),
    ({"generators": [{"seed": True}]}, {}),
    ({"generators": [{"seed": 2**64}]}, {}),
    ({"generators": [{"state": "rng"}]}, {}),  # a state that is no CPU generator's (16 bytes)
    ({"generators": [{"state": "latent"}]}, {}),  # a float tensor
    ({"generators": [{"state": "missing"}]}, {}),
    ({"generators": [{"state": "run0.noise"}]}, {}),  # itself
    ({"batch_index": []}, {"shape": [0, 4, 8, 8]}),
    ({"batch_index": [0, 1]}, {}),
    ({"batch_index": [-1]}, {}),
    ({"generators": [{"seed": 1}, {"seed": 2}]}, {}),
    ({"sha256": "0" * 63}, {}),
    ({"torch": 2}, {}),
    ({"cpu_capability": 5}, {}),
    ({"cpu_capability": "AVX2; rm"}, {}),
    ({"cpu_capability": "A" * 41}, {}),
    ({"how": "other"}, {}),
    ({}, {"dtype": "int64"}),
    ({}, {"shape": []}),
    ({}, {"shape": [1, 4, 2**40, 2**40]}),
]


@pytest.mark.parametrize("change, index", HOSTILE)
def test_a_hostile_recipe_is_refused_with_the_projects_error(tmp_path, change, index):
    noise = comfy_noise([1, 4, 8, 8], 5)
    made = rc.noise_recipe(noise, [{"seed": 5}])
    path = rc.write(tmp_path / "a.raiiaf", tensors={"run0.noise": made, "rng": torch.zeros(16, dtype=torch.uint8),
                                                    "latent": torch.zeros(1, 4, 8, 8)}, environment=ENV)
    art = rc.open(path)
    pending = []
    for entry in art.chunks:
        payload, info = art.chunk_bytes(entry), entry.info
        if entry.type == "tensor_recipe":
            payload = rc.layout.canonical_json({**json.loads(payload), **change})
            info = {**info, **index}
        pending.append(chunks.Built(entry.type, entry.name, payload, entry.codec, len(payload), info))
    (tmp_path / "b.raiiaf").write_bytes(b"".join(assemble(pending)))
    forged = rc.open(tmp_path / "b.raiiaf")  # opens: only reading the recipe finds it wrong
    for attempt in (lambda: forged.load_tensor("run0.noise"), forged.verify):
        with pytest.raises(rc.RaiiafError):
            attempt()
    assert forged.load_tensor("latent").shape == (1, 4, 8, 8)  # the rest of the file reads
