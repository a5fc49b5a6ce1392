"""No code execution from files: the packages never unpickle, torch.load, eval or exec anything.

The sources are parsed with ast, not grepped, so `module.eval()` (torch's train/eval switch) and
`safetensors.torch.load(bytes)` pass, while aliases (`import pickle as p`, `from torch import load`) and
getattr with a constant name are still caught. The scanner is tested on snippets first, so a scanner that
finds nothing cannot pass for a clean code base.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("raiiaf_core", "raiiaf_diffusers", "raiiaf_nodes")

# Modules whose whole purpose is turning bytes into objects by running code.
FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
# Calls that unpickle or run code, by their fully qualified name (numpy.load only with allow_pickle=True,
# torch.load even with weights_only, which still runs a restricted unpickler over the file).
FORBIDDEN_CALLS = {
    "torch.load", "torch.serialization.load", "torch.jit.load", "torch.package.PackageImporter",
    "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__", "eval", "exec", "compile",
    "__import__",
}


def violations(source: str, filename: str = "<snippet>") -> list:
    """'file:line: what' for every forbidden import, call or reference in `source`."""
    tree = ast.parse(source, filename)
    aliases = {}  # local name -> fully qualified name, from the module's imports
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{filename}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{filename}:{node.lineno}: imports from {node.module}")

    def qualified(expr):
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = qualified(expr.value)
            return f"{base}.{expr.attr}" if base else None
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "getattr" \
                and len(expr.args) >= 2 and isinstance(expr.args[1], ast.Constant) and isinstance(expr.args[1].value, str):
            base = qualified(expr.args[0])
            return f"{base}.{expr.args[1].value}" if base else None
        return None

    for node in ast.walk(tree):
        # Any reference counts, not only calls: `loader = torch.load` is as bad as calling it.
        if isinstance(node, (ast.Name, ast.Attribute, ast.Call)) and qualified(node) in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: uses {qualified(node)}")
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                unsafe = {"allow_pickle": True, "weights_only": False}
                if keyword.arg in unsafe and isinstance(keyword.value, ast.Constant) and \
                        keyword.value.value is unsafe[keyword.arg]:
                    found.append(f"{filename}:{node.lineno}: passes {keyword.arg}={keyword.value.value}")
    return sorted(set(found))


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.loads(b)",
    "import pickle as p",
    "from pickle import loads",
    "import dill",
    "import marshal",
    "import torch\ntorch.load(f)",
    "import torch as th\nth.load(f)",
    "from torch import load\nload(f)",
    "import torch\ngetattr(torch, 'load')(f)",
    "import torch\ntorch.jit.load(f)",
    "import numpy as np\nnp.load(f, allow_pickle=True)",
    "import torch\ntorch.load(f, weights_only=False)",
    "eval(text)",
    "exec(code)",
    "compile(src, 'f', 'exec')",
    "import builtins\nbuiltins.eval(text)",
    "__import__(name)",
    "import yaml\nyaml.load(s)",
])
def test_the_scanner_catches_every_form(snippet):
    assert violations(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    "unet.eval(); vae.eval()",
    "import safetensors.torch as loader\nloader.load(payload)",
    "import safetensors.torch\nsafetensors.torch.load_file(p)",
    "import numpy as np\nnp.load(f)",
    "import json\njson.loads(s)",
    "import re\nre.compile('x')",
    "self.load(name)",
])
def test_the_scanner_passes_safe_code(snippet):
    assert violations(snippet) == []


def test_no_package_unpickles_or_executes_anything_it_reads():
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 10  # the packages really were found
    found = [v for p in files for v in violations(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == []
