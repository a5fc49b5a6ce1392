"""Run records built from what a sampler receives, and the store that hands them to save nodes."""

import torch

import raiiaf_core as rc
from raiiaf_nodes.capture import CaptureStore, json_options, make_run, sampler_name_of


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


def test_json_options_keep_what_json_can_hold():
    kept, dropped = json_options({"eta": 1.0, "s_noise": 1, "solver_type": "midpoint", "noise_sampler": print,
                                  "bad": float("nan")})
    assert kept == {"eta": 1.0, "s_noise": 1, "solver_type": "midpoint"}
    assert sorted(dropped) == ["bad", "noise_sampler"]


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
    assert torch.equal(run.noise, expected[0]) and run.noise.dtype == torch.float16
    assert torch.equal(run.sigmas, expected[1])
    assert torch.equal(run.latent_in, expected[2])
    assert torch.equal(run.denoise_mask, expected[3])
    assert (run.seed, run.sampler, run.sampler_options, run.cfg, run.node_id) == (2**64 - 1, "euler", {"eta": 0.5},
                                                                                   7.0, "12")
    assert run.latent_shape == [2, 4, 8, 8] and run.latent_dtype == "float32"
    assert run.output_sha256 == rc.tensor_sha256(output)


def test_empty_starting_latent_is_not_stored():
    assert run_for("3").latent_in is None


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
