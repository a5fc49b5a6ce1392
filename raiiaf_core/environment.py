"""Capture the software/hardware environment, including the torch switches that change pixels."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata as importlib_metadata

ENVIRONMENT_SCHEMA = 1
PACKAGES = ("raiiaf-plugins", "numpy", "safetensors", "pillow", "zstandard", "torch", "diffusers", "transformers",
            "accelerate", "torchsde", "xformers")
ENV_VARS = ("CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "NVIDIA_TF32_OVERRIDE")


def capture_environment() -> dict:
    """The environment of this process now. Imports torch if it is installed (its settings decide pixels)."""
    env = dict(_static_environment())
    env["env_vars"] = {name: os.environ.get(name) for name in ENV_VARS}
    torch = _import_torch()
    if torch is not None:
        env["torch"] = {**env["torch"], "num_threads": torch.get_num_threads()}
        env["determinism"] = _determinism(torch)
    return env


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict:
    # Versions and hardware don't change while a process runs; capturing them once keeps saves fast.
    env = {
        "schema_version": ENVIRONMENT_SCHEMA,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "os": {"system": platform.system(), "release": platform.release(), "version": platform.version(),
               "machine": platform.machine()},
        "cpu": {"model": _cpu_model(), "count": os.cpu_count()},
        "packages": {name: _version(name) for name in PACKAGES},
    }
    torch = _import_torch()
    if torch is not None:
        env["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "debug": bool(torch.version.debug),
            "git_version": getattr(torch.version, "git_version", None),
        }
        env["gpu"] = _gpus(torch)
    return env


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _version(name: str):
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus(torch) -> list:
    if not torch.cuda.is_available():
        return []
    driver = _nvidia_driver()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "driver": driver,
        })
    return gpus


def _nvidia_driver():
    """Driver version without NVML: the kernel module reports it; pynvml is used only when installed."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            for word in f.readline().split():
                if word[:1].isdigit() and "." in word:
                    return word
    except OSError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # NVML is an optional extra; no driver string is not an error
        return None


def _determinism(torch) -> dict:
    backends = torch.backends
    switches = {
        "cudnn_deterministic": bool(backends.cudnn.deterministic),
        "cudnn_benchmark": bool(backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(backends.cuda.matmul.allow_tf32),
        "matmul_allow_fp16_reduced_precision_reduction": bool(
            backends.cuda.matmul.allow_fp16_reduced_precision_reduction),
        "matmul_allow_bf16_reduced_precision_reduction": bool(
            backends.cuda.matmul.allow_bf16_reduced_precision_reduction),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    # fp32_precision exists from torch 2.9 on; older builds simply lack these keys.
    for key, owner in (("fp32_precision", backends), ("matmul_fp32_precision", backends.cuda.matmul),
                       ("cudnn_fp32_precision", backends.cudnn)):
        value = getattr(owner, "fp32_precision", None)
        if isinstance(value, str):
            switches[key] = value
    return switches
