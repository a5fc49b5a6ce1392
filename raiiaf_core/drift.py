"""Compare a stored environment with another (the running one by default) and say what each difference risks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .environment import capture_environment
from .report import escape, flatten

YES, POSSIBLE, UNLIKELY = "yes", "possible", "unlikely"

# First matching prefix wins: why a difference under it can or cannot change the generated pixels.
_IMPACT = (
    ("torch.num_threads", POSSIBLE, "CPU kernels may split reductions differently"),
    ("torch.", YES, "a different torch build runs different kernels"),
    ("gpu", YES, "a different GPU or driver runs different kernels"),
    ("determinism.", YES, "this switch selects kernels or precision (TF32, cuDNN, deterministic algorithms)"),
    ("env_vars.CUBLAS_WORKSPACE_CONFIG", YES, "it decides whether cuBLAS is deterministic"),
    ("env_vars.NVIDIA_TF32_OVERRIDE", YES, "it forces TF32 on or off"),
    ("env_vars.CUDA_VISIBLE_DEVICES", POSSIBLE, "a different device may be used"),
    ("env_vars.", POSSIBLE, "thread counts can change float reduction order"),
    ("packages.torch", YES, "a different torch build runs different kernels"),
    ("packages.diffusers", YES, "pipelines and schedulers change between releases"),
    ("packages.transformers", YES, "text encoders change between releases"),
    ("packages.torchsde", YES, "SDE samplers draw their noise through it"),
    ("packages.xformers", YES, "attention kernels differ"),
    ("packages.accelerate", POSSIBLE, "it can change device placement and dtypes"),
    ("packages.pillow", POSSIBLE, "image encoding may differ, the latents do not"),
    ("packages.numpy", POSSIBLE, "numpy arithmetic may be used in schedulers"),
    ("cpu.", POSSIBLE, "CPU kernels depend on the instruction set"),
    ("python.", UNLIKELY, "the interpreter does not compute the tensors"),
    ("os.machine", YES, "a different architecture runs different kernels"),
    ("os.", UNLIKELY, "the OS does not compute the tensors"),
    ("packages.", UNLIKELY, "this package does not compute the tensors"),
)


@dataclass(frozen=True)
class Difference:
    key: str
    stored: object
    current: object
    impact: str  # "yes" | "possible" | "unlikely": can this difference change the output?
    reason: str


@dataclass(frozen=True)
class DriftReport:
    differences: tuple

    @property
    def can_change_output(self) -> bool:
        return any(d.impact == YES for d in self.differences)

    def to_dict(self) -> dict:
        return {"can_change_output": self.can_change_output, "differences": [asdict(d) for d in self.differences]}

    def __str__(self) -> str:
        if not self.differences:
            return "environment: identical"
        lines = [f"environment: {len(self.differences)} difference(s)"
                 + (", some can change the output" if self.can_change_output else "")]
        for d in self.differences:  # keys and values come from files: escaped, so printing them is safe
            lines.append(f"  [{d.impact}] {escape(d.key)}: {escape(repr(d.stored))} -> {escape(repr(d.current))} "
                         f"({d.reason})")
        return "\n".join(lines)


def drift(stored: dict, current: dict | None = None) -> DriftReport:
    """Differences between `stored` and `current` (default: this process now), most consequential first."""
    if current is None:
        current = capture_environment()
    flat_stored, flat_current = flatten(stored), flatten(current)
    differences = []
    for key in sorted(set(flat_stored) | set(flat_current)):
        if key == "schema_version":
            continue
        a, b = flat_stored.get(key), flat_current.get(key)
        if a != b:
            impact, reason = _impact(key)
            differences.append(Difference(key, a, b, impact, reason))
    order = {YES: 0, POSSIBLE: 1, UNLIKELY: 2}
    differences.sort(key=lambda d: (order[d.impact], d.key))
    return DriftReport(tuple(differences))


def output_relevant(environment: dict) -> dict:
    """The environment's fields (dotted keys) whose difference can change the output: two environments
    differ in these exactly when drift() between them says can_change_output."""
    return {key: value for key, value in flatten(environment).items() if _impact(key)[0] == YES}


def _impact(key: str) -> tuple[str, str]:
    for prefix, impact, reason in _IMPACT:
        if key.startswith(prefix):
            return impact, reason
    return POSSIBLE, "not classified"

