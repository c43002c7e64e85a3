#!/usr/bin/env bash
# Nine IMDb runs at once under MPS, each limited to P% of the SMs, ~75 s per P: steady ms per step.
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$1 GROKFAST_DATA_DIR=$PWD/.devdata/data
nvidia-cuda-mps-control -d
for P in 12 18 35; do
  scripts/reproduce_imdb.sh --print --seeds "0 1 2" --device cuda --results runs/i$P | sed "s#^#env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$P #" \
    | scripts/run_commands.sh --jobs 42 --deadline 75 --logdir runs/i$P/logs >/dev/null 2>&1
  python3 - runs/i$P $P <<'PY'
import json, sys, glob
ms = []
for m in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    recs = [json.loads(l) for l in open(m)]
    a, b = recs[len(recs) // 3], recs[-1]
    ms.append(1000 * (b["elapsed_s"] - a["elapsed_s"]) / max(1, b["step"] - a["step"]))
print(f"IMDb x9 at {sys.argv[2]}% of the SMs: {min(ms):.1f}-{max(ms):.1f} ms per step")
PY
done
echo quit | nvidia-cuda-mps-control
