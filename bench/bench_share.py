"""The shareable PNG (`raiiaf export`) against the .raiiaf it carries: bytes added, time to write it, time to read
the metadata back; both made from the same contents in the same process.

    python -m bench.bench_share [--tiny]

Files: a ComfyUI save (its PNG holds SaveImage's prompt and workflow tEXt, as Raiiaf Save stores it; the
export adds A1111 parameters) and a diffusers capture (the export adds parameters), each a photo-like PNG with
float32 initial noise, as in the size section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

import raiiaf_core as rc
from raiiaf_core import png, png_share
from raiiaf_core.layout import FIRST_READ

from .bench_format import (
    COMFY_COMPRESS_LEVEL,
    comfy_metadata,
    comfy_prompt,
    comfy_workflow,
    generation_record,
    initial_noise,
    photo_like,
)
from .common import paired, read_bytes_during, table

FULL = (1024, 128, 15)  # image side, latent side, paired repeats
TINY = (64, 8, 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_share", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 64x64 image, two repeats (smoke test)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="raiiaf-bench-share-"))
    try:
        run(args.tiny, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _comfy_png(image: Image.Image, prompt: dict, workflow: dict) -> bytes:
    """The PNG Raiiaf Save stores: SaveImage's encoding, with prompt and workflow as tEXt."""
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(workflow))
    path = Path(tempfile.mkstemp(suffix=".png")[1])
    try:
        image.save(path, pnginfo=info, compress_level=COMFY_COMPRESS_LEVEL)
        return path.read_bytes()
    finally:
        path.unlink()


def _contents(side: int, latent: int) -> dict:
    """{kind: (image bytes, tensors, metadata)} of the two files."""
    seed = 7
    image, noise = photo_like(side, seed), initial_noise(latent, seed)
    prompt = comfy_prompt(seed, side)
    workflow = comfy_workflow(prompt)
    comfy = comfy_metadata(seed, side, prompt, workflow)
    comfy["model"] = {"name": "sd_xl_base_1.0.safetensors", "sha256": "31e35c80fc" + "0" * 54}
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "plain.png"
        image.save(plain, compress_level=COMFY_COMPRESS_LEVEL)
        plain_png = plain.read_bytes()
    return {"ComfyUI save": (_comfy_png(image, prompt, workflow), {"noise": noise}, comfy),
            "diffusers capture": (plain_png, {"noise": noise}, generation_record(seed, side))}


def run(tiny: bool, work: Path) -> None:
    side, latent, repeats = TINY if tiny else FULL
    print(f"\n== Shareable PNG (raiiaf export): {side}x{side} photo-like PNG, noise (1,4,{latent},{latent}) "
          f"float32; median [min-max] over {repeats} paired runs ==", flush=True)
    environment = rc.capture_environment()
    rows = [("file", ".raiiaf bytes", "PNG bytes", "PNG over .raiiaf", "text chunks added", "raIf framing")]
    timings = [("operation, baseline -> candidate", "baseline", "candidate", "ratio, wall", "ratio, CPU")]
    reads = []
    for kind, (image, tensors, metadata) in _contents(side, latent).items():
        raiiaf = rc.write(work / f"{kind}.raiiaf", image=image, tensors=tensors, metadata=metadata,
                          environment=environment)
        shared = rc.export_png(raiiaf, work / f"{kind}.png")
        assert rc.import_png(shared, work / f"{kind}.back.raiiaf").kind == "raiiaf"
        assert (work / f"{kind}.back.raiiaf").read_bytes() == raiiaf.read_bytes()
        small, big = raiiaf.stat().st_size, shared.stat().st_size
        texts = _inserted_text_bytes(shared.read_bytes())
        framing = big - small - texts
        rows.append((kind, f"{small:,}", f"{big:,}", f"+{big - small:,} B ({100 * (big - small) / small:+.2f}%)",
                     f"{texts:,} B", f"{framing:,} B"))
        write = paired(lambda: rc.write(work / "w.raiiaf", image=image, tensors=tensors, metadata=metadata,
                                        environment=environment),
                       lambda: rc.write(work / "w.png", image=image, tensors=tensors, metadata=metadata,
                                        environment=environment, png=True), repeats)
        timings.append((f"{kind}: rc.write -> rc.write(png=True)", f"{write.baseline.median * 1e3:.2f} ms",
                        f"{write.candidate.median * 1e3:.2f} ms", write.ratio.format("{:.3f}"),
                        write.cpu_ratio.format("{:.3f}")))
        scan = paired(lambda: rc.open(raiiaf).metadata, lambda: rc.open(shared).metadata, repeats, count=50)
        timings.append((f"{kind}: rc.open(p).metadata, .raiiaf -> PNG", f"{scan.baseline.median * 1e6:.0f} us",
                        f"{scan.candidate.median * 1e6:.0f} us", scan.ratio.format("{:.3f}"),
                        scan.cpu_ratio.format("{:.3f}")))
        reads.append((kind, read_bytes_during(lambda: rc.open(raiiaf).metadata)[1],
                      read_bytes_during(lambda: rc.open(shared).metadata)[1]))
    for line in table(rows) + [""] + table(timings):
        print(line)
    for kind, a, b in reads:
        print(f"  {kind}: bytes read for the metadata: .raiiaf {a if a is not None else 'n/a'}, PNG "
              f"{b if b is not None else 'n/a'} (the reader's first read is {FIRST_READ:,} B)")
    print("  export -> import gives the .raiiaf back byte for byte (checked); the PNG's image is the stored PNG's "
          "bytes, not a second copy")


def _inserted_text_bytes(data: bytes) -> int:
    """Bytes of the text chunks export put between IHDR and the raIf chunk."""
    def read(offset: int, length: int) -> bytes:
        return data[offset:offset + length]

    for item in png.chunks(read, len(data), "exported PNG", max_chunks=1000):
        if item.type == png_share.CHUNK_TYPE:
            return item.offset - png.IHDR_END
    raise AssertionError("the exported PNG has no raIf chunk")


if __name__ == "__main__":
    raise SystemExit(main())
