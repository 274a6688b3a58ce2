#!/usr/bin/env bash
# The main job on a fresh machine: install epsvae into ./.venv, get Fashion-MNIST, train the
# eps-fmnist preset for MINUTES (default 10) on the CPU, then write a reconstruction grid and
# a metrics table to runs/quickstart/. Running it again resumes the same run for MINUTES more.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EPSVAE_EXTRAS="${EPSVAE_EXTRAS:-tensorboard}"  # the main job needs no test or benchmark tools
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if ! python -c "from epsvae.data import find_fashion_mnist as f; f(download=False)" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[quickstart] installing Debian's dataset-fashion-mnist"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi  # otherwise epsvae downloads the official files (checksummed) or says how to get them
fi
epsvae quickstart --out "${OUT:-runs/quickstart}" --minutes "${MINUTES:-10}" "$@"
