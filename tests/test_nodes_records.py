"""Run records read back by the replay nodes: hostile values from files whose checksums are all valid (built
with rc.write, or re-assembled like bench/fuzz.py does), verdicts only from what the file really holds, runs
the capture could not record, and the record format shared by the writer and the reader."""

import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import raiiaf_core as rc
from raiiaf_nodes.capture import CaptureStore, failed_run, make_run
from raiiaf_nodes.errors import NodeInputError, RecordError
from raiiaf_nodes.noise import reconstruct_noise
from raiiaf_nodes.record import SAMPLER_OPTIONS, RunRecord
from raiiaf_nodes.replay import compare_output, load_run, stored_latent
from raiiaf_nodes.save import SaveContext, save_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # bench/ is in the checkout, not in the installed package
from bench.fuzz import assemble, split_v2  # noqa: E402

ENV = {"schema_version": 1, "python": {"version": "3.11.7"}}
GRAPH = json.loads((ROOT / "workflows" / "raiiaf_capture_save_api.json").read_text())


def sample_dpm_adaptive():
    """Named like the function ComfyUI builds for dpm_adaptive."""


def sample_euler():
    """Named like k-diffusion's sampler function."""


def captured(node_id="3", shape=(1, 4, 8, 8), seed=42, latent_image=None, output=None, function=sample_euler,
             options=None):
    return make_run(noise=reconstruct_noise(list(shape), seed), sigmas=torch.linspace(14.6, 0, 5), seed=seed,
                    sampler_function=function, sampler_options=options, cfg=7.0, guider="CFGGuider",
                    latent_image=torch.zeros(shape) if latent_image is None else latent_image, output=output,
                    prompt_id="p", node_id=node_id)


def save(tmp_path, *runs, latent=None, graph=GRAPH, **ctx) -> Path:
    store = CaptureStore()
    for run in runs:
        store.add(run)
    context = SaveContext(output_dir=str(tmp_path / "output"), prompt=graph, node_id="9", prompt_id="p",
                          comfyui_version="0.8.0", **ctx)
    (item,) = save_images(torch.rand(1, 16, 16, 3), "rec", context, latent=latent, store=store, environment=ENV)
    return item.path


def rewritten(path: Path, edit=None, tensors=None) -> Path:
    """The file written again with rc.write after `edit(metadata)`; `tensors` replaces (None: drops) tensors."""
    art = rc.open(path)
    meta = copy.deepcopy(art.metadata)
    if edit is not None:
        edit(meta)
    stored = {name: art.load_tensor(name) for name in art.tensor_names}
    stored.update(tensors or {})
    stored = {k: v for k, v in stored.items() if v is not None}
    return rc.write(path.with_name("edited.raiiaf"), image=art.image_bytes(), tensors=stored, metadata=meta,
                    environment=art.environment)


@pytest.fixture
def honest(tmp_path):
    """A capture + save whose stored latent is the run's output."""
    output = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    return save(tmp_path, captured(output=output), latent={"samples": output}), output


# -- verdicts come from the stored latent, never from the record's own hash ------------------------------

def test_the_output_equal_to_the_stored_latent_is_bit_identical(honest):
    path, output = honest
    art = rc.open(path)
    assert compare_output(output.clone(), load_run(art), art) == (True, "bit-identical to the stored latent")


def test_a_replaced_latent_is_never_vouched_for_by_the_record_hash(honest):
    # The record still states the hash of the original output, the payload is another tensor.
    path, output = honest
    edited = rc.open(rewritten(path, tensors={"latent": np.zeros((1, 4, 8, 8), np.float32)}))
    identical, verdict = compare_output(output.clone(), load_run(edited), edited)
    assert identical is None
    assert "record's output_sha256 disagrees with the stored latent" in verdict


def test_a_replaced_latent_with_a_matching_forged_hash_is_reported_as_different(honest):
    path, output = honest
    other = torch.ones(1, 4, 8, 8)
    edited = rc.open(rewritten(path, lambda m: m["runs"][0].update(output_sha256=rc.tensor_sha256(other)),
                               tensors={"latent": other.numpy()}))
    identical, verdict = compare_output(output.clone(), load_run(edited), edited)
    assert identical is False and verdict.startswith("DIFFERS from the stored latent (max abs difference")


def test_without_a_stored_latent_the_file_cannot_prove_the_run(honest):
    path, output = honest
    edited = rc.open(rewritten(path, tensors={"latent": None}))
    identical, verdict = compare_output(output.clone(), load_run(edited), edited)
    assert identical is None
    assert "holds no sampled latent" in verdict and "proves nothing by itself" in verdict


def test_an_edited_record_hash_is_reported_even_when_the_output_matches(honest):
    path, output = honest
    edited = rc.open(rewritten(path, lambda m: m["runs"][0].update(output_sha256="0" * 64)))
    identical, verdict = compare_output(output.clone(), load_run(edited), edited)
    assert identical is True and "disagrees with the stored latent" in verdict


def test_an_earlier_run_is_not_compared_with_the_final_latent(tmp_path):
    first_out, final = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 16, 16)
    graph = copy.deepcopy(GRAPH)
    graph["13"] = dict(graph["3"], inputs=dict(graph["3"]["inputs"], latent_image=["3", 0]))
    graph["8"]["inputs"]["samples"] = ["13", 0]
    path = save(tmp_path, captured(output=first_out),
                captured("13", shape=(1, 4, 16, 16), latent_image=torch.randn(1, 4, 16, 16), output=final),
                latent={"samples": final}, graph=graph)
    art = rc.open(path)
    identical, verdict = compare_output(first_out, load_run(art, 0), art)
    assert identical is None and "stored latent is the output of run 1" in verdict
    assert compare_output(final.clone(), load_run(art, 1), art)[0] is True
    assert compare_output(final + 1, load_run(art, 1), art)[0] is False


# -- every value is checked before use ---------------------------------------------------------------------

def run0(**changes):
    def edit(meta):
        for key, value in changes.items():
            if value is None:
                meta["runs"][0].pop(key, None)
            else:
                meta["runs"][0][key] = value
    return edit


HOSTILE_RUNS = [
    pytest.param(run0(noise=None), "field 'noise' is missing", id="no-noise"),
    pytest.param(run0(noise="nope"), "field 'noise' names the tensor 'nope', which the file does not hold",
                 id="missing-tensor"),
    pytest.param(run0(noise=["run0.noise"]), "field 'noise' is a list", id="noise-a-list"),
    pytest.param(run0(sampler=["euler"]), "field 'sampler' is a list", id="sampler-a-list"),
    pytest.param(run0(sampler_name={"a": 1}), "field 'sampler_name' is a object", id="sampler-name-an-object"),
    pytest.param(run0(scheduler="x" * 5000), "field 'scheduler' is 5000 characters long", id="long-scheduler"),
    pytest.param(run0(cfg="7"), "field 'cfg' is a text", id="cfg-text"),
    pytest.param(run0(cfg=1e300), "field 'cfg' is 1e+300", id="cfg-huge"),
    pytest.param(run0(seed=-1), "field 'seed' is -1", id="seed-negative"),
    pytest.param(run0(seed=1.5), "field 'seed' is a number; expected a whole number", id="seed-float"),
    pytest.param(run0(seed=True), "field 'seed' is a boolean", id="seed-bool"),
    pytest.param(run0(steps=2**60), "field 'steps' is 1152921504606846976", id="steps-huge"),
    pytest.param(run0(steps=3), "field 'steps' is 3, but the stored sigmas are for 4 steps", id="steps-lie"),
    pytest.param(run0(latent_shape=[1, 4, 100000, 100000]), "field 'latent_shape' is [1, 4, 100000, 100000], which "
                 "differs from its noise", id="latent-shape"),
    pytest.param(run0(latent_dtype="complex128"), "field 'latent_dtype' is 'complex128'", id="latent-dtype"),
    pytest.param(run0(noise_dtype="float16"), "field 'noise_dtype' is float16, but the stored noise is float32",
                 id="noise-dtype"),
    pytest.param(run0(latent_shapes=[[1, 4, 8, 8], [1, 8, 5, 16]]), "field 'latent_shapes'", id="nested-shapes"),
    pytest.param(run0(latent_shapes="x"), "field 'latent_shapes' is 'x'", id="shapes-text"),
    pytest.param(run0(sampler="dpm_adaptive", sampler_options={"accept_safety": 1e30}),
                 "field 'sampler_options.accept_safety' is 1e+30; expected 0 to 1", id="endless-dpm-adaptive"),
    pytest.param(run0(sampler="dpm_adaptive", sampler_options={"order": 5}),
                 "field 'sampler_options.order' is 5; expected 2 to 3", id="adaptive-order"),
    pytest.param(run0(sampler_options={"noise_sampler": "print"}),
                 "field 'sampler_options.noise_sampler' is not an option raiiaf knows", id="unknown-option"),
    pytest.param(run0(sampler_options={"eta": "1"}), "field 'sampler_options.eta' is a text", id="option-type"),
    pytest.param(run0(sampler_options=[1]), "field 'sampler_options' is a list", id="options-a-list"),
    pytest.param(run0(inpaint_options={"random": "yes"}), "field 'inpaint_options.random' is 'yes'",
                 id="inpaint-option"),
    pytest.param(run0(output_sha256="zz"), "field 'output_sha256' is not a sha256", id="bad-hash"),
    pytest.param(run0(source="bogus"), "field 'source' is 'bogus'", id="source"),
    pytest.param(run0(latent_in="run0.sigmas"), "field 'latent_in' names the tensor 'run0.sigmas' of rank 1",
                 id="latent-in-rank"),
    pytest.param(run0(empty_start="no"), "field 'empty_start' is a text", id="empty-start"),
    pytest.param(run0(batch_index=[0, 1, 2]), "field 'batch_index' is not a list of 1 indexes", id="batch-index"),
    pytest.param(lambda m: m.update(batch={"index": 5, "size": 2}), "field 'batch' is", id="batch-out-of-range"),
]


@pytest.mark.parametrize("edit, message", HOSTILE_RUNS)
def test_an_edited_field_is_refused_naming_the_file_and_the_field(honest, edit, message):
    edited = rewritten(honest[0], edit)
    with pytest.raises(RecordError, match="edited.raiiaf") as info:
        load_run(rc.open(edited))
    assert message in str(info.value)
    assert isinstance(info.value, rc.RaiiafError)


@pytest.mark.parametrize("sigmas, message", [
    pytest.param(np.zeros((0, 2**40), np.float32), "field 'sigmas' names the tensor 'run0.sigmas' of rank 2",
                 id="zero-size-rank-2"),
    pytest.param(np.zeros((0,), np.float32), "names a tensor of 0 sigmas; expected 1 to 10001", id="empty"),
    pytest.param(np.zeros((20_000,), np.float32), "names a tensor of 20000 sigmas", id="too-many"),
    pytest.param(np.array([14.6, np.nan, 0], np.float32), "negative or non-finite sigmas", id="nan"),
    pytest.param(np.array([1, 2, 3], np.int64), "of dtype int64", id="int"),
])
def test_stored_sigmas_bound_the_steps(honest, sigmas, message):
    # A zero-size (0, 2**40) tensor costs nothing on disk; read as sigmas it used to make `steps` 2**40 - 1.
    edited = rewritten(honest[0], run0(steps=None), tensors={"run0.sigmas": sigmas})
    with pytest.raises(RecordError, match="run 0") as info:
        load_run(rc.open(edited))
    assert message in str(info.value)


def test_noise_must_be_a_nonempty_float_tensor(honest):
    for noise, message in ((np.zeros((0, 4, 2**20, 2**20), np.float32), "names an empty tensor"),
                           (np.zeros((1, 4, 8, 8), np.int32), "of dtype int32")):
        edited = rewritten(honest[0], run0(latent_shape=None), tensors={"run0.noise": noise})
        with pytest.raises(RecordError, match=message):
            load_run(rc.open(edited))


def with_metadata(path: Path, meta: dict) -> Path:
    """The file with its metadata chunk replaced by `meta` as stored JSON, every checksum valid (the writer
    itself refuses such metadata: this is a file from another tool)."""
    chunks, payloads = split_v2(path.read_bytes())
    [i] = [i for i, c in enumerate(chunks) if c["type"] == "metadata"]
    payloads[i] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    chunks[i].update(codec="none", size=len(payloads[i]))
    out = path.with_name("foreign.raiiaf")
    out.write_bytes(assemble(chunks, payloads))
    return out


def test_fields_the_writer_never_writes_are_refused_too(tmp_path):
    plain = rc.write(tmp_path / "plain.raiiaf", tensors={"noise": np.zeros((1, 4, 8, 8), np.float32)},
                     metadata={"seed": 1})
    with pytest.raises(RecordError, match="foreign.raiiaf: field 'runs' is not a list"):
        load_run(rc.open(with_metadata(plain, {"runs": "all of them"})))
    with pytest.raises(RecordError, match="field 'noise' is not an object naming a tensor"):
        load_run(rc.open(with_metadata(plain, {"noise": ["noise"]})))
    with pytest.raises(RecordError, match="foreign.raiiaf: run 0 is a number, not an object"):
        load_run(rc.open(with_metadata(plain, {"runs": [5]})))
    art = rc.open(with_metadata(rc.write(tmp_path / "l.raiiaf", tensors={"latent": np.zeros((1, 4, 8, 8), np.float32)},
                                         metadata={}), {"host": {"comfyui": ["not", "an", "object"]}}))
    with pytest.raises(RecordError, match="field 'host.comfyui' is not an object"):
        stored_latent(art)


# -- runs the capture could not record ---------------------------------------------------------------------

def test_a_run_that_could_not_be_captured_is_saved_saying_so(tmp_path):
    failure = failed_run(error="TypeError: something ComfyUI changed", prompt_id="p", node_id="3")
    path = save(tmp_path, failure)
    art = rc.open(path)
    meta = art.metadata
    assert meta["runs"] == [{"source": "failed", "node_id": "3", "error": "TypeError: something ComfyUI changed",
                             "class_type": "KSampler", "sampler_name": "euler_ancestral", "scheduler": "karras",
                             "denoise": 1.0, "steps": 20, "cfg": 7.0,
                             "positive": GRAPH["6"]["inputs"]["text"], "negative": GRAPH["7"]["inputs"]["text"]}]
    assert "noise" not in meta and art.tensor_names == []  # never noise falsely marked as captured
    with pytest.raises(NodeInputError, match="run 0 was not captured when the file was saved.*ComfyUI changed"):
        load_run(art)


def test_a_nested_latent_is_stored_as_a_statement(tmp_path):
    class Nested:  # what ComfyUI >= 0.3.67 hands a save node for audio+video latents
        is_nested = True
        shape = (1, 16, 2, 4, 4)

    path = save(tmp_path, captured(), latent={"samples": Nested()})
    art = rc.open(path)
    assert "latent" not in art.tensor_names
    assert "nested latent" in art.metadata["host"]["comfyui"]["latent_not_stored"]
    assert load_run(art).record.source == "captured"


# -- one record format for writer and reader ---------------------------------------------------------------

def test_what_the_save_writes_reads_back_as_the_same_record(tmp_path):
    run = captured(function=sample_dpm_adaptive, options={"order": 2, "rtol": 0.05, "noise_sampler": print,
                                                          "custom_node_option": 3})
    art = rc.open(save(tmp_path, run))
    record = load_run(art).record
    assert record.to_json() == art.metadata["runs"][0]
    assert record.sampler_options == {"order": 2, "rtol": 0.05}
    assert record.unstored_options == ["noise_sampler", "custom_node_option"]
    assert set(SAMPLER_OPTIONS) >= set(record.sampler_options)


def test_a_record_its_reader_would_refuse_is_saved_as_a_failed_run(tmp_path):
    run = captured()
    run.record.cfg = float("inf")  # e.g. a custom guider reporting a cfg JSON cannot hold
    art = rc.open(save(tmp_path, run))
    entry = art.metadata["runs"][0]
    assert entry["source"] == "failed" and "would not read back" in entry["error"] and "'cfg'" in entry["error"]


def test_the_noise_maker_is_a_parameter_and_is_recorded(tmp_path):
    calls = []

    def comfy_like(shape, seed, batch_index, dtype):
        calls.append((shape, seed, batch_index, dtype))
        return torch.full(shape, 0.5, dtype=dtype)

    art = rc.open(save(tmp_path, make_noise=comfy_like, noise_maker="comfy.sample.prepare_noise"))
    assert calls == [([1, 4, 64, 64], 42, None, torch.float32)]
    assert torch.equal(art.load_tensor("run0.noise", framework="torch"), torch.full((1, 4, 64, 64), 0.5))
    run = art.metadata["runs"][0]
    assert run["rebuilt_by"] == {"function": "comfy.sample.prepare_noise", "comfyui_version": "0.8.0"}
    assert (run["noise_dtype"], run["latent_dtype"]) == ("float32", "float32")
    assert RunRecord.from_json(run, where="x", tensors={"run0.noise": art.tensor_info("run0.noise")}).rebuilt_by


# -- semantic fuzzing: any value in any field ends in the file's data or a raiiaf error ------------------

TENSOR_NAMES = ("run0.noise", "run0.sigmas", "latent", "missing")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(TENSOR_NAMES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
RUN_FIELDS = st.sampled_from(sorted({f.name for f in dataclasses.fields(RunRecord)} | {"unknown_field"}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(RUN_FIELDS, JSON_VALUES, min_size=1, max_size=3),
       top=st.dictionaries(st.sampled_from(["batch", "seed", "steps"]), JSON_VALUES, max_size=1))
def test_records_mutated_anyhow_give_their_data_or_a_raiiaf_error(honest, changes, top):
    path, output = honest
    try:
        edited = rewritten(path, lambda m: (m["runs"][0].update(changes), m.update(top)))
    except rc.MetadataError:
        return  # the writer itself refuses it: no file to read
    art = rc.open(edited)
    try:
        run = load_run(art)
        identical, verdict = compare_output(output.clone(), run, art)
    except rc.RaiiafError:
        return
    assert identical in (True, False, None) and isinstance(verdict, str)
    assert run.steps <= 10_000 and run.noise.numel() == 1 * 4 * 8 * 8
    if run.latent_in is not None:
        assert run.latent_in.shape == run.noise.shape
