#!/usr/bin/env bash
# The γ sweep, the cumulative ablation and resolution generalisation on one big machine:
# every arm trains in its own process at the same time (the Fashion-MNIST networks keep
# a GPU far from busy), then the three benchmarks evaluate the cached runs, then the
# decoding-speed benchmark runs alone on the idle device.
#
#     benchmarks/parallel_arms.sh OUT [extra benchmark options, e.g. --quick]
#
# OUT/{gamma,ablation,resolution,decode-speed}/*.json are the benchmarks' own outputs;
# OUT/logs holds one log per process; OUT/runs the trained arms (shared, as usual).
# Training times in the JSONs are wall times with all arms sharing the machine.
set -u
OUT=${1:?usage: benchmarks/parallel_arms.sh OUT [benchmark options]}
shift
PY=${PYTHON:-python3}
B=$(cd "$(dirname "$0")" && pwd)
SRC=$(dirname "$B")/src
mkdir -p "$OUT/logs"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
stamp() { echo "[$(date +%T)] $*" | tee -a "$OUT/logs/progress.log"; }
bench() { # NAME LOG ARGS...: one benchmark process in the background
    local name=$1 log=$2
    shift 2
    "$PY" "$B/$name.py" --out "$OUT/$name" --runs "$OUT/runs" "$@" >"$OUT/logs/$log.log" 2>&1 &
}
wait_all() { # WHAT: wait for every background process, then log how many failed
    local failed=0 job
    for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
    stamp "$1 done ($failed failed)"
}

# the feature networks (perceptual loss and fd_domain) once, before several processes want them
stamp "feature networks"
"$PY" -c "from epsvae.perceptual import build_perceptual as b; b('features:auto', 'fashion-mnist'); \
b('features:auto', 'skimage-photos')" >"$OUT/logs/features.log" 2>&1 || { stamp "feature networks failed"; exit 1; }

stamp "training: 8 arms in parallel"
for g in 1.0 0.8 0.6 0.4; do bench gamma "train-gamma$g" --train-only --gammas "$g" "$@"; done
for a in 1 2; do bench ablation "train-ablation$a" --train-only --arms "$a" "$@"; done
for p in vae-fmnist eps-fmnist; do bench resolution "train-resolution-$p" --train-only --presets "$p" "$@"; done
wait_all training

stamp "evaluation"
bench gamma eval-gamma --limit 2000 "$@"
bench ablation eval-ablation --limit 2000 "$@"
bench resolution eval-resolution "$@"
wait_all evaluation

stamp "decoding speed (alone)"
timing=(--seconds "${DECODE_SECONDS:-3}")
for a in "$@"; do [ "$a" = --quick ] && timing=(--quick); done
"$PY" "$B/decode_speed.py" "${timing[@]}" --out "$OUT/decode-speed" >"$OUT/logs/decode-speed.log" 2>&1
stamp "decoding speed done (exit $?)"
stamp "all done"
