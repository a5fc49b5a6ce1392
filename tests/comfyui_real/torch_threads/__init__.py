"""A custom node package with no nodes, for the real-ComfyUI tests: it sets torch's thread count from
RAIIAF_TEST_TORCH_THREADS when ComfyUI loads it, so one server computes with another thread count than the other
(OMP_NUM_THREADS would not do: it also changes how OpenMP starts, which torch.set_num_threads cannot undo)."""

import os

import torch

if os.environ.get("RAIIAF_TEST_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["RAIIAF_TEST_TORCH_THREADS"]))

NODE_CLASS_MAPPINGS = {}
