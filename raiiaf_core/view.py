"""One picture of a .raiiaf file, to look at what it holds instead of reading `raiiaf inspect`.

From top to bottom: the stored image next to a caption (model, seed, sampler, steps, cfg, environment); the
initial noise and the final latents, channel by channel; the sigma schedule of every run as a plot; the step
latents as a strip. Only what the file holds is drawn, nothing is computed (diffusers files store no sigmas, so
they get no schedule: the caption lists what the file does not hold). numpy and Pillow only.

Bounded for hostile files: a tensor is read only when its real bytes are under MAX_TENSOR_BYTES; it is then
viewed in place (np.frombuffer on the checked blob) and sampled with strides down to the tile size, so the
work follows the pixels drawn, not the shape the file declares. At most MAX_CHANNELS channels, MAX_STEPS steps
and MAX_RUNS runs are drawn, and the image is decoded only under MAX_IMAGE_PIXELS. Text from the file is drawn
as text, cut to the picture's width. A part that cannot be read (damaged) is drawn as a note and listed in
View.problems; the rest of the picture is drawn all the same.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .report import environment_headline
from .errors import RaiiafError

WIDTH = 1024
MARGIN = 12
GAP = 6
TILE = 96  # one channel of a latent
IMAGE_BOX = 320  # the stored image is fitted into a square this size
PLOT_HEIGHT = 220
MAX_CHANNELS = 16
MAX_STEPS = 12
MAX_RUNS = 8
MAX_TENSOR_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 40_000_000
MAX_TEXT = 400  # characters of one caption value considered before it is cut to the width

BACKGROUND = (30, 30, 33)
TEXT = (228, 228, 228)
DIM = (150, 150, 156)
TITLE = (150, 196, 255)
NOTE = (255, 190, 90)
NON_FINITE = (230, 40, 40)
RUN_COLORS = ((90, 170, 255), (255, 150, 60), (110, 210, 120), (240, 90, 160), (200, 200, 90), (170, 120, 255),
              (90, 220, 220), (220, 220, 220))

# Tensors the plugins store after sampling: raiiaf_diffusers' final_latents, raiiaf_nodes' latent.
FINAL_LATENT_NAMES = ("final_latents", "latent")
_STEP_LATENT = re.compile(r"step_latents\.(\d+)")
# How each stored dtype is viewed in place; the three numpy has no type for are decoded from their bits.
_RAW_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2",
    "int8": "i1", "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1", "bool": "?",
    "bfloat16": "<u2", "float8_e4m3fn": "u1", "float8_e5m2": "u1",
}


def _e4m3fn_values() -> np.ndarray:
    code = np.arange(256)
    exponent, mantissa = (code >> 3) & 0xF, (code & 7) / 8.0
    value = np.where(exponent == 0, mantissa * 2.0**-6, (1 + mantissa) * 2.0 ** (exponent - 7))
    value[(code & 0x7F) == 0x7F] = np.nan  # e4m3fn has no infinities, one NaN per sign
    return np.where(code & 0x80, -value, value)


_E4M3FN = _e4m3fn_values()


def _to_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A small sampled piece of a tensor as float64 (the whole tensor is never converted)."""
    with np.errstate(invalid="ignore"):  # NaN bit patterns become NaN, which is what gets drawn
        if dtype == "bfloat16":
            return (raw.astype("<u4") << 16).view("<f4").astype(np.float64)
        if dtype == "float8_e5m2":
            return (raw.astype("<u2") << 8).view("<f2").astype(np.float64)
        if dtype == "float8_e4m3fn":
            return _E4M3FN[raw]
        return raw.astype(np.float64)


@dataclass(frozen=True)
class Panel:
    """Where one part of the picture is: `box` is (left, top, right, bottom); `parts` the tiles or plotted runs."""

    name: str  # image, caption, noise, final_latents, sigmas, step_latents
    box: tuple
    title: str = ""
    parts: tuple = ()  # (label, box) per channel tile, per step tile, or per run (its legend entry)


@dataclass
class View:
    """The picture of a file and what is where in it."""

    image: Image.Image
    panels: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)  # parts that could not be read, with raiiaf_core's message

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, format="PNG", compress_level=6)
        return out.getvalue()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


class _Text:
    """Drawing text from a file: printable characters only, cut to a width."""

    def __init__(self):
        self.font, self.small = _font(14), _font(12)
        self.line, self.small_line = 19, 16
        # The bitmap fallback font can only encode Latin-1.
        self.latin1 = not isinstance(self.font, ImageFont.FreeTypeFont)
        self._measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def clean(self, value) -> str:
        text = "".join(ch if ch.isprintable() else " " for ch in str(value)[:MAX_TEXT])
        return text.encode("latin-1", "replace").decode("latin-1") if self.latin1 else text

    def fit(self, value, width: int, font=None) -> str:
        font = font or self.font
        text = self.clean(value)
        if self._measure.textlength(text, font=font) <= width:
            return text
        low, high = 0, len(text)
        while low < high:  # the longest prefix that fits with the ellipsis
            mid = (low + high + 1) // 2
            if self._measure.textlength(text[:mid] + "...", font=font) <= width:
                low = mid
            else:
                high = mid - 1
        return text[:low] + "..."


def _object(value) -> dict:
    # The reader does not enforce the schema: a file from another writer may hold anything here.
    return value if isinstance(value, dict) else {}


class _Reader:
    """Tensors of one file, checked and viewed in place, with the reasons those not drawn were not."""

    def __init__(self, art, problems: list):
        self.art, self.problems = art, problems
        self.names = set(art.tensor_names)

    def raw(self, name: str):
        """(the tensor viewed in place on its checked blob, None), or (None, why it is not drawn)."""
        info = self.art.tensor_info(name)
        # An index dtype this reader does not know is damage, which the checked read below reports.
        if info.dtype in _RAW_DTYPES and info.nbytes > MAX_TENSOR_BYTES:
            return None, f"{name} not drawn: {info.nbytes:,} bytes, over the view's limit of {MAX_TENSOR_BYTES:,}"
        try:
            payload = self.art.tensor_bytes(name)
        except RaiiafError as exc:
            self.problems.append(str(exc))
            return None, f"{name} not drawn: it could not be read (see the caption)"
        data = np.frombuffer(payload, dtype=_RAW_DTYPES[info.dtype], count=math.prod(info.shape),
                             offset=len(payload) - info.nbytes)
        return data.reshape(info.shape), None


def _batch_index(meta: dict) -> int:
    index = _object(meta.get("batch")).get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else 0


def _planes(array: np.ndarray, batch: int):
    """(label, 2-D view) per channel, at most MAX_CHANNELS, and how many channels there are in all.

    Rank >= 4 is (batch, channels..., height, width): the file's own batch element is shown, every index of
    the dimensions between batch and height is a channel. Rank 3 is (channels, height, width).
    """
    if array.ndim <= 2:
        return [("", array.reshape((1, -1)) if array.ndim < 2 else array)], 1
    if array.ndim >= 4:
        array = array[batch if batch < array.shape[0] else 0]
    leading = array.shape[:-2]
    planes = [(f"c{','.join(map(str, i))}", array[i]) for i in itertools.islice(np.ndindex(leading), MAX_CHANNELS)]
    return planes, math.prod(leading)


def _sample(plane: np.ndarray, dtype: str, size: int = TILE) -> np.ndarray:
    """A plane strided down to at most size x size values, as float64."""
    sy, sx = max(1, -(-plane.shape[0] // size)), max(1, -(-plane.shape[1] // size))
    return _to_float(np.ascontiguousarray(plane[::sy, ::sx]), dtype)


def _range(values) -> tuple:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.empty(0)
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(x) for x in np.percentile(finite, [0.5, 99.5]))
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def _tile(values: np.ndarray, low: float, high: float, box: int = TILE) -> Image.Image:
    """Gray values scaled from [low, high], non-finite ones in red, enlarged to fit a box x box square."""
    with np.errstate(all="ignore"):
        scaled = np.nan_to_num((values - low) / (high - low), nan=0.0, posinf=1.0, neginf=0.0)
    rgb = np.repeat((np.clip(scaled, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[~np.isfinite(values)] = NON_FINITE
    return _fit_into(Image.fromarray(rgb), box, box, Image.NEAREST)


def _fit_into(im: Image.Image, width: int, height: int, resample) -> Image.Image:
    scale = min(width / im.width, height / im.height)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)


@dataclass
class _Section:
    """One horizontal band of the picture: its height, and how to draw it at a given top."""

    height: int
    paint: object  # (canvas, draw, top) -> list of Panel


class _Renderer:
    def __init__(self, art):
        self.art, self.meta = art, art.metadata
        self.text = _Text()
        self.problems: list = []
        self.tensors = _Reader(art, self.problems)
        self.batch = _batch_index(self.meta)
        self.missing: list = []

    def run(self) -> View:
        body = [self.noise(), self.final_latents(), self.sigmas(), self.step_latents()]
        # The header comes last: its caption lists what the file lacks and what could not be read.
        sections = [self.header(), *(s for s in body if s is not None)]
        canvas = Image.new("RGB", (WIDTH, MARGIN + sum(s.height + MARGIN for s in sections)), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        panels, top = {}, MARGIN
        for section in sections:
            panels.update((p.name, p) for p in section.paint(canvas, draw, top))
            top += section.height + MARGIN
        return View(canvas, panels, self.problems)

    # -- drawing helpers -------------------------------------------------------------------------------

    def title(self, draw, top: int, text: str) -> int:
        draw.text((MARGIN, top), self.text.fit(text, WIDTH - 2 * MARGIN), fill=TITLE, font=self.text.font)
        return top + self.text.line

    def noted(self, name: str, title: str, note: str) -> _Section:
        """A panel that only says why its content is not drawn."""
        def paint(canvas, draw, top):
            y = self.title(draw, top, title)
            draw.text((MARGIN, y), self.text.fit(note, WIDTH - 2 * MARGIN, self.text.small), fill=NOTE,
                      font=self.text.small)
            return [Panel(name, (MARGIN, top, WIDTH - MARGIN, y + self.text.small_line), title)]

        return _Section(self.text.line + self.text.small_line, paint)

    # -- header: image and caption ---------------------------------------------------------------------

    def picture(self):
        """(the stored image fitted into IMAGE_BOX, None) or (None, why it is not drawn)."""
        if not self.art.has_image:
            return None, None
        try:
            with Image.open(io.BytesIO(self.art.image_bytes())) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    return None, f"image not drawn: {im.width}x{im.height} is over {MAX_IMAGE_PIXELS:,} pixels"
                im.draft("RGB", (IMAGE_BOX, IMAGE_BOX))  # JPEG decodes at a reduced size
                rgb = im.convert("RGB")
        except RaiiafError as exc:
            self.problems.append(str(exc))
            return None, "image not drawn (see below)"
        except Exception as exc:  # Pillow's own errors on image bytes it cannot decode
            self.problems.append(f"{self.art.name}: the stored image could not be decoded ({exc})")
            return None, "image not drawn (see below)"
        return _fit_into(rgb, IMAGE_BOX, IMAGE_BOX, Image.LANCZOS), None

    def caption(self) -> list:
        meta = self.meta
        model = _object(meta.get("model"))
        version = ".".join(map(str, self.art.version))
        lines = [(f"{os.path.basename(self.art.name)}  (raiiaf {version})", TEXT),
                 (f"model: {model.get('name') or model.get('id') or model.get('path') or 'not recorded'}", TEXT)]
        settings = [f"{label} {meta[key]}" for label, key in (("seed", "seed"), ("sampler", "sampler"),
                                                               ("scheduler", "scheduler"), ("steps", "steps"),
                                                               ("cfg", "guidance_scale")) if key in meta]
        lines.append((", ".join(settings) or "settings: not recorded", TEXT))
        facts = []
        if "width" in meta and "height" in meta:
            facts.append(f"{meta['width']}x{meta['height']}")
        batch = _object(meta.get("batch"))
        if batch:
            facts.append(f"image {batch.get('index')} of a batch of {batch.get('size')}")
        if _object(meta.get("noise")).get("source"):
            facts.append(f"noise {meta['noise']['source']}")
        generator = _object(meta.get("generator"))
        if generator.get("name"):
            facts.append(f"written by {generator['name']} {generator.get('version') or ''}".rstrip())
        if facts:
            lines.append((", ".join(map(str, facts)), TEXT))
        for label, key in (("prompt", "prompt"), ("negative", "negative_prompt")):
            if meta.get(key):
                lines.append((f"{label}: {meta[key]}", DIM))
        lines.append((f"environment: {environment_headline(self.art.environment)}", TEXT))
        if self.missing:
            lines.append(("not in this file: " + ", ".join(self.missing), DIM))
        return lines

    def header(self) -> _Section:
        picture, note = self.picture()
        lines = self.caption()
        lines += [(note, NOTE)] if note else []
        lines += [(p, NOTE) for p in self.problems]
        left = MARGIN + picture.width + 2 * MARGIN if picture is not None else MARGIN
        width = WIDTH - MARGIN - left

        def paint(canvas, draw, top):
            panels = []
            if picture is not None:
                canvas.paste(picture, (MARGIN, top))
                panels.append(Panel("image", (MARGIN, top, MARGIN + picture.width, top + picture.height), "image"))
            y = top
            for line, color in lines:
                draw.text((left, y), self.text.fit(line, width), fill=color, font=self.text.font)
                y += self.text.line
            panels.append(Panel("caption", (left, top, WIDTH - MARGIN, y), "caption"))
            return panels

        return _Section(max(picture.height if picture is not None else 0, len(lines) * self.text.line), paint)

    # -- channel grids ---------------------------------------------------------------------------------

    def noise(self):
        name = _object(self.meta.get("noise")).get("tensor")
        if not (isinstance(name, str) and name in self.tensors.names):
            runs = self.meta.get("runs") if isinstance(self.meta.get("runs"), list) else []
            name = _object(runs[0]).get("noise") if runs else None
        if isinstance(name, str) and name in self.tensors.names:
            return self.grid("noise", "initial noise", name)
        self.missing.append("initial noise")
        return None

    def final_latents(self):
        name = next((n for n in FINAL_LATENT_NAMES if n in self.tensors.names), None)
        if name is not None:
            return self.grid("final_latents", "final latents", name)
        self.missing.append("final latents")
        return None

    def grid(self, name: str, label: str, tensor: str) -> _Section:
        info = self.art.tensor_info(tensor)
        title = f"{label}: {tensor}  {info.dtype} {tuple(info.shape)}"
        raw, why = self.tensors.raw(tensor)
        if raw is None or raw.size == 0:
            return self.noted(name, title, why or f"{tensor} is empty: nothing to draw")
        planes, total = _planes(raw, self.batch)
        samples = [(lab, _sample(plane, info.dtype)) for lab, plane in planes]
        low, high = _range([values for _, values in samples])
        details = [f"gray from {low:.3g} to {high:.3g}"]
        if raw.ndim >= 4:
            details.append(f"batch element {self.batch if self.batch < raw.shape[0] else 0} of {raw.shape[0]}")
        if total > len(planes):
            details.append(f"first {len(planes)} of {total} channels")
        if not all(np.isfinite(values).all() for _, values in samples):
            details.append("non-finite values in red")
        title += "   (" + ", ".join(details) + ")"
        per_row = (WIDTH - 2 * MARGIN + GAP) // (TILE + GAP)
        cell = TILE + self.text.small_line + GAP
        height = self.text.line + -(-len(samples) // per_row) * cell

        def paint(canvas, draw, top):
            y, parts = self.title(draw, top, title), []
            for i, (lab, values) in enumerate(samples):
                x, ty = MARGIN + (i % per_row) * (TILE + GAP), y + (i // per_row) * cell
                tile = _tile(values, low, high)
                canvas.paste(tile, (x, ty))
                parts.append((lab, (x, ty, x + tile.width, ty + tile.height)))
                draw.text((x, ty + TILE + 1), lab, fill=DIM, font=self.text.small)
            return [Panel(name, (MARGIN, top, WIDTH - MARGIN, top + height), title, tuple(parts))]

        return _Section(height, paint)

    # -- sigma schedule ----------------------------------------------------------------------------------

    def sigma_runs(self) -> list:
        """(legend label, tensor name) of each run whose sigmas the file holds."""
        runs = self.meta.get("runs") if isinstance(self.meta.get("runs"), list) else []
        found = []
        for i, run in enumerate(map(_object, runs)):
            name = run.get("sigmas")
            if isinstance(name, str) and name in self.tensors.names:
                sampler = run.get("sampler_name") or run.get("sampler") or "?"
                found.append((f"run {i}: {sampler}, {run.get('scheduler') or '?'}", name))
        if not runs and "sigmas" in self.tensors.names:
            found.append(("sigmas", "sigmas"))
        return found

    def sigmas(self):
        runs = self.sigma_runs()
        if not runs:
            self.missing.append("sigma schedule")
            return None
        title = "sigma schedule" + (f" (first {MAX_RUNS} of {len(runs)} runs)" if len(runs) > MAX_RUNS else "")
        left, right = MARGIN + 64, WIDTH - MARGIN - 8
        series, notes = [], []
        for label, name in runs[:MAX_RUNS]:
            raw, why = self.tensors.raw(name)
            if raw is None:
                notes.append(why)
                continue
            flat = raw.reshape(-1)
            stride = max(1, -(-flat.size // (4 * (right - left))))  # a few points per pixel at most
            steps = np.arange(0, flat.size, stride)
            values = _to_float(np.ascontiguousarray(flat[::stride]), self.art.tensor_info(name).dtype)
            finite = np.isfinite(values)
            if finite.any():
                series.append((f"{label} ({flat.size} values)", steps[finite], values[finite], flat.size))
            else:
                notes.append(f"{name} holds no finite value")
        if not series:
            return self.noted("sigmas", title, "; ".join(notes))
        low = min(0.0, min(float(v.min()) for _, _, v, _ in series))
        high = max(float(v.max()) for _, _, v, _ in series)
        high = high if high > low else low + 1.0
        last = max(max(n for *_, n in series) - 1, 1)
        height = self.text.line + PLOT_HEIGHT

        def paint(canvas, draw, top):
            y = self.title(draw, top, title)
            plot_top, bottom = y + 6, top + height - 2 * self.text.small_line

            def at(step, sigma):
                with np.errstate(all="ignore"):
                    return (left + (right - left) * step / last,
                            bottom - (bottom - plot_top) * (sigma - low) / (high - low))

            draw.line((left, plot_top, left, bottom, right, bottom), fill=DIM, width=1)
            for k in range(5):
                value = low + (high - low) * k / 4
                ty = at(0, value)[1]
                draw.line((left - 4, ty, left, ty), fill=DIM)
                draw.text((MARGIN, ty - 7), f"{value:.3g}", fill=DIM, font=self.text.small)
            tick = 1 if last <= 10 else _nice_step(last / 10)
            for step in range(0, last + 1, tick):
                tx = at(step, low)[0]
                draw.line((tx, bottom, tx, bottom + 4), fill=DIM)
                draw.text((tx - 3, bottom + 5), str(step), fill=DIM, font=self.text.small)
            draw.text((right - 28, bottom + 5 + self.text.small_line), "step", fill=DIM, font=self.text.small)
            parts = []
            for i, (label, steps, values, _) in enumerate(series):
                color = RUN_COLORS[i % len(RUN_COLORS)]
                line = [at(s, v) for s, v in zip(steps.tolist(), values.tolist())]
                if len(line) > 1:
                    draw.line(line, fill=color, width=2)
                if len(line) <= 60:
                    for cx, cy in line:
                        draw.ellipse((cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5), fill=color)
                ly = plot_top + 2 + i * self.text.small_line
                draw.line((right - 330, ly + 7, right - 310, ly + 7), fill=color, width=3)
                draw.text((right - 304, ly), self.text.fit(label, 300, self.text.small), fill=TEXT,
                          font=self.text.small)
                parts.append((label, (right - 330, ly, right, ly + self.text.small_line)))
            if notes:
                draw.text((left + 8, bottom - self.text.small_line - 2),
                          self.text.fit("; ".join(notes), right - left - 16, self.text.small), fill=NOTE,
                          font=self.text.small)
            return [Panel("sigmas", (MARGIN, top, WIDTH - MARGIN, top + height), title, tuple(parts))]

        return _Section(height, paint)

    # -- step latents ------------------------------------------------------------------------------------

    def step_latents(self):
        stored = sorted((int(m.group(1)), n) for n in self.tensors.names if (m := _STEP_LATENT.fullmatch(n)))
        if not stored:
            self.missing.append("step latents")
            return None
        steps = stored
        if len(stored) > MAX_STEPS:  # evenly spread, always with the first and the last
            picks = np.linspace(0, len(stored) - 1, MAX_STEPS).round().astype(int)
            steps = [stored[i] for i in sorted(set(picks.tolist()))]
        title = "step latents (first three channels as red, green, blue)"
        if len(stored) > len(steps):
            title += f", {len(steps)} of {len(stored)} stored steps"
        size = min(TILE, (WIDTH - 2 * MARGIN + GAP) // len(steps) - GAP)
        tiles, notes = [], []
        for step, name in steps:
            raw, why = self.tensors.raw(name)
            if raw is None or raw.size == 0:
                notes.append(why or f"{name} is empty")
                continue
            planes, _ = _planes(raw, self.batch)
            channels = [_sample(plane, self.art.tensor_info(name).dtype, size) for _, plane in planes[:3]]
            low, high = _range(channels)
            gray = [np.asarray(_tile(c, low, high, size).convert("L")) for c in channels]
            rgb = np.stack(gray, axis=2) if len(gray) == 3 else np.repeat(gray[0][..., None], 3, axis=2)
            tiles.append((f"step {step}", Image.fromarray(rgb)))
        height = self.text.line + size + self.text.small_line + (self.text.small_line if notes else 0)

        def paint(canvas, draw, top):
            y, parts = self.title(draw, top, title), []
            for i, (label, tile) in enumerate(tiles):
                x = MARGIN + i * (size + GAP)
                canvas.paste(tile, (x, y))
                parts.append((label, (x, y, x + tile.width, y + tile.height)))
                draw.text((x, y + size + 1), label, fill=DIM, font=self.text.small)
            if notes:
                draw.text((MARGIN, y + size + self.text.small_line), self.text.fit(
                    "; ".join(notes), WIDTH - 2 * MARGIN, self.text.small), fill=NOTE, font=self.text.small)
            return [Panel("step_latents", (MARGIN, top, WIDTH - MARGIN, top + height), title, tuple(parts))]

        return _Section(height, paint)


def _nice_step(rough: float) -> int:
    """1, 2 or 5 times a power of ten, at least `rough`."""
    power = 10 ** math.floor(math.log10(rough))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= rough))


def render(art) -> View:
    """The picture of an open Artifact (rc.open(path)), where each panel is, and what could not be read."""
    return _Renderer(art).run()
