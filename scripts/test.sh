#!/usr/bin/env bash
# Install everything the tests need into ./.venv, then lint and run the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# torchvision (for the LPIPS-VGG and FID-Inception paths) fits torch 2.14.1, not the smaller 2.13.0 CPU build
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
ruff check .
python -m pytest "$@"
