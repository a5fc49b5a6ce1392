"""Compare a stored environment with another (the running one by default) and say what each difference risks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .environment import capture_environment
from .report import escape, flatten

YES, POSSIBLE, UNLIKELY = "yes", "possible", "unlikely"

# First matching prefix wins: why a difference under it can or cannot change the generated pixels, and what a
# user can do about it (None: nothing to do, or replay recreates it by itself). Remedies are templates over
# {stored}, {current} (the values), {stored_lower} and {name} (the key's last part).
_REPLAY_SETS = " (diffusers replay and Raiiaf Resample set this for their call)"
_IMPACT = (
    ("torch.num_threads", POSSIBLE, "CPU kernels may split reductions differently",
     "call torch.set_num_threads({stored}), or start the process with OMP_NUM_THREADS={stored}" + _REPLAY_SETS),
    ("torch.cpu_capability", YES, "torch's CPU kernels for another instruction set round differently",
     "the file was made with {stored} kernels; this process uses {current}: rerun with "
     "ATEN_CPU_CAPABILITY={stored_lower} (a CPU runs lower levels than its own, never higher)"),
    ("torch.mkldnn_available", YES, "convolutions run through oneDNN or not",
     "use a torch build with oneDNN {stored}, like the original"),
    ("torch.", YES, "a different torch build runs different kernels",
     "the original torch had {name}={stored}; install the same torch build (pip install torch==<torch.version>)"),
    ("gpu", YES, "a different GPU or driver runs different kernels",
     "the original GPU was {stored_gpu}, this machine has {current_gpu}: bit-exact replay on a GPU needs the same "
     "GPU model (and driver)"),
    ("determinism.", YES, "this switch selects kernels or precision (TF32, cuDNN, deterministic algorithms)",
     "set {name} to {stored} as the original had it" + _REPLAY_SETS),
    ("sdpa.", YES, "it decides which attention kernel (flash, memory-efficient, math, cuDNN) torch uses",
     "set the {name} scaled_dot_product_attention backend to {stored}" + _REPLAY_SETS),
    ("env_vars.ATEN_CPU_CAPABILITY", YES, "it lowers the instruction set of torch's CPU kernels",
     "start Python with {name}={stored}"),
    ("env_vars.CUBLAS_WORKSPACE_CONFIG", YES, "it decides whether cuBLAS is deterministic",
     "start Python with {name}={stored}"),
    ("env_vars.NVIDIA_TF32_OVERRIDE", YES, "it forces TF32 on or off", "start Python with {name}={stored}"),
    ("env_vars.MKL_CBWR", YES, "it selects MKL's code path (conditional numerical reproducibility)",
     "start Python with {name}={stored}"),
    ("env_vars.DNNL_MAX_CPU_ISA", YES, "it lowers the instruction set of oneDNN's kernels",
     "start Python with {name}={stored}"),
    ("env_vars.ONEDNN_MAX_CPU_ISA", YES, "it lowers the instruction set of oneDNN's kernels",
     "start Python with {name}={stored}"),
    ("env_vars.CUDA_VISIBLE_DEVICES", POSSIBLE, "a different device may be used", "start Python with {name}={stored}"),
    ("env_vars.", POSSIBLE, "thread counts can change float reduction order", "start Python with {name}={stored}"),
    ("packages.torch", YES, "a different torch build runs different kernels", "install torch=={stored}"),
    ("packages.diffusers", YES, "pipelines and schedulers change between releases", "install diffusers=={stored}"),
    ("packages.transformers", YES, "text encoders change between releases", "install transformers=={stored}"),
    ("packages.torchsde", YES, "SDE samplers draw their noise through it", "install torchsde=={stored}"),
    ("packages.xformers", YES, "attention kernels differ", "install xformers=={stored}"),
    ("packages.accelerate", POSSIBLE, "it can change device placement and dtypes", "install accelerate=={stored}"),
    ("packages.pillow", POSSIBLE, "image encoding may differ, the latents do not", None),
    ("packages.numpy", POSSIBLE, "numpy arithmetic may be used in schedulers", "install numpy=={stored}"),
    ("cpu.", POSSIBLE, "CPU kernels depend on the instruction set",
     "the original CPU had {name} {stored}; if torch.cpu_capability differs too, follow its remedy"),
    ("python.", UNLIKELY, "the interpreter does not compute the tensors", None),
    ("os.machine", YES, "a different architecture runs different kernels",
     "the file was made on {stored}; bit-exact replay needs that architecture"),
    ("os.", UNLIKELY, "the OS does not compute the tensors", None),
    ("packages.", UNLIKELY, "this package does not compute the tensors", None),
)
# A remedy for a value the original did not have (an environment variable it did not set, a field its raiiaf
# did not record).
_ABSENT = {"env_vars.": "start Python without {name} set, as the original did"}


@dataclass(frozen=True)
class Difference:
    key: str
    stored: object
    current: object
    impact: str  # "yes" | "possible" | "unlikely": can this difference change the output?
    reason: str
    remedy: str | None = None  # what to do so that it no longer differs; None: nothing a user can do


@dataclass(frozen=True)
class DriftReport:
    differences: tuple

    @property
    def can_change_output(self) -> bool:
        return any(d.impact == YES for d in self.differences)

    @property
    def explains_a_difference(self) -> bool:
        """Whether some recorded difference can account for a replay that is not bit-exact."""
        return any(d.impact != UNLIKELY for d in self.differences)

    @property
    def remedies(self) -> list:
        """Each difference's remedy once, most consequential first."""
        return list(dict.fromkeys(d.remedy for d in self.differences if d.remedy))

    def lines(self, unexplained: bool = False) -> list:
        """The report as lines; `unexplained`: a replay differed and nothing else recorded (remedies, notes)
        accounts for it, which is said instead of "identical" (the differences, all unlikely ones, follow)."""
        if not unexplained:
            return [str(self)]
        said = ["environment: no recorded difference explains this: every setting raiiaf records is the same (or "
                "was recreated), so something it cannot read differs (a library loaded at run time, the CPU or GPU "
                "microcode, or the model weights when the file holds no hashes)"]
        return said + [str(self)] if self.differences else said

    def to_dict(self) -> dict:
        return {"can_change_output": self.can_change_output, "differences": [asdict(d) for d in self.differences],
                "remedies": self.remedies}

    def __str__(self) -> str:
        if not self.differences:
            return "environment: identical"
        lines = [f"environment: {len(self.differences)} difference(s)"
                 + (", some can change the output" if self.can_change_output else "")]
        for d in self.differences:  # keys and values come from files: escaped, so printing them is safe
            lines.append(f"  [{d.impact}] {escape(d.key)}: {escape(repr(d.stored))} -> {escape(repr(d.current))} "
                         f"({d.reason})")
        lines += [f"  remedy: {escape(r)}" for r in self.remedies]
        return "\n".join(lines)


def drift(stored: dict, current: dict | None = None) -> DriftReport:
    """Differences between `stored` and `current` (default: this process now), most consequential first."""
    if current is None:
        current = capture_environment()
    flat_stored, flat_current = flatten(stored), flatten(current)
    gpus = {"stored_gpu": _gpus(stored), "current_gpu": _gpus(current)}
    differences = []
    for key in sorted(set(flat_stored) | set(flat_current)):
        if key == "schema_version":
            continue
        a, b = flat_stored.get(key), flat_current.get(key)
        if a != b:
            impact, reason, remedy = _rule(key)
            differences.append(Difference(key, a, b, impact, reason, _remedy(key, remedy, a, b, gpus)))
    order = {YES: 0, POSSIBLE: 1, UNLIKELY: 2}
    differences.sort(key=lambda d: (order[d.impact], d.key))
    return DriftReport(tuple(differences))


def output_relevant(environment: dict) -> dict:
    """The environment's fields (dotted keys) whose difference can change the output: two environments
    differ in these exactly when drift() between them says can_change_output."""
    return {key: value for key, value in flatten(environment).items() if _rule(key)[0] == YES}


def _rule(key: str) -> tuple[str, str, str | None]:
    for prefix, impact, reason, remedy in _IMPACT:
        if key.startswith(prefix):
            return impact, reason, remedy
    return POSSIBLE, "not classified", None


def _gpus(environment) -> str:
    gpus = environment.get("gpu") if isinstance(environment, dict) else None
    if not isinstance(gpus, list) or not gpus:
        return "no GPU"
    named = [f"{g.get('name')} (compute {g.get('capability')}, driver {g.get('driver')})" if isinstance(g, dict)
             else repr(g) for g in gpus]
    return ", ".join(named)


def _remedy(key: str, template: str | None, stored, current, gpus: dict) -> str | None:
    if template is None:
        return None
    name = key.rsplit(".", 1)[-1]
    if stored is None:
        absent = next((t for prefix, t in _ABSENT.items() if key.startswith(prefix)), None)
        if absent:
            return absent.format(name=name)
        if not key.startswith("gpu"):
            return None
    return template.format(stored=stored, current=current, name=name, stored_lower=str(stored).lower(), **gpus)

