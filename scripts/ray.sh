#!/usr/bin/env bash
# Installs herd's optional Ray extra (the `ray` extra of pyproject.toml, pinned there) into the
# project's venv if missing, for `herd serve --backend ray` and tests/fleet/test_ray_serve.py.
# Ray pins its own fastapi / starlette / uvicorn / protobuf; herd uses none of them, and it changes
# none of torch, pydantic or aiohttp (checked with `pip install --dry-run`), so it shares the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
SPEC=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['ray'][0])")
if ! "$PY" -c "import ray, ray.serve, sys; sys.exit(ray.__version__ != '${SPEC##*==}')" 2>/dev/null; then
  echo "installing $SPEC (the optional Ray backend) into $PY's venv"
  "$PY" -m pip install -q "$SPEC"
fi
