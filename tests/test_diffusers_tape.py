"""The RNG tape: draws the tape cannot see are stated in the file, a replay that leaves the tape is
reported at the first differing draw (site and step), the record is read by the code that wrote it,
and a capture never costs the caller the images."""

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import DiffusersRecord, RaiiafCapture, replay, tiny  # noqa: E402
from raiiaf_diffusers import _rng  # noqa: E402
from raiiaf_diffusers.record import Reader  # noqa: E402

from diffusers_edit import rewrite  # noqa: E402

SIZE = {"height": 32, "width": 32}


class UntrackedDraws(diffusers.StableDiffusionPipeline):
    """Draws outside randn_tensor: from the call's generator before the noise, from the global RNG at the end."""

    def prepare_latents(self, *args, **kwargs):
        generator = kwargs["generator"] if "generator" in kwargs else args[6]
        torch.rand(3, generator=generator)  # consumed, and invisible to the tape
        return super().prepare_latents(*args, **kwargs)

    def run_safety_checker(self, image, device, dtype):
        torch.randn(2)  # the global CPU RNG, after the last taped draw
        return super().run_safety_checker(image, device, dtype)


@pytest.fixture(scope="module")
def sd():
    pipe = tiny.tiny_sd()
    pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
    return pipe


def _capture(pipe, path, seed=7, **kwargs):
    capture = RaiiafCapture(path, store_final_latents=True)
    with capture.recording(pipe):
        out = pipe("a painting of a cat", num_inference_steps=3, generator=torch.Generator().manual_seed(seed),
                   callback_on_step_end=capture, **{**SIZE, **kwargs})
    return capture, out


def test_untracked_draws_are_stated_in_the_file_and_replayed_from_the_call_start(sd, tmp_path):
    pipe = UntrackedDraws(**sd.components, requires_safety_checker=False)
    pipe.scheduler = sd.scheduler
    capture, _ = _capture(pipe, tmp_path / "untracked.raiiaf")
    rec = rc.open(capture.paths[0]).metadata["host"]["diffusers"]
    assert rec["rng"]["untracked"] == [{"stream": "generator", "index": 0, "before": 0},
                                       {"stream": "global", "index": 0, "before": None}]
    # the generator was used before the noise draw, so its post-draw state would miss that use: the noise
    # is not fed back as latents=, every RNG is restored as it was at the start of the call instead
    assert rec["noise"]["draw"] == 0 and rec["noise"]["feed"] == "tape"
    warnings = capture.last.warnings
    assert warnings[0].startswith("replay may not be exact: 1 untracked use of generator 0 (first before draw 0 "
                                  "(diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion "
                                  "StableDiffusionPipeline.prepare_latents")
    assert warnings[1].startswith("replay may not be exact: 1 untracked use of the global cpu RNG (first after the "
                                  "last taped draw)")
    result = replay(pipe, capture.paths[0])
    assert result.bit_exact and result.draws_checked == 4
    assert warnings[0] in result.notes and warnings[1] in result.notes


def test_first_differing_draw_is_reported_with_site_and_step(sd, tmp_path):
    img2img = tiny.build("sd_img2img")
    img2img.scheduler = tiny.scheduler("euler_a", img2img.scheduler.config)
    capture = RaiiafCapture(tmp_path / "i2i.raiiaf")
    with capture.recording(img2img):
        img2img("a cat", num_inference_steps=4, generator=torch.Generator().manual_seed(7),
                callback_on_step_end=capture, **tiny.CALL_ARGS["sd_img2img"])
    path = capture.paths[0]
    # another valid generator state at the start of the call: the VAE's sample of the input image (draw 0,
    # before any step) is the first draw that comes out differently
    other = torch.Generator().manual_seed(8).get_state()
    moved = rewrite(path, tmp_path / "moved.raiiaf", tensors={"rng.generator.0.at_start": other})
    result = replay(img2img, moved)
    assert not result.bit_exact
    expected = ("draw 0 (diffusers.models.autoencoders.vae DiagonalGaussianDistribution.sample, after 0 completed "
                "steps) differs from the tape: different values (sha256 differs)")
    assert result.tape_mismatch == expected
    assert result.verdict.startswith("NOT bit-exact: " + expected)
    # fewer steps than captured: the missing draws are named
    fewer = replay(img2img, path, num_inference_steps=2)
    assert fewer.tape_mismatch.startswith("the replay made 3 draws, the capture 5: draw 3 "
                                          "(diffusers.schedulers.scheduling_euler_ancestral_discrete "
                                          "EulerAncestralDiscreteScheduler.step, after 1 completed step)")


def test_a_draw_off_the_tape_with_identical_output_is_a_note(sd, tmp_path):
    capture, _ = _capture(sd, tmp_path / "a.raiiaf")
    rec_draws = rc.open(capture.paths[0]).metadata["host"]["diffusers"]["rng"]["draws"]
    assert [d["step"] for d in rec_draws] == [0, 0, 1, 2]
    edited = rewrite(capture.paths[0], tmp_path / "sha.raiiaf",
                     record=lambda rec: rec["rng"]["draws"][2].update(sha256="0" * 64))
    result = replay(sd, edited)
    assert result.bit_exact  # image and stored latents are the file's: the tape entry alone disagrees
    assert result.tape_mismatch.startswith("draw 2 (diffusers.schedulers.scheduling_euler_ancestral_discrete "
                                           "EulerAncestralDiscreteScheduler.step, after 1 completed step)")
    assert f"note: {result.tape_mismatch}" in result.report()


def test_the_record_reads_back_into_the_classes_that_wrote_it(sd, tmp_path):
    capture, _ = _capture(sd, tmp_path / "r.raiiaf")
    art = rc.open(capture.paths[0])
    tensors = {n: (art.tensor_info(n).dtype, tuple(art.tensor_info(n).shape)) for n in art.tensor_names}
    read = DiffusersRecord.from_json(art.metadata["host"]["diffusers"], Reader(str(capture.paths[0]), tensors))
    assert read == capture.last.record_for(0)
    assert read.to_json() == art.metadata["host"]["diffusers"]


def test_version_1_files_still_replay(sd):
    from pathlib import Path

    path = Path(__file__).parent / "data" / "diffusers" / "record-v1-sd-euler_a.raiiaf"
    assert rc.open(path).metadata["host"]["diffusers"]["record_version"] == 1
    result = replay(tiny.tiny_sd(), path)
    assert result.draws_checked is None
    assert "record version 1: the file has no RNG tape, so draws were not checked one by one" in result.notes
    # Made with diffusers 0.42.1 and transformers 5.24.0 on an Intel Xeon (AVX-512): a v1 record has no
    # cpu_capability, so the CPU model stands for it.
    changed = {d.key for d in result.drift.differences} & {"packages.diffusers", "packages.transformers",
                                                           "cpu.model"}
    if not changed:
        assert result.bit_exact and result.latents_equal is True
    else:  # another release or CPU computes other numbers: the report says so, and why
        assert result.drift.can_change_output


def test_a_file_that_cannot_be_written_does_not_cost_the_images(sd, tmp_path):
    target = tmp_path / "taken.raiiaf"
    target.write_bytes(b"someone else's file")
    capture = RaiiafCapture(target, exclusive=True)
    with capture.recording(sd):
        out = sd("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(1),
                 callback_on_step_end=capture, **SIZE)
    assert out.images[0].size == (32, 32) and capture.paths == []
    assert len(capture.errors) == 1 and isinstance(capture.errors[0], rc.TargetExistsError)
    assert target.read_bytes() == b"someone else's file"
    written = capture.last.write(tmp_path / "later.raiiaf")  # the call is still there to write elsewhere
    assert replay(sd, written[0]).bit_exact


def test_device_rng_table():
    cpu = torch.device("cpu")
    before = _rng.get_state(cpu)
    with _rng.preserved([cpu]):
        torch.manual_seed(5)
        assert not torch.equal(_rng.get_state(cpu), before)
    assert torch.equal(_rng.get_state(cpu), before)
    assert set(_rng.DEVICE_RNG) >= {"cpu", "cuda", "mps", "xpu"}
    assert _rng.global_devices(cpu) == [cpu]
    if not torch.cuda.is_available():
        assert not _rng.device_available(torch.device("cuda:0"))
        assert _rng.global_devices(torch.device("cuda:0")) == [cpu, torch.device("cuda:0")]
