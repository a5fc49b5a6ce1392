"""Hostile records: well-formed files (every checksum valid, rewritten with raiiaf_core.write) whose
host.diffusers record lies, asks for huge allocations, or holds values of the wrong type.

replay() must never call such a file bit-exact, never allocate or run far beyond what the file
records, and refuse each one with ReplayError naming the file and the field, never a foreign exception.
"""

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import RaiiafCapture, RecordError, ReplayError, replay, tiny  # noqa: E402

from diffusers_edit import rewrite  # noqa: E402


# Smaller than tiny.CALL_ARGS where the pipeline allows: every test here generates at least once.
SIZES = {"sd": {"height": 32, "width": 32}}


def _capture(pipe, kind, path, seed=7):
    capture = RaiiafCapture(path, store_final_latents=True)
    with capture.recording(pipe):
        pipe("a painting of a cat", num_inference_steps=3, generator=torch.Generator().manual_seed(seed),
             callback_on_step_end=capture, **{**tiny.CALL_ARGS[kind], **SIZES.get(kind, {})})
    return capture.paths[0]


@pytest.fixture(scope="module")
def sd():
    pipe = tiny.tiny_sd()
    pipe.scheduler = tiny.scheduler("euler_a", pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def files(sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {"a": _capture(sd, "sd", folder / "a.raiiaf"), "b": _capture(sd, "sd", folder / "b.raiiaf", seed=8),
            "folder": folder}


def refused(pipe, path, field, **overrides):
    """replay() must raise ReplayError naming the file and host.diffusers.<field>."""
    start = time.perf_counter()
    with pytest.raises(ReplayError) as info:
        replay(pipe, path, **overrides)
    message = str(info.value)
    assert str(path) in message, message
    assert field in message, message
    assert time.perf_counter() - start < 60, "refusing must not take the time of a huge generation"
    return message


def test_the_untouched_file_replays_bit_exact(sd, files):
    assert replay(sd, files["a"]).bit_exact


# --- a replay verdict only from what the file holds --------------------------------------------------


def test_another_picture_with_the_same_record_is_not_bit_exact(sd, files, tmp_path):
    other = rc.open(files["b"]).image_bytes()  # a real capture of the same size, another seed
    forged = rewrite(files["a"], tmp_path / "swapped.raiiaf", image=other)
    result = replay(sd, forged)
    assert not result.bit_exact and not result.image_equal
    assert "output.pixels_sha256 does not match the stored image" in result.verdict
    assert result.verdict.startswith("NOT bit-exact")


def test_another_picture_with_a_consistent_record_is_not_bit_exact(sd, files, tmp_path):
    # the forger also rewrites the record's own hash: the record agrees with itself, not with the replay
    art_b = rc.open(files["b"])
    pixels = art_b.metadata["host"]["diffusers"]["output"]["pixels_sha256"]
    forged = rewrite(files["a"], tmp_path / "consistent.raiiaf", image=art_b.image_bytes(),
                     record=lambda rec: rec["output"].update(pixels_sha256=pixels))
    result = replay(sd, forged)
    assert not result.bit_exact and not result.image_equal and result.record_problems == []
    assert result.latents_equal is True  # the latents are the original's: only the picture was swapped
    assert result.image_max_abs_diff > 0 and "image pixels differ" in result.verdict


def test_a_smaller_picture_is_not_bit_exact(sd, files, tmp_path):
    small = rc.open(files["a"]).image().resize((16, 16))
    forged = rewrite(files["a"], tmp_path / "small.raiiaf", image=small)
    result = replay(sd, forged)
    assert not result.bit_exact and not result.image_equal


def test_stored_final_latents_are_compared_themselves(sd, files, tmp_path):
    other = rc.open(files["b"]).load_tensor("final_latents", framework="torch")
    kept_hash = rewrite(files["a"], tmp_path / "latents.raiiaf", tensors={"final_latents": other})
    result = replay(sd, kept_hash)
    assert not result.bit_exact and result.latents_equal is False and result.latents_max_abs_diff > 0
    assert "final_latents.sha256 does not match the stored final latents" in result.verdict
    sha = rc.tensor_sha256(other)
    consistent = rewrite(files["a"], tmp_path / "latents2.raiiaf", tensors={"final_latents": other},
                         record=lambda rec: rec["final_latents"].update(sha256=sha))
    result = replay(sd, consistent)
    assert not result.bit_exact and result.latents_equal is False and result.record_problems == []


def test_noise_that_is_not_the_taped_draw_is_reported(sd, files, tmp_path):
    # a tape-fed record (img2img) whose stored noise is not the draw its tape names
    pipe = tiny.build("sd_img2img")
    path = _capture(pipe, "sd_img2img", tmp_path / "i2i.raiiaf")
    noise = rc.open(path).load_tensor("noise", framework="torch")
    forged = rewrite(path, tmp_path / "i2i-noise.raiiaf", tensors={"noise": noise + 1})
    result = replay(pipe, forged)
    assert not result.bit_exact
    assert "noise: the stored noise is not draw 1 of the tape" in result.verdict


# --- values that drive allocation or time, bounded before use -----------------------------------------


def test_huge_training_timesteps_in_the_scheduler_config(sd, files, tmp_path):
    path = rewrite(files["a"], tmp_path / "t.raiiaf",
                   record=lambda rec: rec["scheduler"]["config"].update(num_train_timesteps=10**9))
    message = refused(sd, path, "host.diffusers.scheduler.config.num_train_timesteps")
    assert "exceeds Limits.max_replay_steps=10000" in message
    with pytest.raises(rc.LimitExceededError):  # a limit of rc.Limits, which the caller can raise
        replay(sd, path)


def test_huge_step_counts(sd, files, tmp_path):
    steps = rewrite(files["a"], tmp_path / "s.raiiaf",
                    record=lambda rec: rec["call"]["arguments"].update(num_inference_steps=10**6))
    refused(sd, steps, "host.diffusers.call.arguments.num_inference_steps")
    # within rc.Limits but beyond what the capture ran: the recorded steps bound the replay
    more = rewrite(files["a"], tmp_path / "s2.raiiaf",
                   record=lambda rec: rec["call"]["arguments"].update(num_inference_steps=500))
    assert "capture ran 3" in refused(sd, more, "host.diffusers.call.arguments.num_inference_steps")
    # and a record that claims as many steps run is stopped by rc.Limits
    claimed = rewrite(files["a"], tmp_path / "s3.raiiaf",
                      record=lambda rec: (rec["call"]["arguments"].update(num_inference_steps=10**6),
                                          rec.update(steps_run=10**6)))
    refused(sd, claimed, "host.diffusers.steps_run")
    sigmas = rewrite(files["a"], tmp_path / "s4.raiiaf",
                     record=lambda rec: rec["call"]["arguments"].update(timesteps=list(range(20_000))))
    refused(sd, sigmas, "host.diffusers.call.arguments.timesteps")


def test_more_steps_than_recorded_are_refused_or_stopped(sd, files, tmp_path):
    # the call asks for 3 steps, the record says 2 ran: refused before the replay starts
    path = rewrite(files["a"], tmp_path / "r.raiiaf", record=lambda rec: rec.update(steps_run=2))
    assert "3 steps, but the capture ran 2" in refused(sd, path, "host.diffusers.call.arguments.num_inference_steps")
    # Heun steps twice per timestep (5 step callbacks for 3 inference steps): a record claiming 3 lets the
    # call through, and the replay is stopped after the 3rd step instead of running on
    import diffusers

    ancestral = sd.scheduler
    sd.scheduler = diffusers.HeunDiscreteScheduler.from_config(ancestral.config)
    try:
        captured = _capture(sd, "sd", tmp_path / "heun.raiiaf")
        assert rc.open(captured).metadata["host"]["diffusers"]["steps_run"] == 5
        short = rewrite(captured, tmp_path / "heun-short.raiiaf", record=lambda rec: rec.update(steps_run=3))
        assert "more than 3 steps" in refused(sd, short, "steps_run=3")
    finally:
        sd.scheduler = ancestral


def test_huge_batches(sd, files, tmp_path):
    images = rewrite(files["a"], tmp_path / "n.raiiaf",
                     record=lambda rec: rec["call"]["arguments"].update(num_images_per_prompt=10**6))
    refused(sd, images, "host.diffusers.call.arguments.num_images_per_prompt")
    prompts = rewrite(files["a"], tmp_path / "p.raiiaf",
                      record=lambda rec: rec["call"]["arguments"].update(prompt=["a cat"] * 300_000))
    assert "300000 prompts for a batch of 1" in refused(sd, prompts, "host.diffusers.call.arguments.prompt")
    many = {"kind": "list", "devices": ["cpu"] * 200_000, "seeds": [7] * 200_000,
            "at_start": ["rng.generator.0.at_start"] * 200_000, "after_noise": [None] * 200_000}
    generators = rewrite(files["a"], tmp_path / "g.raiiaf",
                         record=lambda rec: rec["rng"].update(generators=many))
    refused(sd, generators, "host.diffusers.rng.generators.devices")


def test_huge_flux_sizes(tmp_path):
    flux = tiny.tiny_flux()
    path = _capture(flux, "flux", tmp_path / "flux.raiiaf")
    for name in ("height", "width"):
        huge = rewrite(path, tmp_path / f"flux-{name}.raiiaf",
                       record=lambda rec, name=name: rec["call"]["arguments"].update({name: 200_000}))
        assert "the stored image is 16x16" in refused(flux, huge, f"host.diffusers.call.arguments.{name}")


def test_many_tensor_references_under_an_unused_argument(sd, files, tmp_path):
    refs = [{"$tensor": "noise", "device": "cpu"}] * 100_000
    path = rewrite(files["a"], tmp_path / "refs.raiiaf",
                   record=lambda rec: rec["call"]["arguments"].update(not_an_argument=refs))
    # the first reference already names a tensor the noise field uses: refused before anything is loaded
    refused(sd, path, "host.diffusers.call.arguments.not_an_argument.0")
    missing = rewrite(files["a"], tmp_path / "refs2.raiiaf", record=lambda rec: rec["call"]["arguments"].update(
        not_an_argument=[{"$tensor": f"t{i}"} for i in range(100_000)]))
    assert "does not hold" in refused(sd, missing, "host.diffusers.call.arguments.not_an_argument.")


# --- one edited field each: the project's error, naming the field -----------------------------------


def _edit(files, tmp_path, name, record=None, metadata=None, tensors=None):
    return rewrite(files["a"], tmp_path / f"{name}.raiiaf", record=record, metadata=metadata, tensors=tensors)


@pytest.mark.parametrize("name, edit, field", [
    ("config-list", lambda rec: rec["scheduler"].update(config=[1, 2]), "host.diffusers.scheduler.config"),
    ("beta-bogus", lambda rec: rec["scheduler"]["config"].update(beta_schedule="bogus"),
     "host.diffusers.scheduler.config.beta_schedule"),
    ("steps-text", lambda rec: rec["scheduler"]["config"].update(num_train_timesteps="many"),
     "host.diffusers.scheduler.config.num_train_timesteps"),
    ("spacing-number", lambda rec: rec["scheduler"]["config"].update(timestep_spacing=3),
     "host.diffusers.scheduler.config.timestep_spacing"),
    ("class-list", lambda rec: rec["scheduler"].update({"class": ["EulerAncestralDiscreteScheduler"]}),
     "host.diffusers.scheduler.class"),
    ("no-rng", lambda rec: rec.pop("rng"), "host.diffusers.rng"),
    ("gen-index", lambda rec: rec["rng"]["draws"][1].update(generators=[3]), "host.diffusers.rng.draws.1.generators.0"),
    ("draw-sha", lambda rec: rec["rng"]["draws"][0].update(sha256="xyz"), "host.diffusers.rng.draws.0.sha256"),
    ("noise-shape", lambda rec: rec["noise"].update(shape=[2, 4, 16, 16]), "host.diffusers.noise.tensor"),
    ("noise-missing", lambda rec: rec["noise"].update(tensor="nope"), "host.diffusers.noise.tensor"),
    ("feed", lambda rec: rec["noise"].update(feed="magic"), "host.diffusers.noise.feed"),
    ("arg-float", lambda rec: rec["call"]["arguments"].update(guidance_scale={"$float": "huge"}),
     "host.diffusers.call.arguments.guidance_scale"),
    ("arg-dtype", lambda rec: rec["call"]["arguments"].update(x={"$dtype": "os"}), "host.diffusers.call.arguments.x"),
    ("arg-device", lambda rec: rec["call"]["arguments"].update(
        prompt_embeds={"$tensor": "final_latents", "device": "warp:9"}), "host.diffusers.call.arguments.prompt_embeds"),
    ("arg-type", lambda rec: rec["call"]["arguments"].update(guidance_scale="loud"), "host.diffusers.call.arguments"),
    ("steps-type", lambda rec: rec["call"]["arguments"].update(num_inference_steps="3"),
     "host.diffusers.call.arguments.num_inference_steps"),
    # found by `python -m bench.fuzz --semantic`: a foreign AttributeError once the pipeline had run
    ("output-type", lambda rec: rec["call"]["arguments"].update(output_type=False),
     "host.diffusers.call.arguments.output_type"),
    ("output-type-np", lambda rec: rec["call"]["arguments"].update(output_type="np"),
     "host.diffusers.call.arguments.output_type"),
    ("version", lambda rec: rec.update(record_version=99), "record version 99 is newer"),
    ("version-type", lambda rec: rec.update(record_version="2"), "host.diffusers.record_version"),
    ("untracked", lambda rec: rec["rng"].update(untracked=[{"stream": "global", "index": 5, "before": 0}]),
     "host.diffusers.rng.untracked.0.index"),
])
def test_one_edited_field(sd, files, tmp_path, name, edit, field):
    refused(sd, _edit(files, tmp_path, name, record=edit), field)


def test_batch_index_out_of_range(sd, files, tmp_path):
    path = _edit(files, tmp_path, "batch", metadata=lambda md: md["batch"].update(index=5, size=9))
    refused(sd, path, "batch.index")


def test_generator_state_of_the_wrong_size_or_dtype(sd, files, tmp_path):
    short = _edit(files, tmp_path, "state-size", tensors={"rng.generator.0.after_noise": torch.zeros(10, dtype=torch.uint8)})
    assert "not a cpu generator state" in refused(sd, short, "host.diffusers.rng.generators.after_noise.0")
    wrong = _edit(files, tmp_path, "state-dtype", tensors={"rng.generator.0.after_noise": torch.zeros(5056)})
    refused(sd, wrong, "host.diffusers.rng.generators.after_noise.0")
    invalid = _edit(files, tmp_path, "state-zero",
                    tensors={"rng.generator.0.after_noise": torch.zeros(5056, dtype=torch.uint8)})
    refused(sd, invalid, "host.diffusers.rng.generators.after_noise.0")
    cpu = _edit(files, tmp_path, "global-size", tensors={"rng.global.0.at_start": torch.zeros(7, dtype=torch.uint8)})
    refused(sd, cpu, "host.diffusers.rng.global.0")


def test_record_errors_are_replay_errors_of_the_project(sd, files, tmp_path):
    path = _edit(files, tmp_path, "e", record=lambda rec: rec["scheduler"].update(config=None))
    with pytest.raises(RecordError) as info:
        replay(sd, path)
    assert isinstance(info.value, rc.RaiiafError)
