"""The tiny random-weight pipelines (raiiaf_diffusers.tiny): every kind builds offline, deterministically,
without touching the caller's RNG, with every module in eval mode, and generates at its tiny size.

Each kind is built twice per module (fixture) and generated from once per build with the same seed;
a fresh Python process rebuilds every kind and must hash to the same weights.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from raiiaf_diffusers import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = sorted(tiny.KINDS)


def weights_digest(pipe) -> str:
    """sha256 over every module's parameters and buffers, in component and state-dict order."""
    digest = hashlib.sha256()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, tensor in component.state_dict().items():
                digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def generate(pipe, kind: str, seed: int = 3):
    """The decoded output as a float tensor, channels first (batch, [frames,] channels, height, width)."""
    args = dict(tiny.CALL_ARGS[kind], num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                output_type="pt")
    if type(pipe).__name__.endswith("ModularPipeline"):
        return pipe(prompt="a painting of a cat", output="images", **args)
    output = pipe(prompt="a painting of a cat", **args)
    return output.frames if hasattr(output, "frames") else output.images


def expected_size(kind: str) -> tuple[int, int]:
    """(height, width) the call asks for: its height/width arguments, else the size of its input image."""
    args = tiny.CALL_ARGS[kind]
    image = args.get("image")
    return args.get("height", image.height if image is not None else None), args.get("width", image.width if image is not None else None)


class Built:
    def __init__(self, kind):
        before = torch.random.get_rng_state()
        self.first = tiny.build(kind)
        self.second = tiny.build(kind)
        self.rng_untouched = torch.equal(before, torch.random.get_rng_state())
        self.output_first = generate(self.first, kind)
        self.output_second = generate(self.second, kind)


class _Cache(dict):
    def __missing__(self, kind):
        try:
            self[kind] = Built(kind)
        except ImportError as exc:  # a family newer than this diffusers (Flux.2 came after 0.36)
            pytest.skip(f"{kind} cannot be built with diffusers {diffusers.__version__}: {exc}")
        return self[kind]


@pytest.fixture(scope="module")
def built():
    """Kind -> Built, each built on first use, so that one broken kind fails only its own tests."""
    return _Cache()


@pytest.mark.parametrize("kind", KINDS)
def test_build_leaves_the_global_rng_alone(built, kind):
    assert built[kind].rng_untouched


@pytest.mark.parametrize("kind", KINDS)
def test_two_builds_have_the_same_weights_and_give_the_same_output(built, kind):
    case = built[kind]
    assert weights_digest(case.first) == weights_digest(case.second)
    assert case.output_first.dtype == torch.float32
    assert torch.equal(case.output_first, case.output_second)


@pytest.mark.parametrize("kind", KINDS)
def test_every_module_is_in_eval_mode_and_named(built, kind):
    pipe = built[kind].first
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert modules
    assert not any(m.training for component in modules for m in component.modules())
    assert pipe.config["_name_or_path"] == tiny.MODEL_ID_PREFIX + kind


@pytest.mark.parametrize("kind", KINDS)
def test_call_args_give_the_expected_size(built, kind):
    output = built[kind].output_first
    assert output.shape[0] == 1 and output.shape[-3] == 3
    assert tuple(output.shape[-2:]) == expected_size(kind)
    assert torch.isfinite(output).all()


def _builds(built, kind) -> bool:
    try:
        built[kind]
    except pytest.skip.Exception:
        return False
    return True


def test_a_fresh_process_builds_the_same_weights(built):
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_diffusers_tiny import weights_digest\n"
        "from raiiaf_diffusers import tiny\n"
        "print(json.dumps({k: weights_digest(tiny.build(k)) for k in sys.argv[2:]}))\n"
    )
    kinds = [kind for kind in KINDS if _builds(built, kind)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), *kinds], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh == {kind: weights_digest(built[kind].first) for kind in kinds}


def test_input_image_and_mask_are_fixed_numbers():
    image, mask = tiny.input_image(64, 64), tiny.input_mask(64, 64)
    assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (64, 64), "L", (64, 64))
    assert hashlib.sha256(image.tobytes()).hexdigest() == hashlib.sha256(tiny.input_image(64, 64).tobytes()).hexdigest()
    assert sorted(set(mask.tobytes())) == [0, 255]
    assert mask.getpixel((32, 32)) == 255 and mask.getpixel((0, 0)) == 0


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="sd_img2img"):
        tiny.build("no-such-kind")
    assert type(tiny.build(tiny.MODEL_ID_PREFIX + "sd")).__name__ == "StableDiffusionPipeline"
