#!/bin/sh
# The reproductions behind results/README.md, in priority order, exactly as they were run
# (on 2 shared CPU cores, backend numba). Each writes results/<experiment>/.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m plstm_np reproduce frequency --epochs 8 --n-train 1600 --n-val 500 --seeds 1 --lr 0.01 > results/logs/frequency.log 2>&1
$PY -m plstm_np reproduce nmnist --epochs 2 --batch-size 16 --seeds 1 --lr 0.01 > results/logs/nmnist.log 2>&1
$PY -m plstm_np reproduce superimposed --epochs 8 --n-train 1600 --n-val 500 --seeds 1 --lr 0.01 > results/logs/superimposed.log 2>&1
$PY -m plstm_np reproduce adding --epochs 3 --n-train 1600 --n-val 200 --seeds 1 --lr 0.01 > results/logs/adding.log 2>&1
$PY -m plstm_np reproduce digits --epochs 15 --seeds 3 --lr 0.01 > results/logs/digits.log 2>&1
