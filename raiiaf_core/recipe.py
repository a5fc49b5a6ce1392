"""Noise stored as a recipe: how a torch CPU generator drew it, plus the sha256 of what it drew.

Initial noise is most of a file's size beyond its image (256 KiB at 1024x1024), yet it is usually drawn by a
CPU generator from a seed or a state the file records anyway. A recipe stores that instead of the tensor;
reading the tensor draws it again and checks its sha256, so load_tensor returns the same bits or raises
RecipeMismatchError (a torch, or a CPU kernel level, that draws differently). Only torch needs importing, and
only on a draw.

The three ways of drawing a recipe can describe (docs/FORMAT.md, "Noise recipes"):
- one generator, no batch_index: `torch.randn(shape, generator=g)` (ComfyUI's KSampler noise, diffusers' noise
  from one generator);
- one generator and a batch_index: one `[1, *shape[1:]]` draw per index from 0 up to the largest, keeping the
  ones listed, in the listed order (ComfyUI's `prepare_noise` for a latent picked out of a batch);
- one generator per batch element: one `[1, *shape[1:]]` draw from each, concatenated (diffusers' randn_tensor
  given a list of generators).
A generator is `{"seed": n}` (`torch.Generator("cpu").manual_seed(n)`) or `{"state": name}`: the uint8 state
stored as the file's raw tensor `name` (diffusers files store each generator's state at the start of a call).

A writer makes a recipe only by drawing it and finding the tensor it replaces (`make`, `compact`): a recipe in
a file is one that reproduced its noise once, with the torch and at the CPU kernel level it names. The level
can matter as much as the version: torch draws contiguous float32 noise with AVX2 code at the AVX2 and AVX-512
levels and with scalar code at DEFAULT (a CPU without AVX2, or ATEN_CPU_CAPABILITY=default), so one torch and
one seed give other bits there.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from .environment import cpu_capability
from .errors import CorruptFileError, MissingDependencyError, RecipeMismatchError, TensorError
from .tensors import is_torch_tensor, tensor_sha256

log = logging.getLogger(__name__)

STORAGE = ("raw", "recipe")  # how a writer may store noise: the tensor itself, or its checked recipe
DTYPES = ("float32", "float16", "bfloat16", "float64")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range (ComfyUI seeds go to 0xffffffffffffffff)
MAX_BATCH_INDEX = 1 << 16  # each index below the largest costs one draw; bounds the time a file can ask for


_FIELDS = {"generators", "sha256", "torch", "cpu_capability", "batch_index"}


class NoiseRecipe(NamedTuple):
    """How a tensor was drawn (see the module's docstring) and the tensor_sha256 of what it drew."""

    shape: tuple
    dtype: str
    generators: tuple  # of ("seed", int) or ("state", tensor name)
    batch_index: tuple | None
    sha256: str
    torch_version: str  # the torch that drew it when the recipe was made
    cpu_capability: str | None = None  # torch's CPU kernel level then; None from a writer that did not record it

    @property
    def states(self) -> tuple:
        """The names of the raw tensors holding generator states this recipe draws from."""
        return tuple(value for kind, value in self.generators if kind == "state")

    def to_json(self) -> dict:
        out = {"generators": [{kind: value} for kind, value in self.generators], "sha256": self.sha256,
               "torch": self.torch_version}
        if self.cpu_capability is not None:
            out["cpu_capability"] = self.cpu_capability
        if self.batch_index is not None:
            out["batch_index"] = list(self.batch_index)
        return out


def from_json(value, shape: tuple, dtype: str, where: str) -> NoiseRecipe:
    """The recipe of a `tensor_recipe` chunk (shape and dtype from its index entry), every field checked."""
    def fail(field: str, why: str):
        raise CorruptFileError(f"{where}: recipe field '{field}' {why}")

    unknown = set(value) - _FIELDS
    if unknown:  # a field from a newer writer may change how to draw: not drawn rather than drawn wrong
        fail(min(unknown)[:40], "is unknown to this reader")
    if dtype not in DTYPES:
        raise CorruptFileError(f"{where}: a recipe draws {', '.join(DTYPES)}, not {dtype[:40]!r}")
    if not shape:
        raise CorruptFileError(f"{where}: a recipe's tensor has at least one dimension")
    gens = value.get("generators")
    if type(gens) is not list or not gens:
        fail("generators", "is not a non-empty list")
    generators = []
    for i, gen in enumerate(gens):
        if type(gen) is not dict or len(gen) != 1:
            fail(f"generators.{i}", "is not an object with one field, 'seed' or 'state'")
        ((kind, arg),) = gen.items()
        if kind == "seed" and type(arg) is int and 0 <= arg <= MAX_SEED or kind == "state" and type(arg) is str \
                and arg:
            generators.append((kind, arg))
        else:
            fail(f"generators.{i}", "is not {'seed': 0..2**64-1} or {'state': a tensor name}")
    batch_index = value.get("batch_index")
    if batch_index is not None:
        if type(batch_index) is not list or not batch_index or len(batch_index) != shape[0] or not all(
                type(i) is int and 0 <= i < MAX_BATCH_INDEX for i in batch_index):
            fail("batch_index", f"is not a list of {shape[0]} indexes below {MAX_BATCH_INDEX} (one per batch element)")
        batch_index = tuple(batch_index)
    if len(generators) > 1 and (batch_index is not None or len(generators) != shape[0]):
        fail("generators", f"has {len(generators)} generators: several need one per batch element ({shape[0]}) "
             "and no batch_index")
    sha256, version = value.get("sha256"), value.get("torch")
    if type(sha256) is not str or len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        fail("sha256", "is not a sha256 in hex")
    if type(version) is not str or not version or len(version) > 100:
        fail("torch", "is not a torch version")
    level = value.get("cpu_capability")
    if level is not None and (type(level) is not str or not level.isalnum() or len(level) > 40):
        fail("cpu_capability", "is not a CPU kernel level's name (AVX512, AVX2, DEFAULT, ...)")
    return NoiseRecipe(tuple(shape), dtype, tuple(generators), batch_index, sha256, version, level)


def _torch(where: str):
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"{where}: the noise is stored as a recipe; drawing it needs torch installed "
                                     "(everything else in the file reads without it)") from None
    return torch


def draw(recipe: NoiseRecipe, states: dict, where: str):
    """The tensor the recipe describes, drawn with private generators (the global RNG is left alone).
    `states`: the uint8 state tensors the recipe names, by name."""
    torch = _torch(where)
    dtype, shape = getattr(torch, recipe.dtype), list(recipe.shape)
    generators = []
    for kind, value in recipe.generators:
        generator = torch.Generator(device="cpu")
        try:
            if kind == "seed":
                generator.manual_seed(value)
            else:
                generator.set_state(states[value])
        except (RuntimeError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{where}: generator state '{value}' is not a CPU generator's state ({exc})") \
                from None
        generators.append(generator)
    one = [1, *shape[1:]]
    if len(generators) > 1:
        return torch.cat([torch.randn(one, generator=g, dtype=dtype, device="cpu") for g in generators], dim=0)
    generator = generators[0]
    if recipe.batch_index is None:
        return torch.randn(shape, generator=generator, dtype=dtype, device="cpu")
    wanted, drawn = set(recipe.batch_index), {}
    for i in range(max(recipe.batch_index) + 1):  # every index below the largest consumes one draw
        sample = torch.randn(one, generator=generator, dtype=dtype, device="cpu")
        if i in wanted:
            drawn[i] = sample
    return torch.cat([drawn[i] for i in recipe.batch_index], dim=0)


def checked_draw(recipe: NoiseRecipe, states: dict, where: str):
    """draw(), then its sha256 against the recipe's: the same bits, or RecipeMismatchError."""
    tensor = draw(recipe, states, where)
    if tensor_sha256(tensor) != recipe.sha256:
        torch = _torch(where)
        raise RecipeMismatchError(f"{where}: drawing the noise from its recipe did not give the stored noise (sha256 "
                                  f"differs); {_why_it_differs(recipe, str(torch.__version__), cpu_capability(torch))}; "
                                  "everything else in the file reads as usual")
    return tensor


def _why_it_differs(recipe: NoiseRecipe, version: str, level: str | None) -> str:
    """What differs between the torch that made the recipe and this one, and what to do about it."""
    made = f"the recipe was made with torch {recipe.torch_version}"
    if recipe.cpu_capability is not None:
        made += f" at CPU kernel level {recipe.cpu_capability}"
    here = f"this is torch {version}" + (f" at {level}" if level else "")
    causes = []
    if version != recipe.torch_version:
        causes.append("this torch draws differently: load it with that version")
    levels_known = recipe.cpu_capability is not None and level is not None
    if levels_known and recipe.cpu_capability != level:
        causes.append("torch can draw differently at another CPU kernel level: load it in a process started with "
                      f"ATEN_CPU_CAPABILITY={recipe.cpu_capability.lower()}, where this CPU runs that level")
    if not causes:
        if levels_known:
            return f"{made}, {here} (the same torch and kernel level: the recipe or its generator state was altered)"
        causes.append("the same torch, but which CPU kernel level drew it is not known, and torch draws differently "
                      "at some levels: the file may come from another kind of CPU, or the recipe or its generator "
                      "state was altered")
    return f"{made}, {here} ({'; '.join(causes)}; or convert the file to raw noise where it was made: " \
           "`raiiaf convert --noise raw`)"


def make(noise, generators, batch_index=None, states=None, where: str = "noise") -> NoiseRecipe:
    """The recipe of `noise` (a torch tensor or numpy array) drawn by `generators` (a list of {"seed": n} or
    {"state": name}; `states` maps each name to its uint8 state tensor), checked by drawing it: raises
    RecipeMismatchError when the draw is not `noise` bit for bit, TensorError when no recipe can hold it."""
    dtype = str(noise.dtype).removeprefix("torch.")  # torch's and numpy's names agree
    torch = _torch(where)
    spec = {"generators": list(generators), "sha256": tensor_sha256(noise), "torch": str(torch.__version__),
            "batch_index": None if batch_index is None else [int(i) for i in batch_index]}
    level = cpu_capability(torch)
    if level is not None:
        spec["cpu_capability"] = level
    try:
        recipe = from_json(spec, tuple(int(d) for d in noise.shape), dtype, where)
    except CorruptFileError as exc:
        raise TensorError(str(exc)) from None
    checked_draw(recipe, dict(states or {}), where)
    return recipe


def candidates(metadata: dict) -> dict:
    """{tensor name: [(generators, batch_index), ...]}: the ways the file's own records say a tensor of it
    was drawn by a CPU generator. Every candidate is drawn and compared before it is used, so a record that
    does not describe its noise exactly costs a draw, never wrong data."""
    found: dict = {}

    def add(name, generators, batch_index=None):
        if type(name) is str and generators and (batch_index is None or type(batch_index) is list):
            found.setdefault(name, []).append((generators, batch_index))

    host = metadata.get("host") if type(metadata.get("host")) is dict else {}
    comfyui = host.get("comfyui") if type(host.get("comfyui")) is dict else {}
    for run in metadata.get("runs") or ():  # ComfyUI (raiiaf_nodes): prepare_noise(seed, batch_index)
        if type(run) is dict and type(run.get("seed")) is int and run.get("add_noise") is not False:
            # A captured run does not repeat the latent's batch_index; the save records it for the file.
            for batch_index in {repr(b): b for b in (run.get("batch_index"), comfyui.get("latent_batch_index"),
                                                     None)}.values():
                add(run.get("noise"), [{"seed": run["seed"]}], batch_index)
    diffusers = host.get("diffusers")
    if type(diffusers) is dict and type(diffusers.get("noise")) is dict \
            and diffusers["noise"].get("source") == "randn_tensor":
        rng = diffusers.get("rng") or {}
        gens = rng.get("generators") or {}
        name = diffusers["noise"].get("tensor")
        devices, seeds, states = gens.get("devices") or [], gens.get("seeds") or [], gens.get("at_start") or []
        if devices and all(d == "cpu" for d in devices):
            if len(seeds) == len(devices) and all(type(s) is int for s in seeds):
                add(name, [{"seed": s} for s in seeds])
            if len(states) == len(devices) and all(type(s) is str for s in states):
                add(name, [{"state": s} for s in states])
        elif not devices:  # drawn from the global RNG: the CPU's, when the call ran on the CPU
            for stream in rng.get("global") or ():
                if type(stream) is dict and stream.get("device") == "cpu" and type(stream.get("at_start")) is str:
                    add(name, [{"state": stream["at_start"]}])
    return found


def compact(tensors: dict, metadata: dict, where: str = "") -> tuple[dict, dict]:
    """(`tensors` with each tensor that the metadata says a CPU generator drew, and that drawing it again gives
    bit for bit, replaced by its NoiseRecipe; {name: why} for each such tensor no candidate reproduces, which
    stays raw)."""
    out, kept = dict(tensors), {}
    for name, options in candidates(metadata).items():
        value = out.get(name)
        if value is None or isinstance(value, NoiseRecipe) or len(getattr(value, "shape", ())) == 0:
            continue
        problems = []
        for generators, batch_index in options:
            states = {gen["state"]: _as_torch(out.get(gen["state"])) for gen in generators if "state" in gen}
            if any(s is None for s in states.values()):
                problems.append("a generator state it names is not a raw tensor of the file")
                continue
            try:
                out[name] = make(value, generators, batch_index, states, f"{where}tensor '{name}'")
                break
            except (RecipeMismatchError, TensorError, CorruptFileError) as exc:
                problems.append(str(exc))
        else:
            kept[name] = "; ".join(p[:300] for p in problems)
            log.info("raiiaf: %stensor '%s' kept raw: no recipe reproduces it (%s)", where, name, kept[name])
    return out, kept


def _as_torch(value):
    if value is None or isinstance(value, NoiseRecipe):
        return None
    if is_torch_tensor(value):
        return value
    import torch

    return torch.from_numpy(value)
