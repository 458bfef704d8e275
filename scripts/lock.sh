#!/usr/bin/env bash
# Regenerates constraints.txt from a clean resolve of pyproject.toml's pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --upgrade pip
"$tmp/venv/bin/pip" install --quiet ".[dev]"
{ echo "# Full transitive lock for pyproject.toml's dependencies (Python 3.11, linux x86_64)."
  echo "# Regenerate: bash scripts/lock.sh"
  "$tmp/venv/bin/pip" freeze | grep -v '^derm' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > constraints.txt
rm -rf "$tmp"
