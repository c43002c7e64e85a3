#!/usr/bin/env bash
# Table 2: mod-97, Grokfast-EMA (α 0.98, λ 2, wd 0.005) vs the baseline vs wd 0.005 alone.
source "$(dirname "$0")/common.sh" "$@"
# the seeds of a row train together as one stacked model (--stack_seeds: same updates, batched kernels);
# a seed's run folder is cut where its val acc had held >= 95% for 100 evaluations (1000 steps)
queue_stacked main.py configs/modular/baseline.yaml baseline --early_stop_acc 0.95 --early_stop_patience 100
queue_stacked main.py configs/modular/ema.yaml grokfast_ema --early_stop_acc 0.95 --early_stop_patience 100
queue_stacked main.py configs/modular/wd_ema.yaml wd_ema --early_stop_acc 0.95 --early_stop_patience 100
run_queue
