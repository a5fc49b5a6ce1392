"""A diffusers capture written as its shareable PNG (RaiiafCapture(output=...)): the PNG shows the image with A1111
parameters, reads like the .raiiaf, replays bit for bit, and `raiiaf import` gives the .raiiaf back byte for byte."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import CaptureError, RaiiafCapture, replay, tiny  # noqa: E402
from conftest import undetected_private_chunk_flips  # noqa: E402


@pytest.fixture(scope="module")
def sd():
    pipe = tiny.tiny_sd()
    pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
    return pipe


def generate(pipe, capture):
    with capture.recording(pipe):
        return pipe("a painting of a cat", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(11), callback_on_step_end=capture,
                    **tiny.CALL_ARGS["sd"]).images[0]


def test_both_files_the_png_reads_replays_and_imports_back(sd, tmp_path):
    capture = RaiiafCapture(tmp_path / "cat.raiiaf", output="both", store_final_latents=True)
    image = generate(sd, capture)
    assert capture.paths == [tmp_path / "cat.raiiaf", tmp_path / "cat.png"] and capture.errors == []
    raiiaf, shared = capture.paths
    # The PNG written at capture time is the one `raiiaf export` makes of the .raiiaf.
    assert rc.export_png(raiiaf, tmp_path / "exported.png").read_bytes() == shared.read_bytes()

    with Image.open(shared) as im:
        assert im.tobytes() == image.tobytes()
        assert im.text["parameters"] == ("a painting of a cat\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, "
                                         "CFG scale: 5.0, Seed: 11, Size: 64x64, Model: sd")
    a, b = rc.open(raiiaf), rc.open(shared)
    assert a.metadata["model"]["name"] == "raiiaf-tiny/sd"  # A1111 names a model by its last part
    b.verify()
    assert b.metadata == a.metadata and b.environment == a.environment and b.tensor_names == a.tensor_names
    for name in a.tensor_names:
        assert torch.equal(a.load_tensor(name, "torch"), b.load_tensor(name, "torch")), name

    result = replay(sd, shared)
    assert result.bit_exact, result.report()

    rc.import_png(shared, tmp_path / "back.raiiaf")
    assert (tmp_path / "back.raiiaf").read_bytes() == raiiaf.read_bytes()


def test_png_only(sd, tmp_path):
    capture = RaiiafCapture(tmp_path / "cat.raiiaf", output="png")
    generate(sd, capture)
    assert capture.paths == [tmp_path / "cat.png"] and not (tmp_path / "cat.raiiaf").exists()
    assert replay(sd, tmp_path / "cat.png").bit_exact


def test_bad_output_choices_are_refused(sd, tmp_path):
    with pytest.raises(ValueError, match="output must be one of"):
        RaiiafCapture(tmp_path / "x.raiiaf", output="jpeg")
    capture = RaiiafCapture(None)
    generate(sd, capture)
    with pytest.raises(CaptureError, match="same name"):
        capture.last.write(tmp_path / "cat.png", output="both")
    assert list(tmp_path.iterdir()) == []


def test_every_byte_of_the_private_chunk_is_checked(sd, tmp_path):
    capture = RaiiafCapture(tmp_path / "cat.raiiaf", output="png")
    generate(sd, capture)
    data = capture.paths[0].read_bytes()
    missed, length = undetected_private_chunk_flips(data)
    assert missed == [] and length > 20_000  # the RNG tape's states, the noise, the record
