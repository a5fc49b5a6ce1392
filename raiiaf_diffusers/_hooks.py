"""Reference-counted, thread-aware swaps of one attribute at a time.

Recording needs swaps for the duration of a ``with capture.recording(pipe):`` block (and replay for
the duration of its call): the ``randn_tensor`` name in the globals of every module that draws through
it (``_intercept``), and the pipeline class's ``__call__`` (to see the call arguments and the returned
images). All are process-wide objects, so:

* the replacement is a pass-through wrapper that only records when the *current thread* has an
  active recording; every other thread (and every call outside a recording) goes straight to the
  original with the same arguments, so results never change;
* installs are reference-counted under one lock: the first ``acquire`` installs, the last
  ``release`` restores, however many threads and nested blocks are recording at once;
* ``release`` always runs from a ``finally`` block, so an exception in the pipeline still restores.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_MISSING = object()


@dataclass
class _Swap:
    target: Any  # a module's globals dict, or a class
    name: str
    original: Any
    had_own: bool  # class only: whether the class itself (not a base) defined the attribute
    wrapper: Any
    count: int = 0


# key: (id(target), name); the _Swap keeps the target alive, so ids cannot be reused meanwhile.
_swaps: dict[tuple[int, str], _Swap] = {}


def _get(target: Any, name: str) -> Any:
    if isinstance(target, dict):
        return target.get(name, _MISSING)
    return getattr(target, name, _MISSING)


def acquire(target: Any, name: str, make_wrapper: Callable[[Any], Any]) -> tuple[int, str]:
    """Install ``make_wrapper(original)`` as ``target[name]`` (dict) or ``target.name`` (class), counted.

    Returns the key to pass to ``release``. ``make_wrapper`` is called only by the first acquirer.
    """
    key = (id(target), name)
    with _lock:
        swap = _swaps.get(key)
        if swap is None:
            original = _get(target, name)
            if original is _MISSING:
                raise AttributeError(name)
            wrapper = make_wrapper(original)
            if isinstance(target, dict):
                had_own = True
                target[name] = wrapper
            else:
                had_own = name in vars(target)
                setattr(target, name, wrapper)
            swap = _Swap(target, name, original, had_own, wrapper)
            _swaps[key] = swap
        swap.count += 1
    return key


def release(key: tuple[int, str]) -> None:
    """Undo one ``acquire``; the last one puts the original back."""
    with _lock:
        swap = _swaps[key]
        swap.count -= 1
        if swap.count > 0:
            return
        del _swaps[key]
        current = _get(swap.target, swap.name)
        if current is not swap.wrapper:
            # Someone replaced our wrapper after we installed it; putting our original back would
            # silently undo their change. Our wrapper, if still reachable through theirs, is inert
            # outside a recording, so leaving things as they are is safe.
            logger.warning(
                "raiiaf_diffusers: %s was replaced by other code while recording; not restoring it", swap.name
            )
            return
        if isinstance(swap.target, dict):
            swap.target[swap.name] = swap.original
        elif swap.had_own:
            setattr(swap.target, swap.name, swap.original)
        else:
            delattr(swap.target, swap.name)  # the base class's attribute shows through again


def installed(target: Any, name: str) -> bool:
    """Whether a swap of ``name`` on ``target`` is currently installed (used by tests)."""
    with _lock:
        return (id(target), name) in _swaps


# --- per-thread recording state ---------------------------------------------------------------


@dataclass
class ThreadState:
    # Active ``recording()`` blocks of this thread, innermost last: (pipeline, recorder) pairs.
    recordings: list = field(default_factory=list)
    # Recorded (or replayed and tape-checked) pipeline calls in progress in this thread, innermost last.
    calls: list = field(default_factory=list)


_local = threading.local()


def thread_state() -> ThreadState:
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = ThreadState()
    return state
