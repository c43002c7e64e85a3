#!/usr/bin/env bash
# Table 2: mod-97, Grokfast-EMA (α 0.98, λ 2, wd 0.005) vs the baseline vs wd 0.005 alone.
source "$(dirname "$0")/common.sh" "$@"
for seed in $SEEDS; do
  queue main.py configs/modular/baseline.yaml baseline "$seed" --early_stop_acc 0.95 --early_stop_patience 100
  queue main.py configs/modular/ema.yaml grokfast_ema "$seed" --early_stop_acc 0.95 --early_stop_patience 100
  queue main.py configs/modular/wd_ema.yaml wd_ema "$seed" --early_stop_acc 0.95 --early_stop_patience 100
done
run_queue
