"""Intercepting: where raiiaf_diffusers sees a pipeline's random draws and its calls.

diffusers draws every tensor of random numbers through ``diffusers.utils.torch_utils.randn_tensor``,
but each module imports it by name (``from ...utils.torch_utils import randn_tensor``): the pipeline
modules, ``models/autoencoders/vae.py`` (``DiagonalGaussianDistribution.sample``), the scheduler
modules, ``modular_pipelines/<family>/before_denoise.py``. So the name is swapped in *every* loaded
module whose globals hold the original, for the duration of a recording or a replay (see ``_hooks``
for the reference counting and the thread rules). Finding those modules means walking
``sys.modules`` (a few ms); the result is kept and only recomputed when modules were added.

The wrapper is pass-through: it hands the draw to the innermost active call of the current thread
(a recorder during capture, a tape checker during replay), which calls the original with the same
arguments. Outside such a call, and in every other thread, it calls the original directly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
from typing import Iterator

from diffusers.utils import torch_utils

from . import _hooks

NAME = "randn_tensor"
ORIGINAL = inspect.unwrap(torch_utils.randn_tensor)
_MARK = "__raiiaf_randn__"

_scan_lock = threading.Lock()
_scanned_modules = -1
_namespaces: tuple[dict, ...] = ()


def _holds_randn(namespace: dict) -> bool:
    value = namespace.get(NAME)
    if value is ORIGINAL or getattr(value, _MARK, False):  # ours: another recording installed it
        return True
    try:
        return callable(value) and inspect.unwrap(value) is ORIGINAL
    except ValueError:  # a __wrapped__ cycle: not something we know
        return False


def randn_namespaces() -> tuple[dict, ...]:
    """The globals of every loaded module that calls ``randn_tensor`` by that name (cached)."""
    global _scanned_modules, _namespaces
    count = len(sys.modules)
    if count == _scanned_modules:
        return _namespaces
    with _scan_lock:
        if count != _scanned_modules:
            found = []
            for module in list(sys.modules.values()):
                namespace = getattr(module, "__dict__", None)
                if isinstance(namespace, dict) and _holds_randn(namespace):
                    found.append(namespace)
            _namespaces = tuple(found)
            _scanned_modules = count
    return _namespaces


def site_of(frame) -> tuple[str, str]:
    """(module, function) of the code that called randn_tensor."""
    code = frame.f_code
    return str(frame.f_globals.get("__name__", "?")), getattr(code, "co_qualname", code.co_name)


def _make_randn_wrapper(original):
    @functools.wraps(original)
    def randn_tensor(*args, **kwargs):
        calls = _hooks.thread_state().calls
        if not calls:
            return original(*args, **kwargs)
        return calls[-1].draw(original, sys._getframe(1), args, kwargs)

    setattr(randn_tensor, _MARK, True)
    return randn_tensor


@contextlib.contextmanager
def draws() -> Iterator[None]:
    """Route every ``randn_tensor`` draw of this thread's active calls through them, inside the block."""
    keys = []
    try:
        for namespace in randn_namespaces():
            try:
                keys.append(_hooks.acquire(namespace, NAME, _make_randn_wrapper))
            except AttributeError:  # the module dropped the name since the scan
                continue
        yield
    finally:
        for key in reversed(keys):
            _hooks.release(key)


def _recorder_for(pipe):
    state = _hooks.thread_state()
    if any(call.pipe is pipe for call in state.calls):
        return None  # already recording this call (nested wrappers of a class hierarchy)
    for p, capture in reversed(state.recordings):
        if p is pipe:
            return capture
    return None


def _make_call_wrapper(original):
    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        capture = _recorder_for(self)
        if capture is None:
            return original(self, *args, **kwargs)
        return capture._run(original, self, args, kwargs)

    return __call__


@contextlib.contextmanager
def calls(cls) -> Iterator[None]:
    """Route calls of ``cls`` instances made inside ``recording()`` blocks of this thread to their capture."""
    key = _hooks.acquire(cls, "__call__", _make_call_wrapper)
    try:
        yield
    finally:
        _hooks.release(key)


__all__ = ["draws", "calls", "randn_namespaces", "site_of", "ORIGINAL"]
