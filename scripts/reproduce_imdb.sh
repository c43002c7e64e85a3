#!/usr/bin/env bash
# Table 4: IMDb LSTM, Grokfast-EMA (α 0.98, λ 2, wd 10) vs the baseline (wd 1) vs wd 10 alone.
source "$(dirname "$0")/common.sh" "$@"
for seed in $SEEDS; do
  for row in baseline grokfast wd_control; do
    queue main_imdb.py configs/imdb/$row.yaml "$row" "$seed"
  done
done
run_queue
