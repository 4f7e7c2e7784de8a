#!/usr/bin/env bash
# Creates .venv if needed (pinned stack + test extras) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv test
# The UI's browser tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
    echo "Installing Chromium for the UI tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
fi
lint-imports
python -m pytest "$@"
