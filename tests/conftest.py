import io

import numpy as np
import pytest
from PIL import Image

import raiiaf_core as rc

# A fixed environment keeps files byte-deterministic and the tests independent of this machine.
FIXED_ENV = {"schema_version": 1, "python": {"version": "3.11.7"}, "torch": {"version": "2.13.0+cpu"}}


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
