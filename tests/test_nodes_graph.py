"""Reading the API-format graph: upstream nodes, signatures, prompt texts, model files, sampler settings."""

import copy
import json
from pathlib import Path

import pytest

from raiiaf_nodes.graph import Graph

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture
def capture_api():
    return json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())


def test_ancestors_come_sources_first(capture_api):
    graph = Graph(capture_api)
    order = graph.ancestors("9")
    assert set(order) == {"3", "4", "5", "6", "7", "8", "10"}
    for user, source in (("3", "10"), ("3", "6"), ("10", "4"), ("8", "3")):
        assert order.index(source) < order.index(user)
    assert graph.ancestors("4") == []


def test_signature_ignores_node_ids_but_not_settings(capture_api):
    graph = Graph(capture_api)
    renamed = json.loads(json.dumps(capture_api).replace('"3"', '"33"').replace('"10"', '"110"'))
    assert Graph(renamed).signature("33") == graph.signature("3")
    changed = copy.deepcopy(capture_api)
    changed["6"]["inputs"]["text"] = "another prompt"
    assert Graph(changed).signature("3") != graph.signature("3")
    # A change downstream of the sampler (the save node) does not change the sampler's signature.
    changed = copy.deepcopy(capture_api)
    changed["9"]["inputs"]["tags"] = "other"
    assert Graph(changed).signature("3") == graph.signature("3")


def test_prompt_texts_of_a_ksampler(capture_api):
    positive, negative = Graph(capture_api).prompt_texts("3")
    assert positive == capture_api["6"]["inputs"]["text"]
    assert negative == capture_api["7"]["inputs"]["text"]


def test_prompt_texts_through_a_guider_and_a_controlnet():
    graph = Graph({
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": "pos", "clip": ["9", 1]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "neg", "clip": ["9", 1]}},
        "3": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["1", 0], "negative": ["2", 0],
                                                                  "control_net": ["8", 0], "image": ["7", 0]}},
        "4": {"class_type": "CFGGuider", "inputs": {"positive": ["3", 0], "negative": ["3", 1], "cfg": 5.0}},
        "5": {"class_type": "SamplerCustomAdvanced", "inputs": {"guider": ["4", 0], "noise": ["6", 0]}},
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 77}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}},
        "8": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "pose.safetensors"}},
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {"class_type": "BasicGuider", "inputs": {"conditioning": ["1", 0]}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {"guider": ["10", 0]}},
    })
    assert graph.prompt_texts("5") == ("pos", "neg")
    assert graph.prompt_texts("11") == ("pos", None)
    assert graph.noise_settings("5") == {"seed": 77, "add_noise": True}
    assert graph.sampler_settings("5")["cfg"] == 5.0


def test_text_from_a_linked_string_node():
    graph = Graph({
        "1": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "from a string node"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["1", 0], "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"positive": ["2", 0], "negative": ["2", 0], "seed": 1}},
    })
    assert graph.prompt_texts("3") == ("from a string node", "from a string node")


def test_model_files_of_upstream_loaders():
    graph = Graph({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["1", 0]}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}},
        "4": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["2", 0]}},
    })
    assert graph.model_files(["1", "2", "3", "4"]) == [
        {"role": "checkpoint", "folder": "checkpoints", "name": "base.safetensors", "node_id": "1"},
        {"role": "lora", "folder": "loras", "name": "style.safetensors", "node_id": "2"},
        {"role": "vae", "folder": "vae", "name": "vae.safetensors", "node_id": "3"},
    ]


def test_noise_settings_and_latent_size_of_each_sampler_kind(capture_api):
    graph = Graph(capture_api)
    assert graph.noise_settings("3") == {"seed": 42, "add_noise": True}
    assert graph.latent_shape("3") == [1, 4, 64, 64]
    assert graph.sampler_settings("3") == {"class_type": "KSampler", "sampler_name": "euler_ancestral",
                                           "scheduler": "karras", "steps": 20, "denoise": 1.0, "cfg": 7.0}
    assert graph.noise_settings("9") is None
    other = Graph({
        "1": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "add_noise": "disable"}},
        "2": {"class_type": "SamplerCustom", "inputs": {"noise_seed": 6, "add_noise": True}},
        "3": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["4", 0]}},
        "4": {"class_type": "DisableNoise", "inputs": {}},
        "5": {"class_type": "KSampler", "inputs": {"seed": ["6", 0], "latent_image": ["7", 0]}},
        "6": {"class_type": "SomeSeedNode", "inputs": {"seed": 99}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 2}},
    })
    assert other.noise_settings("1") == {"seed": 5, "add_noise": False}
    assert other.noise_settings("2") == {"seed": 6, "add_noise": True}
    assert other.noise_settings("3") == {"seed": 0, "add_noise": False}
    assert other.noise_settings("5") == {"seed": 99, "add_noise": True}
    assert other.latent_shape("5") == [2, 16, 96, 128]
