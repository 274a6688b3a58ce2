#!/usr/bin/env bash
# Create ./.venv with PyTorch and epsvae installed (idempotent). Sourced by the other scripts.
# TORCH_SPEC picks the PyTorch build: the default is the CPU build; on a GPU machine use
# e.g. TORCH_SPEC="torch" (PyPI's CUDA build) or follow pytorch.org for your CUDA version.
# It may name torchvision too (scripts/test.sh does: LPIPS-VGG and the FID Inception need it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EPSVAE_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EPSVAE_EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
CHECK="import torch"
case "$TORCH_SPEC" in *torchvision*) CHECK="import torch, torchvision" ;; esac
if ! "$PY" -c "$CHECK" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC into $VENV (about a minute)"
  "$PY" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086  # TORCH_SPEC may name several packages (torch and torchvision)
  "$PY" -m pip install -q $TORCH_SPEC
fi
"$PY" -m pip install -q -e "$ROOT[$EXTRAS]"
export PATH="$VENV/bin:$PATH"
