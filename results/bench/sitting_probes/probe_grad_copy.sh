#!/usr/bin/env bash
# Same machine, one run alone: mod-97 control and IMDb, old graphs.py (zero + backward's adds) vs new (autograd.grad + one foreach copy).
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=probe GROKFAST_DATA_DIR=$PWD/.devdata/data
cp repro/graphs.py /tmp/new_graphs.py
for v in old new old new; do
  if [ $v = old ]; then cp .devdata/old/graphs.py repro/; else cp /tmp/new_graphs.py repro/graphs.py; fi
  rm -rf runs/g_$v runs/gi_$v
  python3 main.py --config configs/modular/wd_ma.yaml --device cuda --max_steps 5000 --progress false --out_dir runs/g_$v | tail -1 | sed "s/^/$v /" | grep -o "^[a-z]* \|train_step_ms=[0-9.]*\|wall_per_step_ms=[0-9.]*\|peak_gpu_mem_mb=[0-9.]*\|min_val_loss=[0-9.]*" | tr '\n' ' '; echo
done
python3 - <<'PY'
import json
a = [json.loads(l) for l in open("runs/g_old/metrics.jsonl")]; b = [json.loads(l) for l in open("runs/g_new/metrics.jsonl")]
keys = [k for k in a[0] if k != "elapsed_s"]
print("mod-97 records identical (all but elapsed_s):", all(all(x[k] == y[k] for k in keys) for x, y in zip(a, b)) and len(a) == len(b), len(a))
PY
python3 -m pytest -q -p no:cacheprovider tests/test_main_modular.py::test_cuda_graphs_give_the_eager_runs_metrics tests/test_resume.py::test_a_resumed_runs_peak_gpu_memory_equals_an_uninterrupted_ones tests/test_grokfast.py::test_ema_step_captures_in_a_cuda_graph 2>&1 | tail -2
