"""Tensors <-> safetensors bytes: one safetensors blob per stored tensor, torch imported only when given or asked."""

from __future__ import annotations

import hashlib
import math
import struct
from typing import NamedTuple

from .errors import CorruptFileError, MissingDependencyError, TensorError
from .layout import parse_json_text

# safetensors dtype codes and the names users know them by (torch's and numpy's, which agree).
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
MAX_RANK = 8


class TensorInfo(NamedTuple):  # a tuple: one is made per tensor of every file opened
    name: str
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    if dtype == "bool" or dtype.startswith(("float8", "int8", "uint8")):
        return 1
    return int("".join(ch for ch in dtype if ch.isdigit())) // 8


def is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def encode(name: str, value) -> tuple[bytes, TensorInfo]:
    """Serialize one tensor (torch or numpy) to safetensors bytes, bit for bit."""
    if not isinstance(name, str) or not name:
        raise TensorError(f"tensor names must be non-empty strings, got {name!r}")
    if name == "__metadata__":  # safetensors keeps this key for its own string map: the tensor would be lost
        raise TensorError("tensor name '__metadata__' is reserved by safetensors; choose another name")
    try:
        if is_torch_tensor(value):
            import safetensors.torch

            payload = safetensors.torch.save({name: value.detach().to("cpu").contiguous()})
        else:
            import numpy as np
            import safetensors.numpy

            if not isinstance(value, np.ndarray):
                raise TensorError(f"tensor '{name}': expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
            payload = safetensors.numpy.save({name: _c_contiguous(value)})
    except TensorError:
        raise
    except Exception as exc:  # safetensors rejects dtypes it cannot store; say which tensor
        raise TensorError(f"tensor '{name}' cannot be stored: {exc}") from None
    if len(value.shape) > MAX_RANK:
        raise TensorError(f"tensor '{name}' has rank {len(value.shape)}; at most {MAX_RANK} is supported")
    return payload, parse_header(payload, name, f"tensor '{name}'")


def _c_contiguous(array):
    # np.ascontiguousarray would turn a 0-d array into shape (1,); copying keeps the shape.
    return array if array.flags.c_contiguous else array.copy(order="C")


def parse_header(payload: bytes, name: str, where: str) -> TensorInfo:
    """Check that `payload` is a safetensors blob holding exactly the tensor `name`, filling the blob."""
    if len(payload) < 8:
        raise CorruptFileError(f"{where}: safetensors blob is truncated")
    (header_len,) = struct.unpack_from("<Q", payload, 0)
    if header_len > len(payload) - 8:
        raise CorruptFileError(f"{where}: safetensors header length exceeds the chunk")
    try:
        header = parse_json_text(payload[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # NaN, Infinity and 1e400 included
        raise CorruptFileError(f"{where}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{where}: safetensors header is not an object")
    header.pop("__metadata__", None)
    entry = header.get(name)
    if len(header) != 1 or not isinstance(entry, dict):
        raise CorruptFileError(f"{where}: safetensors blob does not hold exactly the tensor '{name}'")
    code = entry.get("dtype")
    dtype = DTYPE_NAMES.get(code) if isinstance(code, str) else None  # a list or object here is not hashable
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype is None or not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise CorruptFileError(f"{where}: malformed safetensors tensor entry")
    # Checked before the size is computed: thousands of huge dimensions would take minutes to multiply.
    if len(shape) > MAX_RANK:
        raise CorruptFileError(f"{where}: safetensors tensor has rank {len(shape)}, more than {MAX_RANK}")
    # Only a zero dimension lets a shape this big match a real chunk; safetensors, numpy and torch all overflow
    # on it, so such a tensor could never be loaded and verify() must not pass it.
    if math.prod(d for d in shape if d) * _itemsize(dtype) >= 2**63:
        raise CorruptFileError(f"{where}: safetensors tensor shape {shape} is too large to load")
    info = TensorInfo(name, dtype, tuple(shape))
    if offsets != [0, info.nbytes] or 8 + header_len + info.nbytes != len(payload):
        raise CorruptFileError(f"{where}: safetensors data size does not match dtype and shape")
    return info


def check_loadable(payload: bytes, where: str) -> None:
    """Let safetensors' own parser read a blob parse_header accepted: it is stricter on details (the
    __metadata__ map, repeated fields), and verify() must only pass tensors that load."""
    import safetensors

    try:
        safetensors.deserialize(payload)
    except Exception as exc:  # SafetensorError, or whatever a newer safetensors raises for a bad blob
        raise CorruptFileError(f"{where}: safetensors cannot read the tensor ({exc})") from None


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def decode(payload: bytes, info: TensorInfo, framework: str, where: str):
    """Turn a checked safetensors blob back into a numpy array or torch tensor."""
    if framework == "numpy":
        if info.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            raise TensorError(f"{where}: numpy has no {info.dtype}; load it with framework='torch'")
        import safetensors.numpy as loader
    elif framework == "torch":
        try:
            import safetensors.torch as loader
        except ImportError:
            raise MissingDependencyError(f"{where}: framework='torch' needs torch installed") from None
    else:
        raise TensorError(f"unknown framework {framework!r}; use 'numpy' or 'torch'")
    try:
        return loader.load(payload)[info.name]
    except Exception as exc:  # the header was checked; anything left is damage safetensors found
        raise CorruptFileError(f"{where}: safetensors could not decode the tensor ({exc})") from None


def tensor_sha256(value) -> str:
    """sha256 over dtype, shape and raw bytes, equal for a torch tensor and the numpy array with the same bits."""
    if is_torch_tensor(value):
        import torch

        flat = value.detach().to("cpu").contiguous().reshape(-1)
        dtype = str(value.dtype).removeprefix("torch.")
        shape = tuple(value.shape)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    else:
        import numpy as np

        array = _c_contiguous(np.asarray(value))
        dtype, shape, raw = array.dtype.name, array.shape, array.tobytes()
    digest = hashlib.sha256(f"{dtype}:{list(shape)}:".encode())
    digest.update(raw)
    return digest.hexdigest()
