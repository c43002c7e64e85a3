#!/usr/bin/env bash
# Table 1: mod-97, Grokfast-MA (w 100, λ 5, wd 0.01) vs the baseline vs wd 0.01 alone.
source "$(dirname "$0")/common.sh" "$@"
# the seeds of a row train together as one stacked model (--stack_seeds: same updates, batched kernels);
# a seed's run folder is cut where its val acc had held >= 95% for 100 evaluations (1000 steps)
queue_stacked main.py configs/modular/baseline.yaml baseline --early_stop_acc 0.95 --early_stop_patience 100
queue_stacked main.py configs/modular/ma.yaml grokfast_ma --early_stop_acc 0.95 --early_stop_patience 100
queue_stacked main.py configs/modular/wd_ma.yaml wd_ma --early_stop_acc 0.95 --early_stop_patience 100
run_queue
