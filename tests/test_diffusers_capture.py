"""RaiiafCapture in one process: no effect on the output, restores what it swaps, threads, batches, errors."""

import threading

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback  # noqa: E402
from diffusers.models.autoencoders import vae as vae_module  # noqa: E402
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion as sd_module  # noqa: E402
from diffusers.utils import torch_utils  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_diffusers import CaptureError, RaiiafCapture, ReplayError, replay  # noqa: E402
from raiiaf_diffusers import _hooks, _intercept, tiny  # noqa: E402
from raiiaf_diffusers._output import png_bytes  # noqa: E402
from diffusers_edit import rewrite  # noqa: E402

PROMPT = "a painting of a cat"
# The class's own __call__ before any recording: recording must always put exactly this object back.
ORIGINAL_CALL = diffusers.StableDiffusionPipeline.__dict__["__call__"]
ORIGINAL_XL_CALL = diffusers.StableDiffusionXLPipeline.__dict__["__call__"]


@pytest.fixture(scope="module")
def sd():
    return tiny.tiny_sd()


# The tiny pipelines' own scheduler configs, to switch samplers from (as users do).
SD_CONFIG = tiny.tiny_sd().scheduler.config
SDXL_CONFIG = tiny.tiny_sdxl().scheduler.config


@pytest.fixture(scope="module")
def sdxl():
    return tiny.tiny_sdxl()


def _call(pipe, capture=None, seed=0, **kwargs):
    args = dict(tiny.CALL_ARGS["sd"], num_inference_steps=3, generator=torch.Generator().manual_seed(seed))
    args.update(kwargs)
    if capture is not None:
        args["callback_on_step_end"] = capture
    return pipe(PROMPT, **args)


def _swaps_restored(pipe):
    cls = type(pipe)
    assert sd_module.randn_tensor is torch_utils.randn_tensor
    assert not _hooks.installed(sd_module.__dict__, "randn_tensor")
    # every module that draws through randn_tensor (pipelines, VAE, schedulers) holds the original again
    namespaces = _intercept.randn_namespaces()
    assert vae_module.__dict__ in [ns for ns in namespaces] and len(namespaces) > 3
    assert all(ns["randn_tensor"] is _intercept.ORIGINAL for ns in namespaces)
    assert not _hooks.installed(cls, "__call__")
    assert diffusers.StableDiffusionPipeline.__dict__["__call__"] is ORIGINAL_CALL
    assert diffusers.StableDiffusionXLPipeline.__dict__["__call__"] is ORIGINAL_XL_CALL


class Boom(PipelineCallback):
    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == 1:
            raise RuntimeError("boom")
        return callback_kwargs


@pytest.mark.parametrize("sched", ["euler_a", "dpmpp_sde"])
def test_capture_on_or_off_gives_identical_bytes(sd, tmp_path, sched):
    sd.scheduler = tiny.scheduler(sched, SD_CONFIG)
    # dpmpp_sde draws its Brownian-tree seed from the global RNG: start both runs from the same state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        off = _call(sd).images[0]
        torch.manual_seed(123)
        capture = RaiiafCapture(tmp_path / "on.raiiaf")
        with capture.recording(sd):
            on = _call(sd, capture).images[0]
    assert png_bytes(on) == png_bytes(off)
    assert on.tobytes() == off.tobytes()
    assert rc.open(capture.paths[0]).image_bytes() == png_bytes(off)
    _swaps_restored(sd)


def test_swaps_restored_when_the_pipeline_raises(sd, tmp_path):
    capture = RaiiafCapture(tmp_path / "x.raiiaf")
    with pytest.raises(RuntimeError, match="boom"):
        with capture.recording(sd):
            assert sd_module.randn_tensor is not torch_utils.randn_tensor  # swapped inside the block
            assert vae_module.randn_tensor is not torch_utils.randn_tensor
            _call(sd, MultiPipelineCallbacks([capture, Boom()]))
    _swaps_restored(sd)
    assert capture.paths == [] and not (tmp_path / "x.raiiaf").exists()
    # an error raised by the pipeline's own checks, before any noise is drawn
    with pytest.raises(ValueError):
        with capture.recording(sd):
            _call(sd, capture, height=63)
    _swaps_restored(sd)
    # and the pipeline still works, untouched, afterwards
    assert _call(sd).images[0].size == (64, 64)


def test_two_pipelines_in_two_threads(sd, sdxl, tmp_path):
    sd.scheduler = tiny.scheduler("euler_a", SD_CONFIG)
    sdxl.scheduler = tiny.scheduler("euler_a", SDXL_CONFIG)
    sd2 = tiny.tiny_sd()  # a third, unrecorded pipeline of the same class runs at the same time
    sd2.scheduler = tiny.scheduler("euler_a", sd2.scheduler.config)
    expected = {name: _call(p, seed=s).images[0].tobytes() for name, p, s in (("sd", sd, 1), ("sdxl", sdxl, 2), ("plain", sd2, 3))}
    rounds = 2
    barrier = threading.Barrier(3)
    results, errors = {}, []

    def work(name, pipe, seed):
        try:
            capture = RaiiafCapture(tmp_path / f"{name}-{{call}}.raiiaf", store_final_latents=True) if name != "plain" else None
            for _ in range(rounds):
                barrier.wait(timeout=60)
                if capture is None:
                    results.setdefault(name, []).append(_call(pipe, seed=seed).images[0].tobytes())
                    continue
                with capture.recording(pipe):
                    results.setdefault(name, []).append(_call(pipe, capture, seed=seed).images[0].tobytes())
            results[name + ".paths"] = capture.paths if capture else []
        except Exception as exc:  # surfaced below
            errors.append((name, exc))
            barrier.abort()

    threads = [threading.Thread(target=work, args=a) for a in (("sd", sd, 1), ("sdxl", sdxl, 2), ("plain", sd2, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in ("sd", "sdxl", "plain"):
        assert results[name] == [expected[name]] * rounds  # capture in one thread changes nothing anywhere
    for name, pipe, seed in (("sd", sd, 1), ("sdxl", sdxl, 2)):
        paths = results[name + ".paths"]
        assert [p.name for p in paths] == [f"{name}-{i}.raiiaf" for i in range(rounds)]
        for path in paths:
            art = rc.open(path)
            assert art.metadata["host"]["diffusers"]["pipeline"]["class"] == type(pipe).__name__
            assert art.metadata["seed"] == seed
            # each file holds its own pipeline's noise: the draw of a generator seeded `seed`
            shape = tuple(art.metadata["host"]["diffusers"]["noise"]["shape"])
            assert torch.equal(art.load_tensor("noise", framework="torch"),
                               torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
            assert replay(pipe, path).bit_exact
    _swaps_restored(sd)
    assert not _hooks.installed(type(sdxl), "__call__")


def test_batch_maps_to_one_file_per_image(sd, tmp_path):
    sd.scheduler = tiny.scheduler("euler_a", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "batch.raiiaf")
    with capture.recording(sd):
        out = sd(["a red cat", "a blue dog"], num_images_per_prompt=2, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(5), callback_on_step_end=capture, **tiny.CALL_ARGS["sd"])
    assert [p.name for p in capture.paths] == [f"batch-{i}.raiiaf" for i in range(4)]
    noises = []
    for i, path in enumerate(capture.paths):
        art = rc.open(path)
        md = art.metadata
        assert md["batch"] == {"index": i, "size": 4}
        assert md["prompt"] == ["a red cat", "a red cat", "a blue dog", "a blue dog"][i]
        assert md["seed"] == 5
        assert art.image().tobytes() == out.images[i].tobytes()
        noises.append(art.load_tensor("noise", framework="torch"))
    assert noises[0].shape[0] == 4 and all(torch.equal(n, noises[0]) for n in noises)  # whole-batch noise in each
    result = replay(sd, capture.paths[3])
    assert result.bit_exact and result.index == 3
    assert result.image.tobytes() == out.images[3].tobytes()


def test_generator_list_records_each_state_and_seed(sd, tmp_path):
    sd.scheduler = tiny.scheduler("dpmpp_2m_sde", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "g.raiiaf")
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    with capture.recording(sd):
        sd(PROMPT, num_images_per_prompt=2, num_inference_steps=3, generator=gens,
           callback_on_step_end=capture, **tiny.CALL_ARGS["sd"])
    arts = [rc.open(p) for p in capture.paths]
    assert [a.metadata["seed"] for a in arts] == [11, 12]
    gens = arts[0].metadata["host"]["diffusers"]["rng"]["generators"]
    assert gens["kind"] == "list" and gens["seeds"] == [11, 12]
    assert gens["at_start"] == ["rng.generator.0.at_start", "rng.generator.1.at_start"]
    assert set(gens["at_start"] + gens["after_noise"]) <= set(arts[0].tensor_names)
    # the initial noise: one draw per generator, both taped as one draw from generators 0 and 1
    draws = arts[0].metadata["host"]["diffusers"]["rng"]["draws"]
    assert draws[0]["generators"] == [0, 1] and draws[0]["site"]["function"].endswith("prepare_latents")
    assert all(replay(sd, p).bit_exact for p in capture.paths)


def test_record_contents(tmp_path):
    base = tiny.tiny_sd()
    # StableDiffusionPipeline.__init__ rewrites steps_offset=0 to 1: the file must hold the rewritten config
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=0)
    with pytest.warns(FutureWarning):
        pipe = diffusers.StableDiffusionPipeline(**{**base.components, "scheduler": sched}, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path="raiiaf-tiny/sd")
    capture = RaiiafCapture(tmp_path / "r.raiiaf", step_latents_every=2, store_final_latents=True,
                            tags=["test"], notes="n")
    with capture.recording(pipe):
        _call(pipe, capture, seed=3, num_inference_steps=4, guidance_scale=6.5, negative_prompt="ugly")
    art = rc.open(capture.paths[0])
    md = art.metadata
    rec = md["host"]["diffusers"]
    assert md["generator"]["name"] == "raiiaf_diffusers"
    assert md["model"] == {"name": "raiiaf-tiny/sd", "id": "raiiaf-tiny/sd"}
    assert (md["prompt"], md["negative_prompt"], md["seed"], md["steps"]) == (PROMPT, "ugly", 3, 4)
    assert (md["guidance_scale"], md["width"], md["height"]) == (6.5, 64, 64)
    assert md["sampler"] == "DDIMScheduler" and md["sampler_settings"]["steps_offset"] == 1
    assert md["noise"] == {"tensor": "noise", "source": "captured"}
    assert md["tags"] == ["test"] and md["notes"] == "n"
    assert rec["scheduler"]["config"]["steps_offset"] == 1
    assert dict(pipe.scheduler.config)["steps_offset"] == 1
    assert rec["pipeline"]["class"] == "StableDiffusionPipeline"
    assert rec["components"]["unet"]["class"] == "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel"
    assert rec["components"]["unet"]["training"] is False and rec["training_components"] == []
    assert rec["components"]["safety_checker"] is None
    args = rec["call"]["arguments"]
    assert args["num_inference_steps"] == 4 and args["guidance_scale"] == 6.5
    assert args["height"] == 64 and "generator" not in args and "latents" not in args
    assert rec["noise"]["source"] == "randn_tensor" and rec["noise"]["dtype"] == "float32"
    assert rec["noise"]["feed"] == "latents" and rec["noise"]["draw"] == 0
    assert rec["call"]["dtype"] == "float32" and rec["call"]["device"] == "cpu"
    gens = rec["rng"]["generators"]
    assert gens["seeds"] == [3] and gens["kind"] == "single"
    # the generator states stored are the ones at the start of the call and right after the noise draw
    g = torch.Generator().manual_seed(3)
    assert torch.equal(art.load_tensor(gens["at_start"][0], framework="torch"), g.get_state())
    drawn = torch.randn(tuple(rec["noise"]["shape"]), generator=g)
    assert torch.equal(art.load_tensor(gens["after_noise"][0], framework="torch"), g.get_state())
    assert rec["rng"]["draws"][0]["sha256"] == rc.tensor_sha256(drawn) == rc.tensor_sha256(art.load_tensor("noise"))
    assert rec["rng"]["untracked"] == [] and rec["not_replayable"] is None
    assert rec["steps_run"] == 4 and rec["output"]["type"] == "pil"
    final = art.load_tensor("final_latents", framework="torch")
    assert rc.tensor_sha256(final) == rec["final_latents"]["sha256"] == capture.last.final_latents_sha256
    assert sorted(rec["step_latents"]["tensors"]) == ["1", "3"]
    assert torch.equal(art.load_tensor("step_latents.3", framework="torch"), final)
    assert art.environment["torch"]["version"] == torch.__version__


def test_np_output_and_user_latents_replay(sd, tmp_path):
    sd.scheduler = tiny.scheduler("euler", SD_CONFIG)
    latents = torch.randn((1, 4, 32, 32), generator=torch.Generator().manual_seed(9))
    capture = RaiiafCapture(tmp_path / "np.raiiaf")
    with capture.recording(sd):
        out = _call(sd, capture, latents=latents, output_type="np")
    art = rc.open(capture.paths[0])
    rec = art.metadata["host"]["diffusers"]
    assert rec["noise"]["source"] == "latents_argument"
    assert torch.equal(art.load_tensor("noise", framework="torch"), latents)
    assert (art.load_tensor("output") == out.images[0]).all()
    result = replay(sd, capture.paths[0])
    assert result.bit_exact and result.output_equal is True


def test_replay_restores_scheduler_and_global_rng_and_reports_overrides(sd, tmp_path):
    sd.scheduler = tiny.scheduler("dpmpp_sde", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "s.raiiaf", store_final_latents=True)
    with capture.recording(sd):
        _call(sd, capture)
    sd.scheduler = tiny.scheduler("ddim", sd.scheduler.config)
    before_sched, before_rng = sd.scheduler, torch.get_rng_state()
    result = replay(sd, capture.paths[0])
    assert result.bit_exact, result.report()
    assert sd.scheduler is before_sched
    assert torch.equal(torch.get_rng_state(), before_rng)
    changed = replay(sd, capture.paths[0], guidance_scale=1.5)
    assert not changed.bit_exact and not changed.latents_equal
    assert changed.latents_max_abs_diff > 0 and "overridden arguments: guidance_scale" in changed.notes
    assert "NOT bit-exact" in changed.report()
    with pytest.raises(ReplayError, match="StableDiffusionPipeline"):
        replay(tiny.tiny_sd3(), capture.paths[0])


def test_clear_errors_instead_of_incomplete_files(sd, tmp_path):
    capture = RaiiafCapture(tmp_path / "e.raiiaf")
    with pytest.raises(CaptureError, match="recording"):  # step callback alone cannot see the noise
        _call(sd, capture)
    with capture.recording(sd):
        with pytest.raises(CaptureError, match="callback_on_step_end=capture"):
            _call(sd)  # recorded call without the callback
        with pytest.raises(CaptureError, match="output_type"):
            _call(sd, capture, output_type="latent")
        with pytest.raises(CaptureError, match="cannot be recorded"):
            _call(sd, capture, cross_attention_kwargs={"scale": object()})
    assert capture.paths == [] and not list(tmp_path.iterdir())
    _swaps_restored(sd)

    class OwnNoisePipeline(diffusers.StableDiffusionPipeline):
        # draws with torch.randn directly: no randn_tensor call, so no initial noise for the tape
        def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
            shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
            return torch.randn(shape, generator=generator, dtype=dtype) * self.scheduler.init_noise_sigma

    own = OwnNoisePipeline(**sd.components, requires_safety_checker=False)
    own.scheduler = tiny.scheduler("ddim", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "own.raiiaf")
    with capture.recording(own):
        image = _call(own, capture).images[0]  # the caller keeps the image ...
    art = rc.open(capture.paths[0])  # ... and the file says what could not be recorded
    rec = art.metadata["host"]["diffusers"]
    assert art.image().tobytes() == image.tobytes()
    assert rec["not_replayable"] == "OwnNoisePipeline drew no initial noise through randn_tensor during the call"
    assert rec["noise"] is None and "noise" not in art.metadata and "noise" not in art.tensor_names
    assert {"stream": "generator", "index": 0, "before": None} in rec["rng"]["untracked"]
    with pytest.raises(ReplayError, match="drew no initial noise through randn_tensor"):
        replay(own, capture.paths[0])
    _swaps_restored(sd)


def test_video_pipelines_are_refused_before_generating_and_at_replay(sd, tmp_path):
    # a .raiiaf holds still images: a Wan call (num_frames) is refused before anything is drawn
    wan = tiny.build("wan")
    capture = RaiiafCapture(tmp_path / "v.raiiaf")
    before = torch.get_rng_state()
    with capture.recording(wan):
        with pytest.raises(CaptureError, match="WanPipeline makes videos"):
            wan(prompt=PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                callback_on_step_end=capture, **tiny.CALL_ARGS["wan"])
    assert capture.paths == [] and not list(tmp_path.iterdir())
    assert torch.equal(torch.get_rng_state(), before)
    # a file claiming a video pipeline is refused by replay, before any call
    still = RaiiafCapture(tmp_path / "still.raiiaf")
    with still.recording(sd):
        _call(sd, still)
    claimed = rewrite(still.paths[0], tmp_path / "claimed.raiiaf",
                      record=lambda rec: rec["pipeline"].update({"class": "WanPipeline"}))
    with pytest.raises(ReplayError, match="claimed.raiiaf: WanPipeline makes videos"):
        replay(wan, claimed)


def test_file_bytes_are_deterministic(sd, tmp_path):
    sd.scheduler = tiny.scheduler("ddim", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "d-{call}.raiiaf")
    with capture.recording(sd):
        _call(sd, capture, seed=4)
        _call(sd, capture, seed=4)
    a, b = capture.paths
    assert a.read_bytes() == b.read_bytes()


def test_no_generator_uses_and_restores_the_global_rng(sd, tmp_path):
    sd.scheduler = tiny.scheduler("euler_a", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "global.raiiaf")
    with capture.recording(sd):
        _call(sd, capture, generator=None)  # noise and ancestral noise come from the global torch RNG
    art = rc.open(capture.paths[0])
    rec = art.metadata["host"]["diffusers"]
    assert art.metadata["seed"] is None
    assert rec["rng"]["generators"]["kind"] == "none"
    assert rec["rng"]["draws"][0]["generators"] == []  # the noise came from the global RNG ...
    assert rec["rng"]["global"][0]["after_noise"]  # ... so its state right after the draw is kept
    torch.manual_seed(999)  # whatever state this process is in, replay restores the recorded one
    assert replay(sd, capture.paths[0]).bit_exact


def test_tensor_and_tuple_arguments_replay(sdxl, tmp_path):
    sdxl.scheduler = tiny.scheduler("dpmpp_2m", SDXL_CONFIG)
    embeds = sdxl.encode_prompt(PROMPT, negative_prompt="blurry")
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    capture = RaiiafCapture(tmp_path / "xl.raiiaf")
    with capture.recording(sdxl):
        sdxl(**dict(zip(names, embeds)), original_size=(64, 64), target_size=(64, 64), num_inference_steps=2,
             generator=torch.Generator().manual_seed(1), callback_on_step_end=capture, **tiny.CALL_ARGS["sdxl"])
    art = rc.open(capture.paths[0])
    call = art.metadata["host"]["diffusers"]["call"]["arguments"]
    assert call["original_size"] == {"$tuple": [64, 64]}
    assert call["prompt_embeds"] == {"$tensor": "arg.prompt_embeds", "device": "cpu"}
    assert torch.equal(art.load_tensor("arg.prompt_embeds", framework="torch"), embeds[0])
    assert "prompt" not in art.metadata  # no prompt string was given
    assert replay(sdxl, capture.paths[0]).bit_exact


def test_subclass_without_own_call_is_restored(sd, tmp_path):
    class MySD(diffusers.StableDiffusionPipeline):
        pass

    mine = MySD(**sd.components, requires_safety_checker=False)
    mine.scheduler = tiny.scheduler("ddim", SD_CONFIG)
    capture = RaiiafCapture(tmp_path / "sub.raiiaf")
    with capture.recording(mine):
        assert "__call__" in MySD.__dict__  # the wrapper sits on the subclass only
        _call(mine, capture)
    assert "__call__" not in MySD.__dict__  # deleted again: the base class's __call__ shows through
    _swaps_restored(sd)
    assert replay(mine, capture.paths[0]).bit_exact


@pytest.mark.parametrize("module, cls", [("os", "system"), ("diffusers", "DiffusionPipeline"),
                                         ("diffusers.utils", "load_image")])
def test_replay_only_builds_diffusers_schedulers_named_by_a_file(module, cls):
    from raiiaf_diffusers.record import Scheduler
    from raiiaf_diffusers.replay import build_scheduler

    with pytest.raises(ReplayError, match="f.raiiaf: host.diffusers.scheduler.class: .*not a diffusers scheduler"):
        build_scheduler(Scheduler(cls, module, {}), "f.raiiaf")
