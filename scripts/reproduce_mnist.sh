#!/usr/bin/env bash
# Table 3: MNIST MLP, Grokfast-EMA (α 0.8, λ 0.1, wd 2.0) vs the baseline (wd 0.01) vs wd 2.0 alone.
source "$(dirname "$0")/common.sh" "$@"
for seed in $SEEDS; do
  for row in baseline grokfast wd_control; do
    queue main_mnist.py configs/mnist/$row.yaml "$row" "$seed"
  done
done
run_queue
