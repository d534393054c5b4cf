#!/usr/bin/env bash
# Install mm-assets and its pinned dependencies into ./.venv (Python 3.11). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "mm-assets needs Python 3.11"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,sandbox,postgres]'
# Compile the project's modules now: where PYTHONDONTWRITEBYTECODE is set (this machine kind
# sets it) Python never caches them, and every command compiled ~100 modules (~0.3 s).
.venv/bin/python -m compileall -q mm_assets >/dev/null
