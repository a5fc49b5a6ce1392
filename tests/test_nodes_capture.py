"""Run records built from what a sampler receives, and the store that hands them to save nodes."""

import torch

import raiiaf_core as rc
from raiiaf_nodes.capture import CaptureStore, json_values, make_run, sampler_name_of


def sample_euler():
    """Stands for k-diffusion's sampler functions, which the record names by their function name."""


def dpm_fast_function():
    """Stands for the wrapper function ComfyUI builds for dpm_fast."""


def run_for(node_id, prompt_id="p1", seed=1, latent=None, output=None):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    return make_run(noise=noise, sigmas=torch.linspace(14.6, 0, 5), seed=seed, sampler_function=sample_euler,
                    latent_image=torch.zeros(1, 4, 8, 8) if latent is None else latent, output=output,
                    prompt_id=prompt_id, node_id=node_id)


def test_sampler_names():
    assert sampler_name_of(sample_euler) == "euler"
    assert sampler_name_of(dpm_fast_function) == "dpm_fast"


def test_json_values_keep_what_json_can_hold():
    kept, dropped = json_values({"eta": 1.0, "s_noise": 1, "solver_type": "midpoint", "noise_sampler": print,
                                 "bad": float("nan"), "s_tmax": float("inf"), "mask": torch.ones(1)})
    assert kept == {"eta": 1.0, "s_noise": 1, "solver_type": "midpoint"}
    assert sorted(dropped) == ["bad", "mask", "noise_sampler", "s_tmax"]


def test_record_holds_copies_of_the_tensors_as_received():
    noise = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    sigmas = torch.tensor([14.6, 3.0, 0.0])
    latent = torch.randn(2, 4, 8, 8)
    mask = torch.ones(2, 1, 64, 64)
    output = torch.randn(2, 4, 8, 8)
    run = make_run(noise=noise, sigmas=sigmas, seed=2**64 - 1, sampler_function=sample_euler,
                   sampler_options={"eta": 0.5}, cfg=7, guider="CFGGuider", denoise_mask=mask, latent_image=latent,
                   model={"config": "SD15"}, output=output, prompt_id="p", node_id=12)
    expected = (noise.clone(), sigmas.clone(), latent.clone(), mask.clone())
    for t in (noise, sigmas, latent, mask):
        t.zero_()  # the sampler may change its inputs afterwards; the record must not follow
    assert torch.equal(run.tensors["noise"], expected[0]) and run.tensors["noise"].dtype == torch.float16
    assert torch.equal(run.tensors["sigmas"], expected[1])
    assert torch.equal(run.tensors["latent_in"], expected[2])
    assert torch.equal(run.tensors["denoise_mask"], expected[3])
    record = run.record
    assert (record.seed, record.sampler, record.sampler_options, record.cfg, run.node_id) == (
        2**64 - 1, "euler", {"eta": 0.5}, 7.0, "12")
    assert record.latent_shape == [2, 4, 8, 8] and record.steps == 2
    assert (record.latent_dtype, record.noise_dtype, record.empty_start) == ("float32", "float16", False)
    assert record.output_sha256 == rc.tensor_sha256(output)


def test_empty_starting_latent_is_not_stored():
    run = run_for("3")
    assert "latent_in" not in run.tensors and run.record.empty_start is True


def test_keywords_a_newer_comfyui_sends_are_recorded():
    run = make_run(noise=torch.zeros(1, 4, 8, 8), sigmas=torch.ones(3), seed=1, sampler_function=sample_euler,
                   latent_image=torch.zeros(1, 4, 8, 8), latent_shapes=[torch.Size([1, 4, 8, 8])],
                   arguments={"guidance_rescale": 0.7, "hook": print})
    assert run.record.latent_shapes == [[1, 4, 8, 8]]
    assert run.record.arguments == {"guidance_rescale": 0.7} and run.record.unstored_arguments == ["hook"]


def test_a_nested_latent_is_saved_as_not_captured_with_the_reason():
    # ComfyUI >= 0.3.67 packs the parts of a nested latent (video + audio) into (B, 1, N) before the wrapper.
    shapes = [[1, 16, 2, 4, 4], [1, 8, 5, 16]]
    packed = torch.randn(1, 1, 16 * 2 * 4 * 4 + 8 * 5 * 16, dtype=torch.bfloat16)
    run = make_run(noise=packed, sigmas=torch.ones(3), seed=5, sampler_function=sample_euler,
                   latent_image=torch.zeros_like(packed), latent_shapes=shapes, prompt_id="p", node_id="3")
    assert run.tensors == {} and run.record.source == "failed"
    assert "nested latent of 2 parts" in run.record.error and "cannot be replayed" in run.record.error
    assert (run.record.latent_shapes, run.record.noise_dtype, run.record.seed) == (shapes, "bfloat16", 5)


def test_runs_by_prompt_and_node_in_sampling_order():
    store = CaptureStore()
    first, other, second = run_for("3", seed=1), run_for("99", seed=2), run_for("12", seed=3)
    for run in (first, other, second):
        store.add(run)
    # Asked in graph order (12 before 3 here), returned in the order they sampled.
    assert store.runs_for("p1", [("12", "sig12"), ("3", "sig3")]) == [first, second]
    assert store.runs_for("p2", [("12", "unseen-signature")]) == []


def test_cached_sampler_is_found_by_its_signature():
    store = CaptureStore()
    run = run_for("3", prompt_id="p1")
    store.add(run)
    assert store.runs_for("p1", [("3", "sig")]) == [run]
    # Next queue run: the sampler's result came from ComfyUI's cache, so it recorded nothing under p2.
    assert store.runs_for("p2", [("3", "sig")]) == [run]
    assert store.runs_for("p2", [("3", "other-sig")]) == []
    # When it does sample again, the new runs win.
    newer = run_for("3", prompt_id="p3", seed=5)
    store.add(newer)
    assert store.runs_for("p3", [("3", "sig")]) == [newer]
    assert store.runs_for("p4", [("3", "sig")]) == [newer]


def test_store_is_bounded():
    store = CaptureStore(max_prompts=2, max_signatures=2)
    for i in range(5):
        store.add(run_for("3", prompt_id=f"p{i}"))
        store.runs_for(f"p{i}", [("3", f"sig{i}")])
    assert store.runs_for("p0", [("3", "none")]) == []
    assert store.runs_for("p4", [("3", "none")]) != []
    assert store.runs_for("x", [("3", "sig0")]) == [] and store.runs_for("x", [("3", "sig4")]) != []
