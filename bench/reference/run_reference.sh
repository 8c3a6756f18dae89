#!/usr/bin/env bash
# Prune the benchmark MLPs with the reference package (paoding-dl 1.0.0.post3)
# in its own venv and write the per-step weights (.npz) and summaries (.json)
# to bench/results/reference/. prune_bench.py evaluates them with the same
# attacks as every other mode and adds them to its table.
#
#   bash bench/reference/run_reference.sh [SEEDS...]      (default seeds: 0 1 2 3 4)
#
# Needs the trained models (python bench/train_models.py). Builds the venv
# with build_venv.sh when it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-paoding-dl}"
PY="${PYTHON:-python3}"
OUT="$ROOT/bench/results/reference"
SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(0 1 2 3 4)

[ -x "$VENV/bin/python" ] || bash "$ROOT/bench/reference/build_venv.sh"
mkdir -p "$OUT"
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
for model in digits_mlp cancer_mlp; do
    "$PY" "$ROOT/bench/reference/export_model.py" "$model" "$OUT/${model}_input.npz"
    # baseline (Srinivas & Babu as the reference implements it) is deterministic
    "$VENV/bin/python" "$ROOT/bench/reference/runner.py" "$OUT/${model}_input.npz" \
        "$OUT/${model}_baseline_s0" --mode baseline --seed 0 > "$OUT/${model}_baseline_s0.log" 2>&1
    for seed in "${SEEDS[@]}"; do
        "$VENV/bin/python" "$ROOT/bench/reference/runner.py" "$OUT/${model}_input.npz" \
            "$OUT/${model}_stochastic_s${seed}" --mode stochastic --seed "$seed" \
            > "$OUT/${model}_stochastic_s${seed}.log" 2>&1
        tail -n 1 "$OUT/${model}_stochastic_s${seed}.log"
    done
done
