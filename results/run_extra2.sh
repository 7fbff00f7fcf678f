#!/bin/sh
# Third pass, after run_extra.sh: the long frequency runs overfit their 1,600 fixed
# sequences, while the authors' code draws fresh sequences every epoch. The same compute
# (64,000 sequence presentations) spent on 16,000 distinct sequences, 4 epochs.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m plstm_np reproduce frequency --out results/long_fresh --epochs 4 --n-train 16000 --n-val 500 --seeds 1 --lr 0.01 --conditions plstm-standard,lstm-standard,plstm-async,lstm-async > results/logs/frequency_long_fresh.log 2>&1
# then two more seeds of the same (seed 0 reused)
$PY -m plstm_np reproduce frequency --out results/long_fresh --epochs 4 --n-train 16000 --n-val 500 --seeds 3 --lr 0.01 --conditions plstm-standard,lstm-standard,plstm-async,lstm-async > results/logs/frequency_long_fresh_3seeds.log 2>&1
