"""A bounded fuzz run in the suite: mutated files through every read entry point end in a result or a
RaiiafError -- no other exception, no hang, no crash, no memory beyond 2 x input + 64 MiB.

The long run (`python -m bench.fuzz --inputs 100000`) uses the same generator with another seed; the README
reports its figures. A failure here prints the input's index: `python -m bench.fuzz --replay N
--seed 20260501` runs it again with its traceback. The semantic mode (`--semantic`: hostile values in real
diffusers and ComfyUI records, through replay and the node logic too) runs a few inputs here the same way.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # bench/ is in the checkout, not in the installed package
from bench import fuzz  # noqa: E402

INPUTS = 300
SEED = 20260501


@pytest.fixture(scope="module")
def summary():
    # Two workers, as CI machines have at least two cores; 30 s of CPU per input leaves room for slow runners.
    return fuzz.run(INPUTS, seed=SEED, workers=2, timeout=30)


def test_every_fuzzed_input_ends_in_a_result_or_a_raiiaf_error(summary):
    problems = {key: summary[key] for key in ("foreign_exceptions", "hangs", "crashes", "inconsistencies",
                                              "over_memory_target", "fuzzer_generator_errors")}
    assert problems == dict.fromkeys(problems, 0), json.dumps(summary["details"], indent=1)[:20_000]
    assert summary["inputs_tried"] == INPUTS


def test_the_run_reached_every_parser(summary):
    # Without these the test could pass by rejecting everything at the magic number.
    assert {name for name, _, weight in fuzz.MUTATORS if weight >= 1} <= set(summary["mutators"])
    outcomes = summary["outcomes"]
    assert outcomes.get("verified", 0) >= INPUTS // 20  # files that passed every check, then every accessor
    assert sum(n for outcome, n in outcomes.items() if outcome.startswith("opened")) >= INPUTS // 10


def test_v1_inputs_were_fuzzed(summary):
    pytest.importorskip("raiiaf_core.v1", reason="the v1 reader (raiiaf_core/v1.py) is not in this checkout")
    if not fuzz.V1_FIXTURES.is_dir() or not any(fuzz.V1_FIXTURES.glob("*.raiiaf")):
        pytest.skip("no v1 fixtures in tests/data/v1 to mutate")
    assert summary["mutators"].get("bytes_v1", 0) > 0 and summary["mutators"].get("v1_manifest", 0) > 0


# -- semantic mode: hostile values in real records, through replay and the node logic ----------------------

SEMANTIC_INPUTS = 8


@pytest.fixture(scope="module")
def semantic():
    pytest.importorskip("diffusers")
    # One worker: the worker builds the tiny pipeline once, and the inputs are cheap next to that.
    return fuzz.run(SEMANTIC_INPUTS, seed=SEED, workers=1, timeout=60, semantic=True)


def test_semantically_mutated_records_end_in_a_result_or_a_raiiaf_error(semantic):
    problems = {key: semantic[key] for key in ("foreign_exceptions", "hangs", "crashes", "inconsistencies",
                                               "fuzzer_generator_errors")}
    assert problems == dict.fromkeys(problems, 0), json.dumps(semantic["details"], indent=1)[:20_000]
    assert semantic["inputs_tried"] == SEMANTIC_INPUTS


def test_the_semantic_run_reached_replay_and_the_nodes(semantic):
    # Both kinds of record were mutated, and some inputs got past the reader into replay and the node logic.
    assert set(semantic["inputs_per_target"]) == {"diffusers", "comfyui"}
    outcomes = " ".join(semantic["outcomes"])
    assert "loaded" in outcomes and "replay ReplayError" in outcomes
