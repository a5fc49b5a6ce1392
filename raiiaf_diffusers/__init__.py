"""raiiaf for diffusers: capture a pipeline call into one .raiiaf file per image, and replay it bit for bit.

    import torch
    from raiiaf_diffusers import RaiiafCapture, replay

    capture = RaiiafCapture("out/cat.raiiaf")
    with capture.recording(pipe):
        image = pipe("a cat", generator=torch.Generator().manual_seed(0), callback_on_step_end=capture).images[0]

    result = replay(pipe, "out/cat.raiiaf")   # in this or any later process
    print(result.report())                   # bit-exact, or the max abs difference and the environment drift
"""

from .capture import CapturedCall, RaiiafCapture
from .errors import CaptureError, ReplayError
from .record import DiffusersRecord, RecordError
from .replay import ReplayResult, replay

__version__ = "0.1.0"

__all__ = ["RaiiafCapture", "CapturedCall", "replay", "ReplayResult", "CaptureError", "ReplayError", "RecordError",
           "DiffusersRecord", "__version__"]
