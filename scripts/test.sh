#!/usr/bin/env bash
# The test command: makes sure the pinned environment and Redis are in place, then runs pytest.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-demo --with-chromium >/dev/null
exec .venv/bin/python -m pytest "$@"
