import io

import numpy as np
import pytest
from PIL import Image

import raiiaf_core as rc

# A fixed environment keeps files byte-deterministic and the tests independent of this machine.
FIXED_ENV = {"schema_version": 1, "python": {"version": "3.11.7"}, "torch": {"version": "2.13.0+cpu"}}


# torch's CPU kernel level -> the ATEN_CPU_CAPABILITY value of the level below it, which the same CPU runs too.
# torch rounds some kernels differently there; from AVX2 to DEFAULT it also draws float32 noise with other code.
LOWER_CPU_LEVEL = {"AVX512": "avx2", "AVX2": "default"}


def png_bytes(width=16, height=16, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def small_file(tmp_path):
    """A small but complete file: PNG, two tensors, metadata and environment."""
    noise = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    path = rc.write(tmp_path / "small.raiiaf", image=png_bytes(), tensors={"noise": noise, "sigmas": np.linspace(
        14.6, 0, 5).astype(np.float32)}, metadata={"prompt": "a cat", "seed": 7,
                                                  "noise": {"tensor": "noise", "source": "captured"}},
        environment=FIXED_ENV)
    return path


def undetected_private_chunk_flips(data: bytes) -> tuple[list, int]:
    """(offsets where inverting one byte of an exported PNG's raIf chunk, its length, type, data or CRC, goes
    unnoticed by rc.open + verify, the chunk's length): a damaged byte anywhere in it must be caught."""
    start = data.index(b"raIf") - 4
    end = start + 12 + int.from_bytes(data[start:start + 4], "big")
    missed = []
    for i in range(start, end):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        try:
            rc.open(io.BytesIO(bytes(damaged))).verify()
        except rc.RaiiafError:
            continue
        missed.append(i)
    return missed, end - start
