#!/usr/bin/env bash
# Profile a GPU once and check the model against it: issue 5, item 5.
#
#   OUT=/some/dir bash experiments/gpu_profile.sh [DEVICE_NAME [HARDWARE]]
#
# Meant for one call on a lent GPU machine (about 8 minutes), run from the repository root
# without installing (PYTHONPATH=.): the machine's image has JAX with CUDA, equinox, optax,
# jaxtyping, scipy, matplotlib and tqdm, and nothing can be fetched there. DEVICE_NAME (default
# h200-sxm) goes in the CSV's device column; HARDWARE (default DEVICE_NAME-calibrated) is the
# preset the rows are validated against. Each profile stops measuring at its --max-seconds and
# writes what it has (a random subset of its plan); every step also has a hard time limit, so
# one that hangs still leaves the others' files. Worst case 560 s, typically ~7 minutes. Everything lands in $OUT/gpu_profile.tar.gz (the CSVs
# with their provenance JSON, validation tables and plots, a held-out calibration, the GPU's
# speed on the decode-step sweep) and the log in $OUT/gpu_profile.log.
# QUICK=1 runs the reduced profile (a dry run of the script on a CPU).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NAME="${1:-h200-sxm}"
HW="${2:-$NAME-calibrated}"
PY="${PYTHON:-python3}"
W="$(mktemp -d)/gpu_profile"
mkdir -p "$W" "$OUT"
LOG="$OUT/gpu_profile.log"
QUICKFLAG=()
[ "${QUICK:-0}" = 1 ] && QUICKFLAG=(--quick)

step() {  # step SECONDS NAME COMMAND...: run, log, never abort the script
  local limit=$1 name=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" > "$W/$name.out" 2>&1
  local rc=$?
  tail -n 40 "$W/$name.out" >> "$LOG"
  echo "== $name rc=$rc" | tee -a "$LOG"
}

step 15 env bash -c "nvidia-smi; $PY -c 'import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices())'"
# one CSV per kernel family: a family that runs out of time loses only its own rows
for spec in gemm:150:190 attention_prefill,attention_decode:80:110 memcpy:30:45; do
  IFS=: read -r ops budget limit <<< "$spec"
  tag="${ops%%,*}"
  step "$limit" "profile_$tag" "$PY" -m diffperf.cli profile --ops "$ops" --device-name "$NAME" \
    --max-seconds "$budget" --output "$W/$NAME-$tag.csv" "${QUICKFLAG[@]}"
done
INPUTS=()
for f in "$W"/"$NAME"-*.csv; do
  [ -s "$f" ] && INPUTS+=(--input "$f")
done
if [ "${#INPUTS[@]}" -gt 0 ]; then
  step 60 validate "$PY" -m diffperf.cli validate --device "$NAME" --hardware "$HW" \
    "${INPUTS[@]}" --plot "$W/validation_$HW.png" --json
  step 90 calibrate "$PY" -m diffperf.cli calibrate --hardware "$HW" --device "$NAME" \
    "${INPUTS[@]}" --holdout 0.3 --output "$W/$NAME-fit.toml" --json
fi
step 50 bench_core "$PY" benchmarks/bench_core.py --json
tar -czf "$OUT/gpu_profile.tar.gz" -C "$(dirname "$W")" gpu_profile
echo "wrote $OUT/gpu_profile.tar.gz" | tee -a "$LOG"
