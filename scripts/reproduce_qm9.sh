#!/usr/bin/env bash
# Table 5: QM9 NNConv, Grokfast-EMA (α 0.9, λ 1, wd 0.01) vs the baseline (wd 0) vs wd 0.01 alone.
source "$(dirname "$0")/common.sh" "$@"
for seed in $SEEDS; do
  for row in baseline grokfast wd_control; do
    queue main_qm9.py configs/qm9/$row.yaml "$row" "$seed"
  done
done
run_queue
