#!/usr/bin/env bash
# Creates .venv if needed, installs the pinned stack, launches the web UI
# (127.0.0.1:7860 by default). Flags are A1111's: ./webui.sh --listen --port 7861 --api
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv
exec python webui.py ${COMMANDLINE_ARGS:-} "$@"
