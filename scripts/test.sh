#!/usr/bin/env bash
# Install everything the tests need into ./.venv, then lint and run the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
ruff check .
python -m pytest "$@"
