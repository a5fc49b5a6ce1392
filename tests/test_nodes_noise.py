"""Noise reconstruction (KSampler's prepare_noise rules) and the NOISE object fed back to samplers."""

import pytest
import torch

from raiiaf_core.errors import RaiiafError
from raiiaf_nodes.errors import NoiseShapeError
from raiiaf_nodes.noise import StoredNoise, reconstruct_noise


def comfy_rules(shape, seed, batch_index=None):
    """ComfyUI's documented behaviour, spelled out independently: reseed the global CPU generator, then
    either one draw of the whole shape, or one [1, ...] draw per index 0..max(batch_index), kept by index."""
    torch.manual_seed(seed)
    if batch_index is None:
        return torch.randn(shape, dtype=torch.float32)
    per_index = [torch.randn([1, *shape[1:]], dtype=torch.float32) for _ in range(max(batch_index) + 1)]
    return torch.cat([per_index[i] for i in batch_index])


@pytest.mark.parametrize("shape", [[1, 4, 8, 8], [3, 4, 16, 12], [2, 16, 8, 8]])
@pytest.mark.parametrize("seed", [0, 42, 2**63 + 12345])
def test_whole_batch_matches_comfy_rules(shape, seed):
    assert torch.equal(reconstruct_noise(shape, seed), comfy_rules(shape, seed))


@pytest.mark.parametrize("batch_index", [[0], [3], [2, 5], [4, 1, 4], [0, 1, 2, 3]])
def test_batch_index_matches_comfy_rules(batch_index):
    shape = [len(batch_index), 4, 8, 8]
    got = reconstruct_noise(shape, 1234, batch_index)
    assert got.shape == torch.Size(shape)
    assert torch.equal(got, comfy_rules(shape, 1234, batch_index))


def test_reconstruction_leaves_the_global_generator_alone():
    torch.manual_seed(99)
    expected = torch.randn(5)
    torch.manual_seed(99)
    reconstruct_noise([2, 4, 8, 8], 3, [1, 0])
    assert torch.equal(torch.randn(5), expected)


def test_stored_noise_gives_a_copy_of_the_stored_tensor_and_the_seed():
    noise = torch.randn(2, 4, 8, 8)
    stored = StoredNoise(noise, 123)
    out = stored.generate_noise({"samples": torch.zeros(2, 4, 8, 8), "batch_index": [5, 6]})
    assert torch.equal(out, noise) and out.dtype == noise.dtype
    out.add_(1)  # samplers may work in place; the stored noise must stay as stored
    assert torch.equal(stored.generate_noise({"samples": torch.zeros(2, 4, 8, 8)}), noise)
    assert stored.seed == 123


def test_stored_noise_refuses_a_latent_of_another_shape():
    stored = StoredNoise(torch.randn(1, 4, 8, 8), 1)
    with pytest.raises(NoiseShapeError, match=r"stored noise has shape \[1, 4, 8, 8\].*\[1, 4, 8, 16\]") as info:
        stored.generate_noise({"samples": torch.zeros(1, 4, 8, 16)})
    assert isinstance(info.value, RaiiafError)
