#!/usr/bin/env bash
# Run the diffusers tests against the lowest diffusers version pyproject.toml supports.
#
#   bash tests/diffusers_versions/run_lowest.sh            # creates the venv on first use (~1 GB, mostly torch)
#
# A separate venv (RAIIAF_LOWEST_VENV, default ~/.cache/raiiaf-diffusers-lowest) gets torch==2.13.0 (the CPU
# build the project is tested with), the lowest supported diffusers, a transformers release of its time, and
# the test dependencies; raiiaf itself is used from this checkout (PYTHONPATH), not installed. Extra arguments
# go to pytest. CI runs the same tests against the highest version (the main venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RAIIAF_LOWEST_VENV:-$HOME/.cache/raiiaf-diffusers-lowest}"
DIFFUSERS="${RAIIAF_LOWEST_DIFFUSERS:-0.36.0}"
TRANSFORMERS="${RAIIAF_LOWEST_TRANSFORMERS:-5.0.0}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import diffusers, transformers, sys; sys.exit(diffusers.__version__ != '$DIFFUSERS' or transformers.__version__ != '$TRANSFORMERS')" 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q "diffusers==$DIFFUSERS" "transformers==$TRANSFORMERS" "torchsde>=0.2.6" numpy safetensors \
        pillow zstandard pytest hypothesis sentencepiece protobuf ftfy -c <(echo "torch==2.13.0")
fi
"$PY" -c "import diffusers, transformers, torch; print(f'diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
cd "$ROOT"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider tests/test_diffusers_*.py "$@"
