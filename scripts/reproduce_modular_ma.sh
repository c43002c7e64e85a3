#!/usr/bin/env bash
# Table 1: mod-97, Grokfast-MA (w 100, λ 5, wd 0.01) vs the baseline vs wd 0.01 alone.
source "$(dirname "$0")/common.sh" "$@"
for seed in $SEEDS; do
  # the baseline may stop once it has held >= 95% for 100 evaluations (1000 steps)
  queue main.py configs/modular/baseline.yaml baseline "$seed" --early_stop_acc 0.95 --early_stop_patience 100
  queue main.py configs/modular/ma.yaml grokfast_ma "$seed" --early_stop_acc 0.95 --early_stop_patience 100
  queue main.py configs/modular/wd_ma.yaml wd_ma "$seed" --early_stop_acc 0.95 --early_stop_patience 100
done
run_queue
