#!/usr/bin/env bash
# The main job, shown: validates the example manifests and shows what cloudd would run,
# then shows a bad manifest refused with one placed message.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cloudd-cli validate --show manifests/*.yaml"
.venv/bin/cloudd-cli validate --show manifests/*.yaml
echo
echo "== a manifest with a typo is refused (exit 1), with file:line:column: field: why"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r manifests/templates "$tmp/"
sed 's/192.0.2.176/192.0.2.300/' manifests/web.yaml > "$tmp/web-typo.yaml"
if .venv/bin/cloudd-cli validate "$tmp/web-typo.yaml"; then
  echo "demo: the bad manifest was accepted" >&2; exit 1
fi
