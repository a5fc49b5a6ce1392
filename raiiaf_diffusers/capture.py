"""RaiiafCapture: record one diffusers pipeline call into one .raiiaf file per generated image.

    capture = RaiiafCapture("out/cat.raiiaf")
    with capture.recording(pipe):
        image = pipe("a cat", generator=torch.Generator().manual_seed(0), callback_on_step_end=capture).images[0]

Why two pieces. A ``callback_on_step_end`` is first called after the first scheduler step, so it
never sees the initial noise, and it never sees the call arguments or the decoded images.
``recording(pipe)`` therefore intercepts, for the duration of the block (see ``_intercept``), every
``randn_tensor`` draw the call makes and the pipeline class's ``__call__``, to see the arguments and
the returned images and to write the files when the call returns. The callback (a real
``PipelineCallback``, so it composes with ``MultiPipelineCallbacks``) records the latents after every
step, i.e. the final latents. Pipelines without ``callback_on_step_end`` (PixArt, modular pipelines)
are recorded without it: their files hold no final latents, and replay compares the image and the
draws. All of it is pass-through: the pipeline computes exactly what it computes without capture.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import torch
from diffusers.callbacks import PipelineCallback

import raiiaf_core as rc
from raiiaf_core.recipe import STORAGE as NOISE_STORAGE

from . import _hooks, _intercept
from ._recorder import CallRecorder
from .captured import OUTPUTS, CapturedCall
from .errors import CaptureError

logger = logging.getLogger(__name__)


class RaiiafCapture(PipelineCallback):
    """Step callback + recorder that turns each pipeline call into ``.raiiaf`` files.

    Args:
        path: where to write. A file name (``"out/cat.raiiaf"``); fields ``{index}`` (position in
            the batch), ``{call}`` (0, 1, ... per call recorded by this object) and ``{seed}`` are
            filled in. A batch of N images gives N files: when ``{index}`` is absent, ``-{index}``
            is added before the suffix (``cat-0.raiiaf`` ... ``cat-{N-1}.raiiaf``). An existing
            folder gets ``{call:05d}-{index}.raiiaf`` files. ``None``: nothing is written; the last
            call stays in ``capture.last`` and ``capture.last.write(path)`` writes it.
        store_final_latents: also store the final latents (their sha256 is always stored).
        step_latents_every: also store the latents after every N-th step (steps N-1, 2N-1, ...).
        exclusive: refuse to replace an existing file (raiiaf_core.TargetExistsError, kept in ``errors``).
        tags, notes, extra: copied into every file's metadata.
        output: ``"raiiaf"`` writes the ``.raiiaf`` files; ``"png"`` their shareable PNGs instead (the path
            with the suffix ``.png``: the image with A1111 parameters and the whole file inside, which
            ``replay`` and ``raiiaf_core.open`` read like the ``.raiiaf``); ``"both"`` writes both.
        noise_storage: ``"raw"`` stores the initial noise itself; ``"recipe"`` stores noise drawn by CPU
            generators as its recipe (the recorded seed or generator state, shape, dtype and the noise's
            sha256; raiiaf_core/recipe.py) when drawing it again gives it back bit for bit, else raw. Loading
            it draws it again and checks the sha256.

    A file that cannot be written never costs the caller the images: the error is logged and kept in
    ``capture.errors``, and ``capture.last`` still holds the call.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        store_final_latents: bool = False,
        step_latents_every: int | None = None,
        exclusive: bool = False,
        tags: list[str] | None = None,
        notes: str | None = None,
        extra: dict | None = None,
        output: str = "raiiaf",
        noise_storage: str = "raw",
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, not {output!r}")
        if noise_storage not in NOISE_STORAGE:
            raise ValueError(f"noise_storage must be one of {', '.join(map(repr, NOISE_STORAGE))}, not "
                             f"{noise_storage!r}")
        self.output = output
        self.noise_storage = noise_storage
        if step_latents_every is not None and (not isinstance(step_latents_every, int) or step_latents_every < 1):
            raise ValueError("step_latents_every must be a positive integer or None")
        self.path = None if path is None else os.fspath(path)
        self.store_final_latents = bool(store_final_latents)
        self.step_latents_every = step_latents_every
        self.exclusive = bool(exclusive)
        self.tags = list(tags) if tags else None
        self.notes = notes
        self.extra = dict(extra) if extra else None
        self.paths: list[Path] = []  # every file written, in order
        self.errors: list[Exception] = []  # every write that failed, in order
        self.last: CapturedCall | None = None  # the most recent recorded call
        self._lock = threading.Lock()
        self._calls = 0
        self._written: set[str] = set()

    # PipelineCallback interface -----------------------------------------------------------------

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        call = _call_for(pipeline, self)
        if call is None:
            raise CaptureError(
                "RaiiafCapture was called as a step callback outside `with capture.recording(pipe):`; "
                "a step callback alone cannot see the initial noise, so nothing would be replayable"
            )
        latents = callback_kwargs.get("latents")
        if not isinstance(latents, torch.Tensor):
            raise CaptureError(f"{type(pipeline).__name__} did not pass 'latents' to the step callback")
        call.on_step(step_index, latents)
        return callback_kwargs  # unchanged: capture must not alter the generation

    # scoped recording -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def recording(self, pipe):
        """Record every call of ``pipe`` made in this block, in this thread (pass ``callback_on_step_end=capture``
        when the pipeline has that argument).

        Calls whose arguments cannot be recorded raise CaptureError before anything is generated. What
        turns out unrecordable during a call (no initial noise drawn through randn_tensor, ...) never
        costs the images: the file is written and says why it cannot be replayed (``not_replayable``).
        Everything swapped is restored on exit, also when the pipeline raises.
        """
        cls = type(pipe)
        state = _hooks.thread_state()
        entry = (pipe, self)
        with _intercept.draws(), _intercept.calls(cls):
            state.recordings.append(entry)
            try:
                yield self
            finally:
                for i in range(len(state.recordings) - 1, -1, -1):
                    if state.recordings[i] is entry:
                        del state.recordings[i]
                        break

    # called by the __call__ wrapper -----------------------------------------------------------------

    def _run(self, original, pipe, args, kwargs):
        call = CallRecorder(self, pipe, original, args, kwargs)  # refusals happen here, before any generation
        state = _hooks.thread_state()
        state.calls.append(call)
        try:
            out = original(pipe, *args, **kwargs)
        finally:
            state.calls.remove(call)
        captured = call.finish(out)
        if captured is None:
            return out
        with self._lock:
            number = self._calls
            self._calls += 1
            self.last = captured
        if self.path is not None:
            self._write(captured, number)
        return out

    def _write(self, captured: CapturedCall, number: int) -> None:
        try:
            paths = captured.write(self.path, call=number, exclusive=self.exclusive, output=self.output,
                                   noise_storage=self.noise_storage)
        except (rc.RaiiafError, OSError) as exc:
            logger.error("raiiaf_diffusers: could not write the capture to %s: %s (the images are returned; "
                         "capture.last.write(path) can still write it)", self.path, exc)
            with self._lock:
                self.errors.append(exc)
            return
        with self._lock:
            for p in paths:
                key = os.path.abspath(p)
                if key in self._written:
                    logger.warning("raiiaf_diffusers: %s replaced a file this capture wrote earlier; "
                                   "put {call} in the path to keep every call", p)
                self._written.add(key)
            self.paths.extend(paths)


def _call_for(pipeline, capture) -> CallRecorder | None:
    for call in reversed(_hooks.thread_state().calls):
        if call.pipe is pipeline and getattr(call, "capture", None) is capture:
            return call
    return None


__all__ = ["RaiiafCapture", "CapturedCall"]
