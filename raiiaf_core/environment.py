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
            "MKL_NUM_THREADS", "NVIDIA_TF32_OVERRIDE", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA",
            "ONEDNN_MAX_CPU_ISA")
# Lines of torch.__config__.show() that name the math libraries torch's CPU kernels call.
_LIBRARIES = (("mkl", "Math Kernel Library Version "), ("onednn", "MKL-DNN v"), ("openmp", "OpenMP "))


def capture_environment() -> dict:
    """The environment of this process now. Imports torch if it is installed (its settings decide pixels)."""
    env = dict(_static_environment())
    env["env_vars"] = {name: os.environ.get(name) for name in ENV_VARS}
    torch = _import_torch()
    if torch is not None:
        env["torch"] = {**env["torch"], "num_threads": torch.get_num_threads()}
        env["determinism"] = _determinism(torch)
        env["sdpa"] = _sdpa(torch)
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
            # The instruction set torch's CPU kernels were dispatched for (AVX2 and AVX512 kernels round
            # differently); ATEN_CPU_CAPABILITY lowers it.
            "cpu_capability": cpu_capability(torch),
            **_build(torch),
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


def cpu_capability(torch):
    """torch's CPU kernel level (AVX512, AVX2, DEFAULT, ...), or None for a torch that cannot say."""
    getter = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return getter() if getter is not None else None


def _build(torch) -> dict:
    """The BLAS/LAPACK and oneDNN torch was built with, from torch.__config__.show() (read once per process)."""
    try:
        text = torch.__config__.show()
    except Exception:  # noqa: BLE001 - a build that cannot describe itself is recorded without it
        return {}
    settings = {}
    for line in text.splitlines():
        line = line.strip().lstrip("- ")
        if line.startswith("Build settings:"):
            for item in line.split(":", 1)[1].split(","):
                key, _, value = item.strip().partition("=")
                if key in ("BLAS_INFO", "LAPACK_INFO"):
                    settings[key.lower()] = value
        for name, marker in _LIBRARIES:
            if marker in line:
                settings[name] = line.split(marker, 1)[1].split()[0]
    mkldnn = getattr(torch.backends, "mkldnn", None)
    settings["mkldnn_available"] = bool(mkldnn is not None and mkldnn.is_available())
    return settings


# The torch settings that change numbers and that a process can set: capture_environment records each, and
# conditions.recreated sets each again for a replayed call. One table for both.
# ("determinism" key, owner's path under torch.backends, attribute)
ATTRIBUTE_SWITCHES = (
    ("cudnn_deterministic", "cudnn", "deterministic"),
    ("cudnn_benchmark", "cudnn", "benchmark"),
    ("cudnn_allow_tf32", "cudnn", "allow_tf32"),
    ("matmul_allow_tf32", "cuda.matmul", "allow_tf32"),
    ("matmul_allow_fp16_reduced_precision_reduction", "cuda.matmul", "allow_fp16_reduced_precision_reduction"),
    ("matmul_allow_bf16_reduced_precision_reduction", "cuda.matmul", "allow_bf16_reduced_precision_reduction"),
    ("mkldnn_enabled", "mkldnn", "enabled"),
)
# ("determinism" key, owner's path under torch.backends ("" for torch.backends)) of each fp32_precision, which
# exists from torch 2.9 on; older builds simply lack these keys.
FP32_PRECISION_OWNERS = (("fp32_precision", ""), ("matmul_fp32_precision", "cuda.matmul"),
                         ("cudnn_fp32_precision", "cudnn"))
# ("sdpa" key, getter, setter) in torch.backends.cuda: which scaled_dot_product_attention backends torch may pick.
SDPA_SWITCHES = (
    ("flash", "flash_sdp_enabled", "enable_flash_sdp"),
    ("mem_efficient", "mem_efficient_sdp_enabled", "enable_mem_efficient_sdp"),
    ("math", "math_sdp_enabled", "enable_math_sdp"),
    ("cudnn", "cudnn_sdp_enabled", "enable_cudnn_sdp"),
    ("math_fp16_bf16_reduction", "fp16_bf16_reduction_math_sdp_allowed", "allow_fp16_bf16_reduction_math_sdp"),
)


def backend(torch, path: str):
    """The object at `path` under torch.backends ("cuda.matmul"), or None where this torch has none."""
    owner = torch.backends
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part, None)
    return owner


def _sdpa(torch) -> dict:
    cuda = torch.backends.cuda
    return {key: bool(getattr(cuda, getter)()) for key, getter, _ in SDPA_SWITCHES if hasattr(cuda, getter)}


def _determinism(torch) -> dict:
    switches = {key: bool(getattr(backend(torch, path), name, False)) for key, path, name in ATTRIBUTE_SWITCHES}
    switches.update({
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_algorithms_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    })
    for key, path in FP32_PRECISION_OWNERS:
        value = getattr(backend(torch, path), "fp32_precision", None)
        if isinstance(value, str):
            switches[key] = value
    return switches
