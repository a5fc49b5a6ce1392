"""RaiiafCapture(noise_storage="recipe"): diffusers noise from CPU generators stored as its checked recipe."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import raiiaf_core as rc  # noqa: E402
from raiiaf_core.convert import convert  # noqa: E402
from raiiaf_diffusers import RaiiafCapture, replay, tiny  # noqa: E402


@pytest.fixture(scope="module")
def sd():
    return tiny.tiny_sd()


def _run(pipe, capture, generator, batch=1):
    args = dict(tiny.CALL_ARGS["sd"], num_inference_steps=2, generator=generator, num_images_per_prompt=batch,
                callback_on_step_end=capture)
    with capture.recording(pipe):
        pipe("a cat", **args)


@pytest.mark.parametrize("how", ["seeded", "used_before", "one_per_image", "global_rng"])
def test_cpu_generator_noise_is_stored_as_a_recipe_and_replays_bit_exact(sd, tmp_path, how):
    if how == "one_per_image":
        generator = [torch.Generator().manual_seed(s) for s in (3, 4)]
    elif how == "global_rng":  # no generator: drawn from the CPU's global RNG, whose state the file records
        generator = None
    else:
        generator = torch.Generator().manual_seed(3)
        if how == "used_before":  # the seed alone no longer gives the noise: the recorded state does
            torch.randn(7, generator=generator)
    batch = 2 if how == "one_per_image" else 1
    raw = RaiiafCapture(tmp_path / "raw.raiiaf")
    torch.manual_seed(3)  # the global RNG, for "global_rng": both calls start from the same state
    _run(sd, raw, [torch.Generator().manual_seed(s) for s in (3, 4)] if batch == 2 else
         _same_generator(generator, how), batch)
    small = RaiiafCapture(tmp_path / "small.raiiaf", noise_storage="recipe")
    torch.manual_seed(3)
    _run(sd, small, generator, batch)
    for raw_path, small_path in zip(raw.paths, small.paths):
        art, base = rc.open(small_path), rc.open(raw_path)
        assert art.tensor_stored_as("noise") == "tensor_recipe" and base.tensor_stored_as("noise") == "tensor"
        noise = art.load_tensor("noise", "torch")
        assert torch.equal(noise, small.last.noise) and torch.equal(noise, base.load_tensor("noise", "torch"))
        assert art.tensor_bytes("noise") == base.tensor_bytes("noise")
        assert art.verify() == []
        assert raw_path.stat().st_size - small_path.stat().st_size > noise.numel() * 4 - 400
        assert replay(sd, small_path).bit_exact
        # and back: the raw file convert makes holds the same tensors as the raw capture
        back = convert(small_path, tmp_path / f"back-{small_path.name}", "raw")
        assert back.changed == ["noise"]
        assert rc.open(back.path).tensor_bytes("noise") == base.tensor_bytes("noise")


def _same_generator(generator, how):
    if how == "global_rng":
        return None
    again = torch.Generator().manual_seed(3)
    if how == "used_before":
        torch.randn(7, generator=again)
    return again


def test_noise_storage_is_checked():
    with pytest.raises(ValueError, match="noise_storage"):
        RaiiafCapture(None, noise_storage="zip")
