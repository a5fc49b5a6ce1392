"""`python -m bench` runs end to end on tiny inputs and prints every section (the figures are not checked)."""

import base64
import io
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench import bench_format

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_on_tiny_inputs_and_prints_every_section(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--no-v1", "--dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for section in ("== Machine ==", "== Size:", "== Compact noise (issue 13)", "== Save time:", "== Metadata scan:", "== Latent load:",
                    "== Archive index:", "== Shareable PNG", "== Capture overhead =="):
        assert section in out, f"missing {section!r} in:\n{out}"
    for line in ("CPU: ", "PNG alone", "PNG + .safetensors sidecar", "PNG + base64 tensor in tEXt",
                 "raiiaf v2 (this project)", "target (issue 2): raiiaf v2 over the PNG alone", "ComfyUI SaveImage",
                 "target <= 1.05", "read, image decoded to pixels", "raiiaf v2 (rc.open(p).metadata)",
                 "bytes read per file", "safetensors.torch.load_file", "build_index, no index yet",
                 "model_and_sampler", "environment_differs", "PNG over .raiiaf", "rc.write -> rc.write(png=True)",
                 "export -> import gives the .raiiaf back byte for byte", "rc.write, noise as recipe",
                 "ratio compact / SaveImage PNG"):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "raiiaf 1.1.0 file_decoder: not measured, skipped (--no-v1)" in out
    assert list(tmp_path.iterdir()) == []  # the benchmark removes its files


def test_spliced_text_chunks_are_valid_png_that_pillow_reads():
    # The size and scan baselines splice text chunks into encoded PNGs instead of re-encoding them.
    png = bench_format.encode_png(bench_format.photo_like(32, 1))
    payload = base64.b64encode(b"\x00\x01tensor bytes").decode()
    spliced = bench_format.with_chunks(png, [bench_format.text_chunk("prompt", '{"a": 1}'),
                                             bench_format.itxt_zlib_chunk("latent", payload)])
    with Image.open(io.BytesIO(spliced)) as im:
        assert im.info["prompt"] == '{"a": 1}' and im.info["latent"] == payload
        im.load()
        original = Image.open(io.BytesIO(png))
        assert im.tobytes() == original.tobytes()
