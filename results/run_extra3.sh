#!/bin/sh
# Fourth pass, after run_extra2.sh: the superimposed frequencies with fresh data too
# (16,000 distinct sequences, 4 epochs).
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m plstm_np reproduce superimposed --out results/long_fresh --epochs 4 --n-train 16000 --n-val 500 --seeds 1 --lr 0.01 > results/logs/superimposed_long_fresh.log 2>&1
