"""Errors of the diffusers plugin; all derive from raiiaf_core.errors.RaiiafError."""

from raiiaf_core.errors import RaiiafError


class CaptureError(RaiiafError):
    """Something needed for an exact replay could not be captured; no file was written for that call."""


class ReplayError(RaiiafError):
    """A file cannot be replayed on this pipeline or in this environment (the message says why)."""


__all__ = ["CaptureError", "ReplayError"]
