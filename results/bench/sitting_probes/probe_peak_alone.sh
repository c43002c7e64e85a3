#!/usr/bin/env bash
# Peak GPU memory of the mod-97 runs whose peak was 1 MB above their siblings' in the sitting, each alone.
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$(cat .devdata/commit) GROKFAST_DATA_DIR=$PWD/.devdata/data
for spec in "baseline 0" "baseline 1" "wd_ema 2" "wd_ema 0"; do
  set -- $spec
  python3 main.py --config configs/modular/$1.yaml --seed $2 --device cuda --progress false --out_dir runs/peak_$1_$2 \
    --early_stop_acc 0.95 --early_stop_patience 100 | tr ',' '\n' | grep -E "steps=|steps_to_95|peak" | tr '\n' ' '; echo " <- $1 s$2"
done
