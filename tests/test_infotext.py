"""A1111 infotext (raiiaf_core/infotext.py): written from a file's metadata the way A1111 writes it, read the way
A1111's PNG Info and Civitai read it."""

import pytest

from raiiaf_core import infotext

SHA = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
LORA = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f"


def test_a_comfyui_file_gives_a1111_names_hashes_and_loras():
    meta = {"prompt": "a fox, in snow", "negative_prompt": "blurry", "steps": 30, "sampler": "dpmpp_2m_sde_gpu",
            "scheduler": "sgm_uniform", "guidance_scale": 5.5, "seed": 2**64 - 1, "width": 832, "height": 1216,
            "strength": 1.0,
            "model": {"name": "SDXL/juggernautXL_v9.safetensors", "sha256": SHA,
                      "files": [{"role": "checkpoint", "name": "SDXL/juggernautXL_v9.safetensors", "sha256": SHA},
                                {"role": "lora", "name": "detail, tweaker.safetensors", "sha256": LORA},
                                {"role": "lora", "name": "unhashed.safetensors", "sha256": None}]}}
    assert infotext.build(meta) == (
        "a fox, in snow\nNegative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M SDE, Schedule type: SGM Uniform, CFG scale: 5.5, Seed: 18446744073709551615, "
        "Size: 832x1216, Model hash: 31e35c80fc, Model: juggernautXL_v9, "
        'Lora hashes: "detail, tweaker: f0e1d2c3b4"')


@pytest.mark.parametrize("sampler, settings, expected", [
    ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    ("DPMSolverSDEScheduler", {}, "DPM++ SDE"),
    ("UniPCMultistepScheduler", {}, "UniPC"),
    ("FlowMatchEulerDiscreteScheduler", {}, "Euler"),
    ("euler_ancestral", {}, "Euler a"),
    ("res_multistep", {}, "res_multistep"),  # no A1111 equivalent: the recorded name
])
def test_sampler_names(sampler, settings, expected):
    meta = {"sampler": sampler, "sampler_settings": settings, "steps": 4}
    assert f"Sampler: {expected}" in infotext.build(meta)


def test_img2img_strength_and_a_diffusers_model_without_a_file_hash():
    text = infotext.build({"prompt": "p", "strength": 0.6, "model": {"id": "stabilityai/sdxl-turbo"}},
                          size=(512, 512))
    assert text == "p\nSize: 512x512, Model: sdxl-turbo, Denoising strength: 0.6"


def test_nothing_to_say_gives_none():
    assert infotext.build({"width": 8, "height": 8}) is None


def test_what_build_writes_parses_back():
    meta = {"prompt": "line one\nline two", "negative_prompt": "bad: hands, blurry", "steps": 20,
            "sampler": "euler", "scheduler": "karras", "guidance_scale": 7.0, "seed": 42, "width": 64, "height": 64}
    prompt, negative, fields = infotext.parse(infotext.build(meta))
    assert (prompt, negative) == ("line one\nline two", "bad: hands, blurry")
    assert fields == {"Steps": "20", "Sampler": "Euler", "Schedule type": "Karras", "CFG scale": "7.0", "Seed": "42",
                      "Size": "64x64"}


def test_an_a1111_infotext_is_read_into_metadata():
    text = ("masterpiece, <lora:add_detail:0.8> a castle\n"
            "Negative prompt: lowres, (worst quality:1.4)\n"
            "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 123456, Size: 512x768, Model hash: 6ce0161689, "
            'Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Hires upscale: 2, Lora hashes: "add_detail: '
            '7c6bad76eb54", Version: v1.10.1')
    assert infotext.metadata_of(text) == {
        "prompt": "masterpiece, <lora:add_detail:0.8> a castle", "negative_prompt": "lowres, (worst quality:1.4)",
        "sampler": "DPM++ 2M", "scheduler": "Karras", "steps": 28, "seed": 123456, "guidance_scale": 6.5,
        "strength": 0.45, "width": 512, "height": 768, "model": {"name": "v1-5-pruned-emaonly"}}
    assert infotext.parse(text)[2]["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert infotext.parse(text)[2]["Version"] == "v1.10.1"


def test_values_that_do_not_parse_are_left_out():
    meta = infotext.metadata_of("a\nSteps: many, Seed: 1e9, CFG scale: nan, Size: big, Sampler: Euler")
    assert meta == {"prompt": "a", "sampler": "Euler"}


def test_a_prompt_alone_is_the_prompt():
    assert infotext.parse("just a prompt, with commas") == ("just a prompt, with commas", "", {})
