"""Write the raiiaf v1 fixtures in this folder with the PyPI library raiiaf==1.1.0.

Run it in a throwaway venv, never the project's (the old library pulls in torch, zfpy, pynvml):

    python3 -m venv /tmp/v1venv
    /tmp/v1venv/bin/pip install torch==2.13.0
    /tmp/v1venv/bin/pip install raiiaf==1.1.0
    /tmp/v1venv/bin/python tests/data/v1/make_fixtures.py

The library's default (convert_float16=True with compression) crashes, because it feeds
float16 arrays to zfpy; every call here passes convert_float16 and should_compress explicitly.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from raiiaf import raiiafFileHandler

HERE = Path(__file__).resolve().parent
SHAPE = (1, 4, 8, 8)

# Plain IEEE arithmetic only (no RNG, no libm), so tests recompute these bit for bit.
NOISE = ((np.arange(256) * 37 % 101 - 50) / 7).astype(np.float32).reshape(SHAPE)
RAMP = ((np.arange(256) - 128) / 16).astype(np.float32).reshape(SHAPE)

HARDWARE = {
    "machine_name": "fixture",
    "os": "linux",
    "cpu": "x86_64",
    "cpu_cores": 2,
    "gpu": [],
    "ram_gb": 24.0,
    "framework": "torch",
    "compute_lib": "cpu",
}


def settings(seed, sampler, precision):
    return {
        "seed": seed,
        "steps": 20,
        "sampler": sampler,
        "cfg_scale": 7.5,
        "scheduler": "pndm",
        "eta": 0.0,
        "guidance": "classifier-free",
        "precision": precision,
        "deterministic": True,
    }


def encoded(fmt):
    """A 16x16 RGB gradient, encoded once and also saved beside the fixtures."""
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(16)[None, :] * 16
    pixels[..., 1] = np.arange(16)[:, None] * 16
    pixels[..., 2] = 128
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt)
    data = buf.getvalue()
    (HERE / f"image.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(data)
    return data


def main():
    handler = raiiafFileHandler()
    png, jpeg = encoded("PNG"), encoded("JPEG")
    common = dict(
        model_name="stable-diffusion-v1-5",
        model_version="1.5",
        tags=["fixture", "v1"],
        hardware_info=HARDWARE,
    )
    # Uncompressed float32 latents, two of them, PNG image with an "extra" record on the image chunk.
    handler.file_encoder(
        str(HERE / "f32_raw.raiiaf"),
        latent={"initial_noise": NOISE, "ramp": RAMP},
        chunk_records=[],
        prompt="a red fox in the snow",
        img_binary=png,
        should_compress=False,
        convert_float16=False,
        generation_settings=settings(1234, "ddim", "fp32"),
        extra_image={"width": 16, "height": 16},
        **common,
    )
    # Uncompressed float16 latent (the library converts NOISE to float16), JPEG image.
    handler.file_encoder(
        str(HERE / "f16_raw.raiiaf"),
        latent={"initial_noise": NOISE},
        chunk_records=[],
        prompt="a lighthouse at dusk",
        img_binary=jpeg,
        should_compress=False,
        convert_float16=True,
        generation_settings=settings(0, "euler_a", "fp16"),
        **common,
    )
    # Compressed: each latent is a zstd-compressed 12-byte frame followed by a zfpy stream.
    handler.file_encoder(
        str(HERE / "f32_zfp.raiiaf"),
        latent={"initial_noise": NOISE, "ramp": RAMP},
        chunk_records=[],
        prompt="a red fox in the snow",
        img_binary=png,
        should_compress=True,
        convert_float16=False,
        generation_settings=settings(1234, "ddim", "fp32"),
        **common,
    )


if __name__ == "__main__":
    main()
