#!/usr/bin/env bash
# Installs herd's optional Ray extra (`ray[serve]`, pinned in pyproject.toml) into the project's
# venv, if missing, for `herd serve --backend ray` and tests/fleet/test_ray_serve.py. Ray pins its
# own fastapi / starlette / uvicorn / protobuf; none of them is one herd uses, and it changes none
# of torch, pydantic or aiohttp (checked with `pip install --dry-run`), so it shares herd's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
RAY_VERSION=2.60.0  # keep equal to the `ray` extra in pyproject.toml
if ! "$PY" -c "import ray, ray.serve, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" 2>/dev/null; then
  echo "installing ray[serve]==$RAY_VERSION (the optional Ray backend) into $PY's venv"
  "$PY" -m pip install -q "ray[serve]==$RAY_VERSION"
fi
