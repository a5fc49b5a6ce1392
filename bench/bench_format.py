"""The file format against what users would pick instead: size, save time, metadata scan, latent load.

Every comparison runs its baseline in the same process on the same inputs; timings are paired per repeat
(see common.paired). The PyPI library raiiaf 1.1.0 runs in its own venv through bench/v1_worker.py.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import raiiaf_core as rc

from .common import Spread, kib, measure, paired, read_bytes_during, table

COMFY_COMPRESS_LEVEL = 4  # ComfyUI's SaveImage
SAVE_TARGET = 1.05  # issue 6: this project's save may cost at most 5% more than SaveImage's
SIZE_TARGET_SLACK = 4096  # issue 2: file over the PNG alone <= raw tensor bytes + 4 KiB


@dataclass(frozen=True)
class Config:
    sizes: tuple  # (image side, latent side) pairs; the first is used for the timings
    images: int  # images per size in the size table
    repeats: int  # paired repeats for save / read / load timings
    scan_files: int
    scan_repeats: int  # passes over all files in the metadata scan
    load_count: int  # tensor loads per timed repeat (one load is too short to time alone)
    scan_size: tuple  # (image side, latent side) of the scanned files


FULL = Config(sizes=((1024, 128), (512, 64)), images=5, repeats=15, scan_files=1000, scan_repeats=15,
              load_count=50, scan_size=(512, 64))
TINY = Config(sizes=((64, 8),), images=2, repeats=3, scan_files=20, scan_repeats=2, load_count=3,
              scan_size=(64, 8))


# -- inputs -----------------------------------------------------------------------------------------------

def photo_like(side: int, seed: int) -> Image.Image:
    """An RGB image that compresses like a photo: smooth colour fields and a gradient under sensor-like grain.

    Pure noise would make the PNG huge and every overhead look small; flat colour would do the opposite.
    """
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.uniform(20, 235, (6, 6, 3)).astype(np.uint8))
    smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float32)
    ramp = np.linspace(-25, 25, side, dtype=np.float32)[None, :, None]
    grain = rng.normal(0, 3 + seed % 3, (side, side, 3)).astype(np.float32)
    return Image.fromarray(np.clip(smooth + ramp + grain, 0, 255).astype(np.uint8))


def initial_noise(latent_side: int, seed: int) -> torch.Tensor:
    return torch.randn((1, 4, latent_side, latent_side), generator=torch.Generator().manual_seed(seed))


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=COMFY_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunk(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def itxt_zlib_chunk(key: str, value: str) -> bytes:
    # keyword, compression flag 1 + method 0, empty language tag and translated keyword, zlib text:
    # byte for byte what Pillow's PngInfo.add_itxt(key, value, zip=True) writes.
    return png_chunk(b"iTXt", key.encode("latin-1") + b"\0\1\0\0\0" + zlib.compress(value.encode("utf-8")))


def with_chunks(png: bytes, chunks) -> bytes:
    """The PNG with extra chunks right after IHDR, where Pillow puts text chunks; the pixels are not re-encoded."""
    ihdr_end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def generation_record(seed: int, side: int) -> dict:
    """A diffusers-style record: what a script would keep beside its image."""
    return {
        "prompt": "a lighthouse on a cliff at dusk, volumetric light, 35mm photograph, high detail",
        "negative_prompt": "blurry, lowres, watermark",
        "seed": seed, "steps": 30, "sampler": "DPMSolverMultistepScheduler", "guidance_scale": 7.0,
        "width": side, "height": side, "model": {"name": "stabilityai/stable-diffusion-xl-base-1.0"},
        "noise": {"tensor": "noise", "source": "captured"},
    }


# Output types per ComfyUI node class, for the UI workflow (links are typed there).
_OUTPUTS = {"CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "LoraLoader": ["MODEL", "CLIP"],
            "CLIPTextEncode": ["CONDITIONING"], "EmptyLatentImage": ["LATENT"], "KSampler": ["LATENT"],
            "VAEDecode": ["IMAGE"], "SaveImage": []}


def comfy_prompt(seed: int, side: int) -> dict:
    """ComfyUI's API-format prompt of a common txt2img graph (checkpoint, LoRA, two prompts, sampler, save)."""
    def node(cls, **inputs):
        return {"inputs": inputs, "class_type": cls, "_meta": {"title": cls}}

    return {
        "4": node("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors"),
        "10": node("LoraLoader", lora_name="detail_tweaker_xl.safetensors", strength_model=0.8, strength_clip=0.8,
                   model=["4", 0], clip=["4", 1]),
        "6": node("CLIPTextEncode", text=generation_record(seed, side)["prompt"], clip=["10", 1]),
        "7": node("CLIPTextEncode", text="blurry, lowres, watermark", clip=["10", 1]),
        "5": node("EmptyLatentImage", width=side, height=side, batch_size=1),
        "3": node("KSampler", seed=seed, steps=30, cfg=7.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=1.0,
                  model=["10", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    }


def comfy_workflow(prompt: dict) -> dict:
    """The UI workflow ComfyUI stores beside the prompt: the same nodes with layout, typed links and widgets."""
    nodes, links = [], []
    for order, (node_id, node) in enumerate(prompt.items()):
        inputs, widgets = [], []
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source_id, slot = value
                link_id = len(links) + 1
                kind = _OUTPUTS[prompt[source_id]["class_type"]][slot]
                links.append([link_id, int(source_id), slot, int(node_id), len(inputs), kind])
                inputs.append({"name": name, "type": kind, "link": link_id})
            else:
                widgets.append(value)
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "pos": [100 + 320 * order, 120 + 40 * order],
            "size": [315, 98 + 24 * len(widgets)], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": kind, "type": kind, "links": [], "slot_index": slot}
                        for slot, kind in enumerate(_OUTPUTS[node["class_type"]])],
            "properties": {"Node name for S&R": node["class_type"], "cnr_id": "comfy-core", "ver": "0.3.40"},
            "widgets_values": widgets,
        })
    by_id = {n["id"]: n for n in nodes}
    for link_id, source, slot, *_ in links:
        by_id[source]["outputs"][slot]["links"].append(link_id)
    return {"id": "5f0d8a3e-6a1c-4c43-9c5e-3b2f1f0e9a11", "revision": 0, "last_node_id": max(by_id),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.9, "offset": [12.5, -40.0]}, "frontendVersion": "1.23.4"}, "version": 0.4}


def comfy_metadata(seed: int, side: int, prompt: dict, workflow: dict) -> dict:
    """What this project records for a ComfyUI save: the settings plus the same prompt and workflow."""
    record = generation_record(seed, side)
    record.update(sampler="dpmpp_2m", scheduler="karras", host={"comfyui": {"prompt": prompt, "workflow": workflow}})
    return record


def v1_fields(record: dict, extra_settings: dict | None = None) -> dict:
    """file_encoder's keyword arguments carrying the same record (its schema wants these names)."""
    settings = {"seed": record["seed"], "steps": record["steps"], "sampler": record["sampler"],
                "cfg_scale": record["guidance_scale"], "scheduler": "karras", "eta": 0.0,
                "guidance": "classifier-free", "precision": "fp32", "deterministic": True, **(extra_settings or {})}
    return {"model_name": record["model"]["name"], "model_version": "1.0", "prompt": record["prompt"],
            "tags": [], "generation_settings": settings, "hardware_info": {"os": sys.platform}}


# -- the raiiaf 1.1.0 library, in its own venv ---------------------------------------------------------------

V1_VENV = Path(os.environ.get("RAIIAF_BENCH_V1_VENV", "~/.cache/raiiaf-bench/v1venv")).expanduser()
WORKER = Path(__file__).with_name("v1_worker.py")


class V1Error(Exception):
    """The v1 worker failed; the benchmark reports it in place of the figures."""


class V1Library:
    """raiiaf 1.1.0 behind bench/v1_worker.py, run with its venv's Python."""

    def __init__(self, python: Path):
        self.python = python

    @classmethod
    def ensure(cls, venv: Path = V1_VENV):
        """(library, None) or (None, why it is unavailable). Creates the venv on first use."""
        python = venv / "bin" / "python"
        if not _imports_v1(python):
            print(f"(installing raiiaf 1.1.0 into {venv}, once)", file=sys.stderr, flush=True)
            # torch first, with exactly this pin: raiiaf pulls in torch, and any other version means a
            # multi-GB download instead of the wheel this machine already has.
            steps = [[sys.executable, "-m", "venv", str(venv)],
                     [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
                     [str(python), "-m", "pip", "install", "-q", "raiiaf==1.1.0"]]
            for step in steps:
                try:
                    done = subprocess.run(step, capture_output=True, text=True, timeout=1800)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    return None, f"could not run {' '.join(step[:4])}: {exc}"
                if done.returncode:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                    return None, f"'{' '.join(step[2:])}' failed: {tail[0]}"
            if not _imports_v1(python):
                return None, f"raiiaf 1.1.0 does not import in {venv}"
        return cls(python), None

    def call(self, request: dict) -> dict:
        try:
            done = subprocess.run([str(self.python), str(WORKER)], input=json.dumps(request), capture_output=True,
                                  text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise V1Error(f"the v1 worker did not run: {exc}") from None
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise V1Error(f"the v1 worker failed: {last}")
        return json.loads(done.stdout)


def _imports_v1(python: Path) -> bool:
    if not python.exists():
        return False
    probe = "import importlib.metadata as m, sys; sys.exit(m.version('raiiaf') != '1.1.0')"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


# -- the sections -------------------------------------------------------------------------------------------------

V1_RAW = "raiiaf 1.1.0, raw (should_compress=False)"
V1_ZFP = "raiiaf 1.1.0, zfp+zstd (should_compress=True)"
OURS = "raiiaf v2 (this project)"
SIZE_VARIANTS = ("PNG alone", "PNG + .safetensors sidecar", V1_RAW, V1_ZFP, "PNG + base64 tensor in tEXt",
                 "PNG + base64 tensor in iTXt (zlib)", OURS)


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def run_size(config: Config, work: Path, v1: V1Library | None, v1_note: str) -> None:
    header(f"Size: {config.images} photo-like PNGs per size (compress_level={COMFY_COMPRESS_LEVEL}) + float32 "
           "initial noise; median [min-max] over the images")
    for side, latent in config.sizes:
        measured = _measure_sizes(config, work, side, latent, v1)
        raw = measured["PNG alone"][0][2]
        print(f"{side}x{side} image, noise (1,4,{latent},{latent}) float32 = {raw:,} raw bytes")
        rows, notes = [("variant", "bytes", "over PNG alone", "over PNG minus raw tensor")], []
        for name in SIZE_VARIANTS:
            result = measured.get(name, f"not measured, {v1_note}")
            if isinstance(result, str):
                rows.append((name, "n/a", "", ""))
                notes.append(f"  {name}: {result}")
                continue
            total = Spread.of(size for size, _, _ in result)
            percent = Spread.of(100 * (size - png) / png for size, png, _ in result)
            extra = Spread.of((size - png - raw) / 1024 for size, png, raw in result)
            rows.append((name, f"{total.median:,.0f}", percent.format("{:+.1f}", "%"),
                         "" if name == "PNG alone" else extra.format("{:+.1f}", " KiB")))
        for line in table(rows) + notes:
            print(line)
        worst = max(size - png - raw for size, png, raw in measured[OURS])
        verdict = "met" if worst <= SIZE_TARGET_SLACK else "NOT MET"
        print(f"  target (issue 2): raiiaf v2 over the PNG alone <= raw tensor + 4 KiB: {verdict} "
              f"(worst {worst / 1024:+.1f} KiB beyond the raw tensor; includes metadata and the environment)")
    print("  every variant but the PNG alone carries the same generation record (JSON); both raiiaf versions add "
          "their environment record")


def _measure_sizes(config: Config, work: Path, side: int, latent: int, v1: V1Library | None) -> dict:
    """{variant: [(file bytes, PNG-alone bytes, raw tensor bytes) per image] or why it has no figures}."""
    environment = rc.capture_environment()
    measured, v1_items, v1_baselines = {}, [], []
    for i in range(config.images):
        seed = 1000 * side + i
        png = encode_png(photo_like(side, seed))
        noise = initial_noise(latent, seed)
        raw = noise.numel() * noise.element_size()
        record = generation_record(seed, side)
        params = text_chunk("parameters", json.dumps(record))
        blob = safetensors.torch.save({"noise": noise})
        encoded = base64.b64encode(blob).decode()
        ours = rc.write(work / f"size_{side}_{i}.raiiaf", image=png, tensors={"noise": noise}, metadata=record,
                        environment=environment)
        sizes = {
            "PNG alone": len(png),
            "PNG + .safetensors sidecar": len(with_chunks(png, [params])) + len(blob),
            "PNG + base64 tensor in tEXt": len(with_chunks(png, [params, text_chunk("latent", encoded)])),
            "PNG + base64 tensor in iTXt (zlib)": len(with_chunks(png, [params, itxt_zlib_chunk("latent", encoded)])),
            OURS: ours.stat().st_size,
        }
        for name, size in sizes.items():
            measured.setdefault(name, []).append((size, len(png), raw))
        if v1 is not None:
            inputs = {"png": str(work / f"size_{side}_{i}.png"), "tensor": str(work / f"size_{side}_{i}.npy")}
            Path(inputs["png"]).write_bytes(png)
            np.save(inputs["tensor"], noise.numpy())
            for name, compress in ((V1_RAW, False), (V1_ZFP, True)):
                v1_items.append({**inputs, "out": str(work / f"size_{side}_{i}_v1_{int(compress)}.raiiaf"),
                                 "compress": compress, "fields": v1_fields(record)})
                v1_baselines.append((name, len(png), raw))
    if v1_items:
        try:
            answers = v1.call({"op": "write", "items": v1_items})["results"]
        except V1Error as exc:
            return {**measured, V1_RAW: str(exc), V1_ZFP: str(exc)}
        for (name, png_size, raw), answer in zip(v1_baselines, answers):
            if "error" in answer:
                measured[name] = f"failed, {answer['error']}"
            elif not isinstance(measured.get(name), str):
                measured.setdefault(name, []).append((answer["size"], png_size, raw))
    return measured


def run_save(config: Config, work: Path) -> dict:
    """ComfyUI SaveImage vs rc.write, and issue 2's write/read ratios. Returns the files for the latent load."""
    side, latent = config.sizes[0]
    seed = 7
    image = photo_like(side, seed)
    noise = initial_noise(latent, seed)
    prompt = comfy_prompt(seed, side)
    workflow = comfy_workflow(prompt)
    metadata = comfy_metadata(seed, side, prompt, workflow)
    text_bytes = len(json.dumps(prompt)) + len(json.dumps(workflow))
    header(f"Save time: {side}x{side} image, noise (1,4,{latent},{latent}), ComfyUI prompt+workflow "
           f"{kib(text_bytes)}; median [min-max] over {config.repeats} paired runs")
    comfy_path, ours_path = work / "comfy.png", work / "ours.raiiaf"

    def comfy_save():
        # ComfyUI's SaveImage: prompt and workflow as json.dumps text chunks, compress_level=4.
        info = PngInfo()
        info.add_text("prompt", json.dumps(prompt))
        info.add_text("workflow", json.dumps(workflow))
        image.save(comfy_path, pnginfo=info, compress_level=COMFY_COMPRESS_LEVEL)

    def ours_save():
        # The same PIL image (encoded to PNG at compress_level=4 inside write), the noise, the same record.
        rc.write(ours_path, image=image, tensors={"noise": noise}, metadata=metadata)

    save = paired(comfy_save, ours_save, config.repeats)
    verdict = "met" if save.ratio.median <= SAVE_TARGET else "NOT MET"
    for line in table([
        ("ComfyUI SaveImage (Pillow, tEXt prompt+workflow)", save.baseline.scaled(1000).format("{:.1f}", " ms")),
        ("raiiaf_core.write (PNG + noise + record, fsync, rename)",
         save.candidate.scaled(1000).format("{:.1f}", " ms")),
        ("ratio, wall clock", save.ratio.format("{:.3f}") + f"   target <= {SAVE_TARGET}: {verdict}"),
        ("ratio, process CPU time", save.cpu_ratio.format("{:.3f}")),
    ]):
        print(line)
    print(f"  file sizes: SaveImage {comfy_path.stat().st_size:,} B, raiiaf {ours_path.stat().st_size:,} B; "
          "SaveImage does not fsync, raiiaf_core.write does (atomic replace)")

    # Issue 2: against the plain alternative of a PNG from Pillow plus the tensor from safetensors.
    png_path, sidecar = work / "plain.png", work / "plain.safetensors"
    record = generation_record(seed, side)

    def plain_write():
        image.save(png_path, compress_level=COMFY_COMPRESS_LEVEL)
        safetensors.torch.save_file({"noise": noise}, sidecar)

    def ours_write():
        rc.write(ours_path, image=image, tensors={"noise": noise}, metadata=record)

    def plain_read():
        with Image.open(png_path) as im:
            im.load()
        return safetensors.torch.load_file(sidecar)["noise"]

    def ours_read():
        art = rc.open(ours_path)
        art.image()
        return art.load_tensor("noise", "torch")

    def plain_read_bytes():
        png_path.read_bytes()
        return safetensors.torch.load_file(sidecar)["noise"]

    def ours_read_bytes():
        art = rc.open(ours_path)
        art.image_bytes()
        return art.load_tensor("noise", "torch")

    print(f"Issue 2: against Pillow PNG (compress_level={COMFY_COMPRESS_LEVEL}) + safetensors.torch.save_file / "
          "load_file, same image and tensor")
    rows = [("operation", "Pillow + safetensors", "raiiaf v2", "ratio, wall", "ratio, CPU")]
    for name, baseline, candidate in (("write", plain_write, ours_write),
                                      ("read, image decoded to pixels", plain_read, ours_read),
                                      ("read, image as file bytes", plain_read_bytes, ours_read_bytes)):
        result = paired(baseline, candidate, config.repeats)
        rows.append((name, result.baseline.scaled(1000).format("{:.2f}", " ms"),
                     result.candidate.scaled(1000).format("{:.2f}", " ms"), result.ratio.format("{:.3f}"),
                     result.cpu_ratio.format("{:.3f}")))
    for line in table(rows):
        print(line)
    # ours_path now holds what ours_write wrote: the same tensor as the sidecar, for the latent load.
    return {"raiiaf": ours_path, "safetensors": sidecar, "latent": latent}


PILLOW_SCAN = "Pillow (tEXt chunks of the SaveImage PNGs)"
OURS_SCAN = "raiiaf v2 (rc.open(p).metadata)"
DIFFUSERS_SCAN = "raiiaf v2, diffusers capture (rc.open(p).metadata)"
V1_SCAN = "raiiaf 1.1.0 file_decoder"
SCAN_TARGET_BYTES = 8192  # issue 13: at most 8 KiB read per typical file
SCAN_BLOCK = 50  # files per reader per turn in the metadata scan


def pillow_scan(paths) -> None:
    for path in paths:
        # Image.open stops at the first IDAT chunk: the text chunks before it are read, the pixels are not.
        with Image.open(path) as im:
            {key: json.loads(im.info[key]) for key in ("prompt", "workflow")}


def raiiaf_scan(paths) -> None:
    for path in paths:
        rc.open(path).metadata


def run_scan(config: Config, work: Path, v1: V1Library | None, v1_note: str) -> None:
    side, _ = config.scan_size
    n = config.scan_files
    header(f"Metadata scan: generation metadata (ComfyUI prompt+workflow and settings) of {n} files, "
           f"{side}x{side} images; median [min-max] over {config.scan_repeats} passes, the readers taking turns "
           f"every {SCAN_BLOCK} files")
    files = _write_scan_files(config, work / "scan", v1, v1_note)
    results = {}  # reader -> ([(wall, CPU) seconds per pass], bytes read in one pass) or why it has no figures
    readers = {name: scan for name, scan in ((PILLOW_SCAN, pillow_scan), (OURS_SCAN, raiiaf_scan),
                                             (DIFFUSERS_SCAN, raiiaf_scan)) if not isinstance(files[name], str)}
    for name, scan in readers.items():
        scan(files[name])  # warm-up pass
    for i in range(config.scan_repeats):
        # A pass reads every file once, in blocks; each block is read by every reader in turn, alternating
        # which goes first, as common.paired does. This machine's speed drifts within a second, so whole
        # passes back to back compared readers at different speeds; interleaved blocks put the drift on all.
        gc.collect()
        totals = {name: [0.0, 0.0] for name in readers}  # wall, CPU seconds of this pass
        for j, start in enumerate(range(0, n, SCAN_BLOCK)):
            for name in sorted(readers, reverse=bool((i + j) % 2)):
                block = files[name][start:start + SCAN_BLOCK]
                wall, cpu = measure(lambda: readers[name](block), collect=False)
                totals[name][0] += wall
                totals[name][1] += cpu
        for name, seconds in totals.items():
            results.setdefault(name, ([], None))[0].append(tuple(seconds))
    for name, scan in readers.items():
        # Counted in a pass of its own so that reading /proc/self/io stays out of the timings.
        results[name] = (results[name][0], read_bytes_during(lambda: scan(files[name]))[1])
    for name in (DIFFUSERS_SCAN, V1_SCAN):
        if isinstance(files[name], str):
            results[name] = files[name]
    if not isinstance(files[V1_SCAN], str):
        try:
            answer = v1.call({"op": "scan", "paths": [str(p) for p in files[V1_SCAN]],
                              "repeats": config.scan_repeats})
            # The worker times wall clock only; only the files/s column (wall clock) reads it.
            results[V1_SCAN] = ([(s, s) for s in answer["seconds"]], answer["bytes_read"])
        except V1Error as exc:
            results[V1_SCAN] = str(exc)

    rows, notes = [("reader", "files/s", "bytes read per file", "file size")], []
    for name, result in results.items():
        if isinstance(result, str):
            rows.append((name, "n/a", "", ""))
            notes.append(f"  {name}: {result}")
            continue
        passes, read = result
        rate = Spread.of(n / wall for wall, _ in passes)
        size = statistics.median(p.stat().st_size for p in files[name])
        rows.append((name, rate.format("{:,.0f}"), "n/a" if read is None else f"{read / n:,.0f} B", f"{size:,.0f} B"))
    for line in table(rows) + notes:
        print(line)
    print("  files/s from wall clock; bytes read = /proc/self/io rchar over one pass (all read() calls, whole "
          "buffers); page cache warm")
    pillow, ours = results[PILLOW_SCAN][0], results[OURS_SCAN][0]
    wall = Spread.of(p[0] / o[0] for p, o in zip(pillow, ours))
    # Process CPU time is user + system time, so the system calls each reader makes count in it too.
    cpu = Spread.of(p[1] / max(o[1], 1e-9) for p, o in zip(pillow, ours))
    met = wall.median >= 1 and cpu.median >= 1
    print(f"  raiiaf/Pillow rate, per pass: wall clock {wall.format('{:.2f}')}, process CPU time "
          f"{cpu.format('{:.2f}')}; target (issue 13) >= 1 in both: {'met' if met else 'NOT MET'}")
    reads = [results[name][1] / n for name in (OURS_SCAN, DIFFUSERS_SCAN) if isinstance(results.get(name), tuple)
             and results[name][1] is not None]
    if reads:
        print(f"  target (issue 13) <= {SCAN_TARGET_BYTES:,} B read per ComfyUI and diffusers file: "
              f"{'met' if max(reads) <= SCAN_TARGET_BYTES else 'NOT MET'} (worst {max(reads):,.0f} B)")


def diffusers_template(folder: Path):
    """(metadata, tensors, environment) of a real diffusers capture, or why there is none.

    One 64x64 generation with the tiny random-weight pipeline of raiiaf_diffusers, written by RaiiafCapture
    and read back: the scan's diffusers files are this record with the seed changed, written with rc.write.
    """
    try:
        from diffusers import EulerAncestralDiscreteScheduler

        from raiiaf_diffusers import RaiiafCapture, tiny
    except ImportError as exc:
        return f"not measured, diffusers is not installed ({exc})"
    pipe = tiny.tiny_sd()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    capture = RaiiafCapture(None)
    with capture.recording(pipe):
        pipe("a lighthouse on a cliff at dusk, volumetric light", negative_prompt="blurry", num_inference_steps=4,
             height=64, width=64, generator=torch.Generator().manual_seed(0), callback_on_step_end=capture)
    [path] = capture.last.write(folder / "diffusers_template.raiiaf")
    art = rc.open(path)
    return art.metadata, art.load_tensors("torch"), art.environment


def _write_scan_files(config: Config, folder: Path, v1: V1Library | None, v1_note: str) -> dict:
    """{reader: [paths]} for the same n generations; an entry is a reason instead where it has no files."""
    side, latent = config.scan_size
    folder.mkdir()
    variety = min(config.scan_files, config.images)
    images = [encode_png(photo_like(side, seed)) for seed in range(variety)]
    noises = [initial_noise(latent, seed).numpy() for seed in range(variety)]
    for k in range(variety):
        (folder / f"input_{k}.png").write_bytes(images[k])
        np.save(folder / f"input_{k}.npy", noises[k])
    environment = rc.capture_environment()
    template = diffusers_template(folder)
    files, v1_items = {PILLOW_SCAN: [], OURS_SCAN: [], DIFFUSERS_SCAN: []}, []
    for i in range(config.scan_files):
        k = i % variety
        prompt = comfy_prompt(i, side)
        workflow = comfy_workflow(prompt)
        # What SaveImage writes, with the chunks spliced in instead of re-encoding the same pixels n times.
        png_path = folder / f"ComfyUI_{i:05d}_.png"
        png_path.write_bytes(with_chunks(images[k], [text_chunk("prompt", json.dumps(prompt)),
                                                     text_chunk("workflow", json.dumps(workflow))]))
        files[PILLOW_SCAN].append(png_path)
        files[OURS_SCAN].append(rc.write(folder / f"ComfyUI_{i:05d}_.raiiaf", image=images[k],
                                         tensors={"noise": noises[k]}, environment=environment,
                                         metadata=comfy_metadata(i, side, prompt, workflow)))
        if not isinstance(template, str):
            metadata, tensors, captured_environment = template
            files[DIFFUSERS_SCAN].append(rc.write(folder / f"diffusers_{i:05d}.raiiaf", image=images[k],
                                                  tensors=tensors, environment=captured_environment,
                                                  metadata={**metadata, "seed": i}))
        v1_items.append({"png": str(folder / f"input_{k}.png"), "tensor": str(folder / f"input_{k}.npy"),
                         "out": str(folder / f"v1_{i:05d}.raiiaf"), "compress": False,
                         "fields": v1_fields(generation_record(i, side),
                                             {"comfyui": {"prompt": prompt, "workflow": workflow}})})
    if isinstance(template, str):
        files[DIFFUSERS_SCAN] = template
    if v1 is None:
        files[V1_SCAN] = f"not measured, {v1_note}"
    else:
        try:
            failed = [a["error"] for a in v1.call({"op": "write", "items": v1_items})["results"] if "error" in a]
            files[V1_SCAN] = f"writing its files failed, {failed[0]}" if failed else [Path(i["out"]) for i in v1_items]
        except V1Error as exc:
            files[V1_SCAN] = str(exc)
    return files


def run_latent_load(config: Config, files: dict) -> None:
    latent = files["latent"]
    header(f"Latent load: one (1,4,{latent},{latent}) float32 tensor as torch; median [min-max] over "
           f"{config.repeats} paired runs of {config.load_count} loads")

    def baseline():
        return safetensors.torch.load_file(files["safetensors"])["noise"]

    def ours():
        return rc.open(files["raiiaf"]).load_tensor("noise", "torch")

    assert torch.equal(baseline(), ours())
    load = paired(baseline, ours, config.repeats, count=config.load_count)
    for line in table([
        ("safetensors.torch.load_file (sidecar)", load.baseline.scaled(1e6).format("{:.0f}", " us")),
        ("rc.open(p).load_tensor('noise', 'torch')", load.candidate.scaled(1e6).format("{:.0f}", " us")),
        ("ratio, wall clock", load.ratio.format("{:.2f}")),
        ("ratio, process CPU time", load.cpu_ratio.format("{:.2f}")),
    ]):
        print(line)
    print("  raiiaf checks the chunk's sha256 and the safetensors header against the index on every load")
