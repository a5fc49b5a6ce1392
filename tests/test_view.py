"""The picture of a file (raiiaf_core.view, `raiiaf view`, Artifact.view): layout and content on files from both
plugins and from the core, and bounded work on hostile files."""

import io
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import raiiaf_core as rc
from raiiaf_core import view
from raiiaf_core.cli import main
from conftest import FIXED_ENV, png_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # bench/ is in the checkout, not in the installed package
from bench import fuzz  # noqa: E402

torch = pytest.importorskip("torch")
WORKFLOWS = ROOT / "workflows"
ALL_PANELS = {"image", "caption", "noise", "final_latents", "sigmas", "step_latents"}


def crop(picture: Image.Image, box) -> np.ndarray:
    return np.asarray(picture.crop(box).convert("RGB")).astype(int)


def tile_centres(picture: Image.Image, box, rows: int, cols: int) -> np.ndarray:
    """The gray value at the centre of each cell of a tile showing a rows x cols channel."""
    tile = crop(picture, box)[..., 0]
    h, w = tile.shape
    return np.array([[tile[int((r + 0.5) * h / rows), int((c + 0.5) * w / cols)] for c in range(cols)]
                     for r in range(rows)])


def assert_tiles_show(picture, panel, array: np.ndarray):
    """Each channel tile of `panel` is that channel of `array`, brighter where the values are larger."""
    channels = array.reshape(-1, *array.shape[-2:])
    assert [label for label, _ in panel.parts] == [f"c{i}" for i in range(len(channels))]
    for (label, box), channel in zip(panel.parts, channels):
        gray = tile_centres(picture, box, *channel.shape).ravel()
        assert np.corrcoef(gray, channel.ravel())[0, 1] > 0.95, label


def check_layout(v: view.View, panels: set):
    assert set(v.panels) == panels
    assert v.image.width == view.WIDTH
    boxes = sorted(p.box for p in v.panels.values() if p.name not in ("image", "caption"))
    tops = [b[1] for b in boxes]
    assert tops == sorted(tops) and all(b[3] <= v.image.height for b in boxes)
    for before, after in zip(boxes, boxes[1:]):  # the bands below the header do not overlap
        assert before[3] <= after[1]
    for panel in v.panels.values():
        for _, (left, top, right, bottom) in panel.parts:
            assert panel.box[0] <= left < right <= panel.box[2] and panel.box[1] <= top < bottom <= panel.box[3]


# -- a file from raiiaf_diffusers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusers_file(tmp_path_factory):
    pytest.importorskip("diffusers")
    from raiiaf_diffusers import RaiiafCapture, tiny

    pipe = tiny.tiny_sd()
    path = tmp_path_factory.mktemp("diffusers") / "cat.raiiaf"
    capture = RaiiafCapture(path, store_final_latents=True, step_latents_every=1)
    with capture.recording(pipe):
        pipe("a cat", **dict(tiny.CALL_ARGS["sd"], num_inference_steps=3), generator=torch.Generator().manual_seed(3),
             callback_on_step_end=capture)
    return path


def test_diffusers_file(diffusers_file):
    art = rc.open(diffusers_file)
    v = view.render(art)
    assert v.problems == []
    # diffusers files store no sigmas: no schedule is drawn, none is computed, the caption says so.
    check_layout(v, ALL_PANELS - {"sigmas"})
    image = art.image().convert("RGB")
    left, top, right, bottom = v.panels["image"].box
    assert (right - left, bottom - top) == (view.IMAGE_BOX, view.IMAGE_BOX)  # 64x64, enlarged to the box
    assert np.abs(crop(v.image, v.panels["image"].box) - np.asarray(image.resize((320, 320), Image.LANCZOS))).max() <= 1
    assert_tiles_show(v.image, v.panels["noise"], art.load_tensor("noise")[0])
    assert_tiles_show(v.image, v.panels["final_latents"], art.load_tensor("final_latents")[0])
    assert "noise  float32 (1, 4, 32, 32)" in v.panels["noise"].title
    assert [label for label, _ in v.panels["step_latents"].parts] == ["step 0", "step 1", "step 2"]
    # Step tiles: red, green and blue are the first three channels of that step's latents.
    (_, box) = v.panels["step_latents"].parts[2]
    step = art.load_tensor("step_latents.2")[0]
    tile = crop(v.image, box)
    rows, cols = step.shape[1:]
    for channel in range(3):
        centres = np.array([[tile[int((r + .5) * tile.shape[0] / rows), int((c + .5) * tile.shape[1] / cols), channel]
                             for c in range(cols)] for r in range(rows)])
        assert np.corrcoef(centres.ravel(), step[channel].ravel())[0, 1] > 0.95
    assert art.metadata["sampler"] == "DDIMScheduler"


# -- files from raiiaf_nodes -----------------------------------------------------------------------------------

def sample_euler():
    """Named like k-diffusion's sampler function, which is how a record names the sampler."""


def comfyui_file(tmp_path, *, hires: bool = True) -> Path:
    from raiiaf_nodes.capture import CaptureStore, make_run
    from raiiaf_nodes.noise import reconstruct_noise
    from raiiaf_nodes.save import SaveContext, save_images

    graph = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    store = CaptureStore()
    store.add(make_run(noise=reconstruct_noise([1, 4, 8, 8], 42), sigmas=torch.linspace(14.6, 0, 7), seed=42,
                       sampler_function=sample_euler, cfg=7.0, latent_image=torch.zeros(1, 4, 8, 8), prompt_id="p",
                       node_id="3"))
    if hires:
        graph["12"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "scale_by": 2.0}}
        graph["13"] = dict(graph["3"], inputs=dict(graph["3"]["inputs"], latent_image=["12", 0], seed=7))
        graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}}
        store.add(make_run(noise=reconstruct_noise([1, 4, 16, 16], 7), sigmas=torch.tensor([3.0, 1.5, 0.0]), seed=7,
                           sampler_function=sample_euler, cfg=7.0, latent_image=torch.randn(1, 4, 16, 16),
                           prompt_id="p", node_id="13"))
    ctx = SaveContext(output_dir=str(tmp_path), prompt=graph, extra_pnginfo={"workflow": {"nodes": []}}, node_id="9",
                      prompt_id="p")
    images = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = {"samples": torch.randn(1, 4, 16, 16)}
    (saved,) = save_images(images, "fox", ctx, latent=latent, store=store, environment=FIXED_ENV)
    return saved.path


def test_comfyui_file_with_two_runs(tmp_path):
    art = rc.open(comfyui_file(tmp_path))
    v = view.render(art)
    assert v.problems == []
    check_layout(v, ALL_PANELS - {"step_latents"})
    left, top, right, bottom = v.panels["image"].box
    assert (right - left, bottom - top) == (320, 240)  # 64x48: the aspect ratio is kept
    assert_tiles_show(v.image, v.panels["noise"], art.load_tensor("run0.noise")[0])
    assert_tiles_show(v.image, v.panels["final_latents"], art.load_tensor("latent")[0])
    assert [label for label, _ in v.panels["sigmas"].parts] == [
        "run 0: euler_ancestral, karras (7 values)", "run 1: euler_ancestral, karras (3 values)"]
    # Each run is drawn in its own colour, inside the plot.
    pixels = crop(v.image, v.panels["sigmas"].box).reshape(-1, 3)
    for colour in view.RUN_COLORS[:2]:
        assert (np.abs(pixels - colour).sum(axis=1) == 0).sum() > 50


def test_caption_names_settings_and_what_is_missing(tmp_path):
    art = rc.open(comfyui_file(tmp_path, hires=False))
    renderer = view._Renderer(art)
    v = renderer.run()
    lines = [line for line, _ in renderer.caption()]
    assert lines[0] == "fox_00001_.raiiaf  (raiiaf 2.0)"
    assert "seed 42, sampler euler_ancestral, scheduler karras, steps 6, cfg 7.0" in lines
    assert any(line.startswith("prompt: a watercolor painting") for line in lines)
    assert "environment: torch 2.13.0+cpu (CUDA none), no GPU, Python 3.11.7" in lines
    assert lines[-1] == "not in this file: step latents"
    assert v.panels["caption"].box[3] - v.panels["caption"].box[1] == len(lines) * renderer.text.line


# -- files with little in them -------------------------------------------------------------------------------

def test_file_without_tensors(tmp_path):
    path = rc.write(tmp_path / "plain.raiiaf", image=png_bytes(30, 20), tensors={}, metadata={"seed": 1},
                    environment={})
    v = view.render(rc.open(path))
    check_layout(v, {"image", "caption"})
    assert v.image.height == view.IMAGE_BOX * 20 // 30 + 2 * view.MARGIN
    renderer = view._Renderer(rc.open(path))
    renderer.run()
    assert renderer.missing == ["initial noise", "final latents", "sigma schedule", "step latents"]


def test_file_without_image_or_tensors(tmp_path):
    v = view.render(rc.open(rc.write(tmp_path / "bare.raiiaf", image=None, tensors={}, metadata={})))
    check_layout(v, {"caption"})
    assert v.panels["caption"].box[0] == view.MARGIN


def test_v1_file():
    art = rc.open(ROOT / "tests" / "data" / "v1" / "f32_raw.raiiaf")
    v = view.render(art)
    assert v.problems == [] and {"image", "caption"} <= set(v.panels)


# -- the same picture from Python and the command line ------------------------------------------------------

def test_artifact_view_repr_png_and_cli_give_the_same_picture(tmp_path, small_file, capsys):
    art = rc.open(small_file)
    picture = art.view()
    assert isinstance(picture, Image.Image) and picture.size[0] == view.WIDTH
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(art._repr_png_()))), np.asarray(picture))
    assert main(["view", str(small_file)]) == 0
    written = small_file.with_name("small.view.png")
    assert capsys.readouterr().out.strip() == str(written)
    assert np.array_equal(np.asarray(Image.open(written)), np.asarray(picture))
    assert main(["view", str(small_file), "-o", str(tmp_path / "elsewhere.png")]) == 0
    assert (tmp_path / "elsewhere.png").read_bytes() == written.read_bytes()


def test_cli_draws_what_it_can_of_a_damaged_file_and_exits_1(tmp_path, small_file, capsys):
    chunks, payloads = fuzz.split_v2(small_file.read_bytes())
    [i] = [i for i, c in enumerate(chunks) if c["name"] == "noise"]
    payloads[i] = payloads[i][:-4] + b"\0\0\xc0\x7f"  # the index still has the old hash: damaged
    damaged = tmp_path / "damaged.raiiaf"
    damaged.write_bytes(fuzz.assemble(chunks, payloads, rehash=False))
    assert main(["view", str(damaged), "-o", str(tmp_path / "d.png")]) == 1
    assert "tensor chunk 'noise' is damaged" in capsys.readouterr().err
    v = view.render(rc.open(damaged))
    assert "noise" in v.panels and v.panels["noise"].parts == ()  # a note instead of tiles
    assert {"image", "sigmas"} <= set(v.panels)
    assert Image.open(tmp_path / "d.png").size == v.image.size


def test_cli_view_of_a_missing_file(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.raiiaf")]) == 1
    assert "cannot read" in capsys.readouterr().err


# -- dtypes numpy has no type for ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_every_bit_pattern_of_torch_only_dtypes_reads_as_torch_reads_it(dtype):
    torch_dtype = getattr(torch, dtype)
    bits = torch.arange(2 ** (8 * torch_dtype.itemsize), dtype=torch.int32).to(
        torch.uint8 if torch_dtype.itemsize == 1 else torch.int16)
    expected = bits.view(torch_dtype).double().numpy()
    raw = bits.numpy().view(view._RAW_DTYPES[dtype])
    assert np.array_equal(view._to_float(raw, dtype), expected, equal_nan=True)


def test_bfloat16_noise_is_drawn(tmp_path):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    path = rc.write(tmp_path / "bf16.raiiaf", image=None, tensors={"noise": noise},
                    metadata={"noise": {"tensor": "noise", "source": "captured"}})
    v = view.render(rc.open(path))
    assert_tiles_show(v.image, v.panels["noise"], noise.float().numpy()[0])


# -- hostile files -------------------------------------------------------------------------------------------

def test_many_channels_are_cut_and_said(tmp_path):
    noise = np.random.default_rng(0).standard_normal((1, 100_000, 1, 1)).astype(np.float32)
    path = rc.write(tmp_path / "wide.raiiaf", image=None, tensors={"noise": noise},
                    metadata={"noise": {"tensor": "noise", "source": "captured"}})
    start = time.perf_counter()
    v = view.render(rc.open(path))
    assert time.perf_counter() - start < 5
    assert len(v.panels["noise"].parts) == view.MAX_CHANNELS
    assert f"first {view.MAX_CHANNELS} of 100000 channels" in v.panels["noise"].title


def test_a_large_tensor_is_sampled_in_place(tmp_path):
    noise = np.random.default_rng(0).standard_normal((1, 2, 1024, 1024)).astype(np.float32)  # 8 MiB
    path = rc.write(tmp_path / "big.raiiaf", image=None, tensors={"noise": noise},
                    metadata={"noise": {"tensor": "noise", "source": "captured"}})
    art = rc.open(path)
    tracemalloc.start()
    try:
        v = view.render(art)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < noise.nbytes + (8 << 20)  # the checked blob once, and a few MiB of picture
    assert [box[2] - box[0] for _, box in v.panels["noise"].parts] == [view.TILE, view.TILE]


def test_tensors_over_the_view_limit_are_not_read(tmp_path, monkeypatch):
    path = rc.write(tmp_path / "limit.raiiaf", image=None, tensors={"noise": np.ones((1, 4, 64, 64), np.float32)},
                    metadata={"noise": {"tensor": "noise", "source": "captured"}})
    monkeypatch.setattr(view, "MAX_TENSOR_BYTES", 1000)
    v = view.render(rc.open(path))
    assert v.problems == [] and v.panels["noise"].parts == ()
    renderer = view._Renderer(rc.open(path))
    assert renderer.tensors.raw("noise") == (None, "noise not drawn: 65,536 bytes, over the view's limit of 1,000")


def test_empty_zero_d_and_non_finite_tensors(tmp_path):
    values = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    values[0, 1, 2, 3], values[0, 2, 0, 0], values[0, 3, 7, 7] = np.nan, np.inf, -np.inf
    path = rc.write(tmp_path / "odd.raiiaf", image=None, tensors={
        "noise": values, "latent": np.zeros((1, 4, 0, 10**9), np.float32), "sigmas": np.array(np.nan, np.float32),
        "step_latents.0": np.array(1.0, np.float32)}, metadata={"noise": {"tensor": "noise", "source": "captured"}})
    v = view.render(rc.open(path))
    assert "non-finite values in red" in v.panels["noise"].title
    red = (crop(v.image, v.panels["noise"].parts[1][1]) == view.NON_FINITE).all(axis=2)
    assert red.sum() == (view.TILE // 8) ** 2  # exactly the one NaN cell
    assert v.panels["final_latents"].parts == ()  # empty: a note
    assert v.panels["sigmas"].parts == ()  # no finite value: a note
    assert len(v.panels["step_latents"].parts) == 1


def test_hostile_metadata_and_text(tmp_path, small_file):
    chunks, payloads = fuzz.split_v2(small_file.read_bytes())
    [i] = [i for i, c in enumerate(chunks) if c["type"] == "metadata"]
    payloads[i] = json.dumps({
        "prompt": "<b>x</b>\u202e\x00\x1b[31m" + "fox " * 5000, "model": 5, "batch": {"index": True},
        "noise": "noise", "runs": [7, {"sigmas": "sigmas", "sampler": {"a": 1}}, {"sigmas": ["x"]},
                                    {"sigmas": "not there"}], "seed": "<script>", "generator": [1]}).encode()
    chunks[i]["codec"] = "none"
    hostile = fuzz.assemble(chunks, payloads)
    v = view.render(rc.open(io.BytesIO(hostile)))
    assert v.problems == [] and v.image.width == view.WIDTH
    assert len(v.panels["sigmas"].parts) == 1  # the one run naming a stored tensor
    assert "noise" not in v.panels  # metadata.noise is not an object and no run names one


def test_fuzzed_files_end_in_a_picture_or_a_raiiaf_error(tmp_path):
    seeds = fuzz.make_seeds(tmp_path / "seeds")
    outcomes = {"picture": 0, "error": 0}
    for index in range(400):
        _, data, limits = fuzz.generate(3, index, seeds)
        start = time.perf_counter()
        try:
            view.render(rc.open(io.BytesIO(data), limits=rc.Limits(**limits)))
            outcomes["picture"] += 1
        except rc.RaiiafError:
            outcomes["error"] += 1
        assert time.perf_counter() - start < 10, index
    assert outcomes["picture"] > 20 and outcomes["error"] > 20


def test_an_index_dtype_the_reader_does_not_know_is_a_problem_not_a_crash(small_file):
    chunks, payloads = fuzz.split_v2(small_file.read_bytes())
    [i] = [i for i, c in enumerate(chunks) if c["name"] == "noise"]
    chunks[i]["dtype"] = "complex32"
    v = view.render(rc.open(io.BytesIO(fuzz.assemble(chunks, payloads))))
    assert v.problems == ["<stream>: tensor chunk 'noise': safetensors header disagrees with the index"]
    assert v.panels["noise"].parts == () and "sigmas" in v.panels
