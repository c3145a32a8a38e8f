#!/usr/bin/env bash
# The main job, shown: validates the example manifests and shows what cloudd would run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cloudd-cli validate manifests/*.yaml"
.venv/bin/cloudd-cli validate manifests/*.yaml
