#!/bin/sh
# Second pass, run after run_reproductions.sh: two more seeds of the frequency task (the
# seed-0 runs are reused), then longer single-seed runs into results/long/: the cheap
# frequency conditions and the superimposed frequencies for 40 and 30 epochs, N-MNIST for 3 epochs,
# the adding task (Phased LSTM, four tau initialisations) for 8 epochs.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m plstm_np reproduce frequency --epochs 8 --n-train 1600 --n-val 500 --seeds 3 --lr 0.01 > results/logs/frequency_3seeds.log 2>&1
$PY -m plstm_np reproduce frequency --out results/long --epochs 40 --n-train 1600 --n-val 500 --seeds 1 --lr 0.01 --conditions plstm-standard,lstm-standard,plstm-async,lstm-async > results/logs/frequency_long.log 2>&1
$PY -m plstm_np reproduce nmnist --out results/long --epochs 3 --batch-size 16 --seeds 1 --lr 0.01 > results/logs/nmnist_long.log 2>&1
$PY -m plstm_np reproduce superimposed --out results/long --epochs 30 --n-train 1600 --n-val 500 --seeds 1 --lr 0.01 > results/logs/superimposed_long.log 2>&1
$PY -m plstm_np reproduce adding --out results/long --epochs 8 --n-train 1600 --n-val 200 --seeds 1 --lr 0.01 --conditions plstm-tau0-2,plstm-tau2-4,plstm-tau4-6,plstm-tau6-8 > results/logs/adding_long.log 2>&1
