"""Recreate, for one call, the torch settings a file's environment records and a running process can set:
the thread count, the determinism switches (TF32, cuDNN, matmul precision, deterministic algorithms, oneDNN)
and the scaled_dot_product_attention backends. Everything is put back afterwards, also when the call raises.

What a process cannot set (the CPU kernel level, the torch build, the GPU) is left to the drift report, which
says what to do about it. torch is imported only when a recreation runs (raiiaf_core imports numpy only).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from .environment import ATTRIBUTE_SWITCHES, FP32_PRECISION_OWNERS, SDPA_SWITCHES, backend
from .report import escape

log = logging.getLogger(__name__)

# More threads than this is not a setting a real file records; a file asking for it is not obeyed.
MAX_THREADS = 4096
_PRECISIONS = ("highest", "high", "medium")
_FP32_PRECISIONS = ("none", "ieee", "tf32")


@dataclass(frozen=True)
class Setting:
    key: str  # the environment's dotted key
    before: object  # this process's value, put back afterwards
    value: object  # the recorded value, in force during the call

    def __str__(self) -> str:
        return f"{escape(self.key)} {escape(repr(self.before))} -> {escape(repr(self.value))}"


@dataclass
class Recreation:
    """What a recreation set (and will put back), and what it could not set and why."""

    settings: list = field(default_factory=list)
    refused: list = field(default_factory=list)  # text: the key, the recorded value and why it was not set

    def lines(self, also: tuple | list = ()) -> list:
        """The report's lines: what was set (with `also`, what a host set besides), then what was refused."""
        done = [*map(str, self.settings), *also]
        out = ["recreated for this call: " + "; ".join(done)] if done else []
        return out + [f"not recreated: {r}" for r in self.refused]


def _switches(torch) -> dict:
    """dotted key -> (read, write, is the recorded value acceptable) for every setting recreated."""

    def attribute(owner, name):
        return (lambda: getattr(owner, name), lambda value: setattr(owner, name, value))

    def is_bool(value):
        return isinstance(value, bool)

    table = {
        "torch.num_threads": (torch.get_num_threads, torch.set_num_threads,
                              lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_THREADS),
        "determinism.deterministic_algorithms": (
            torch.are_deterministic_algorithms_enabled,
            lambda v: torch.use_deterministic_algorithms(
                v, warn_only=torch.is_deterministic_algorithms_warn_only_enabled()), is_bool),
        "determinism.deterministic_algorithms_warn_only": (
            torch.is_deterministic_algorithms_warn_only_enabled,
            lambda v: torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(), warn_only=v),
            is_bool),
        "determinism.float32_matmul_precision": (torch.get_float32_matmul_precision,
                                                 torch.set_float32_matmul_precision, lambda v: v in _PRECISIONS),
    }
    for key, path, name in ATTRIBUTE_SWITCHES:
        owner = backend(torch, path)
        if owner is not None and hasattr(owner, name):
            table[f"determinism.{key}"] = (*attribute(owner, name), is_bool)
    for key, path in FP32_PRECISION_OWNERS:
        owner = backend(torch, path)
        if isinstance(getattr(owner, "fp32_precision", None), str):  # torch >= 2.9
            table[f"determinism.{key}"] = (*attribute(owner, "fp32_precision"), lambda v: v in _FP32_PRECISIONS)
    cuda = torch.backends.cuda
    for key, getter, setter in SDPA_SWITCHES:
        if hasattr(cuda, getter) and hasattr(cuda, setter):
            table[f"sdpa.{key}"] = (getattr(cuda, getter), getattr(cuda, setter), is_bool)
    return table


def _precision_states(torch) -> list:
    """(owner, fp32_precision) of every node of torch's precision tree (torch >= 2.9), parents first.

    The legacy switches (float32_matmul_precision, allow_tf32) write into this tree, and a tree left mixed makes
    torch.get_float32_matmul_precision() raise; so the tree is put back exactly as it was, not through them."""
    backends = torch.backends
    owners = [backends, backends.cuda.matmul, backends.cudnn]
    for parent in (backends.cudnn, getattr(backends, "mkldnn", None)):
        if parent is not None:
            owners += [parent] + [getattr(parent, n) for n in ("matmul", "conv", "rnn") if hasattr(parent, n)]
    states, seen = [], set()
    for owner in owners:
        value = getattr(owner, "fp32_precision", None)
        if isinstance(value, str) and id(owner) not in seen:
            seen.add(id(owner))
            states.append((owner, value))
    return states


def _recorded(environment: dict, key: str):
    section, _, name = key.partition(".")
    values = environment.get(section) if isinstance(environment, dict) else None
    return values.get(name, KeyError) if isinstance(values, dict) else KeyError


@contextlib.contextmanager
def recreated(environment: dict, *, enabled: bool = True):
    """Within the block, every recorded setting of `environment` (a file's, as capture_environment() writes it)
    that differs from this process is set as recorded; yields the Recreation saying what was set. Settings
    the file lacks (older files) stay as they are. ``enabled=False``: nothing is touched."""
    recreation = Recreation()
    if not enabled:
        yield recreation
        return
    import torch

    restore = []
    precision = _precision_states(torch)
    try:
        for key, (read, write, acceptable) in _switches(torch).items():
            value = _recorded(environment, key)
            if value is KeyError:
                continue
            if not acceptable(value):
                recreation.refused.append(f"{escape(key)}: the file records {escape(repr(value)[:80])}, "
                                          "which is not a value this setting takes")
                continue
            try:
                before = read()
                if value == before:
                    continue
                write(value)
            except Exception as exc:  # noqa: BLE001 - torch refuses some combinations; the call runs without it
                recreation.refused.append(f"{escape(key)} = {escape(repr(value))}: torch refused it "
                                          f"({type(exc).__name__}: {escape(str(exc)[:200])})")
                continue
            restore.append((key, write, before))
            recreation.settings.append(Setting(key, before, value))
        yield recreation
    finally:
        for key, write, before in reversed(restore):
            try:
                write(before)
            except Exception:  # noqa: BLE001 - one setting that cannot be put back must not keep the others
                log.exception("raiiaf: could not put %s back to %r after a replay", key, before)
        if restore:
            for owner, value in precision:
                owner.fp32_precision = value


__all__ = ["recreated", "Recreation", "Setting", "MAX_THREADS"]
