#!/usr/bin/env bash
# Creates .venv if needed (pinned stack + test extras) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv test
lint-imports
python -m pytest "$@"
