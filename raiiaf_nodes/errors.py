"""Errors the ComfyUI nodes raise on purpose; all are raiiaf errors, so one `except RaiiafError` catches them."""

from raiiaf_core.errors import RaiiafError


class NodeInputError(RaiiafError):
    """A node got an input it cannot work with (the message says which and what to do)."""


class UnsafePathError(NodeInputError):
    """A filename prefix or file name points outside ComfyUI's input or output folder."""


class NoiseShapeError(NodeInputError):
    """Stored noise does not fit the latent it is asked to noise (different size, batch or channels)."""


class ReconstructionError(NodeInputError):
    """Without the capture node, the noise cannot be rebuilt from the graph (the message says why)."""


class RecordError(NodeInputError):
    """A file's sampling-run record holds a value that cannot be used; the message names the file and field."""


class CaptureError(NodeInputError):
    """A sampling run could not be recorded (the sampling itself went on; the file says why)."""
