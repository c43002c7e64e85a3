#!/usr/bin/env bash
# Is --stack_seeds worth it? mod-97 Grokfast-EMA, S seeds for STEPS steps each: S runs at once (under CUDA
# MPS when the machine has it, as scripts/run_on_gpu.sh runs them) vs one S-seed stacked run. Prints
# the wall time per step of the whole batch of seeds for both, and their ratio; --json also writes them.
#   scripts/bench_stacking.sh [--seeds "3 9"] [--steps 3000] [--json results/bench/stacking.json]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="3 9"; STEPS=3000; JSON=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SIZES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --json) JSON="$2"; shift 2 ;;
    *) echo "unknown option: $1 (use --seeds, --steps, --json)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
work=$(mktemp -d)
started_mps=0
if command -v nvidia-cuda-mps-control >/dev/null && ! pgrep -x nvidia-cuda-mps >/dev/null \
   && nvidia-cuda-mps-control -d 2>/dev/null; then started_mps=1; fi
cleanup() { if [ "$started_mps" = 1 ]; then echo quit | nvidia-cuda-mps-control; fi; rm -rf "$work"; }
trap cleanup EXIT
run() { $PYTHON main.py --config configs/modular/ema.yaml --device cuda --max_steps "$STEPS" --progress false "$@" >/dev/null; }
for S in $SIZES; do
  for seed in $(seq 0 $((S - 1))); do run --seed "$seed" --out_dir "$work/$S/alone/$seed" & done
  wait
  run --stack_seeds "$(seq -s, 0 $((S - 1)))" --out_dir "$work/$S/stack"
done
$PYTHON - "$work" "$SIZES" "$STEPS" "$started_mps" "$JSON" <<'PY'
import json, sys
from pathlib import Path
import torch
from repro.metrics import git_commit
work, sizes, steps, mps, path = Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
rows = []
for size in sizes:
    # each run's own wall clock (from its start: data, model, CUDA graph capture; not Python's imports)
    alone = max(json.loads(p.read_text())["wall_s"] for p in (work / size / "alone").glob("*/summary.json"))
    stacked = json.loads((work / size / "stack" / "summary.json").read_text())["wall_s"]
    rows.append({"seeds": int(size), "steps": steps, "at_once_s": round(alone, 2), "stacked_s": round(stacked, 2),
                 "speedup": round(alone / stacked, 2)})
    print(f"{size} seeds x {steps} steps: {size} runs at once{' (MPS)' if mps else ''} {alone:.1f} s (the slowest), "
          f"one stacked run {stacked:.1f} s: x{alone / stacked:.2f}")
if path:
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "git_commit": git_commit(),
              "config": "configs/modular/ema.yaml", "mps": mps, "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", path)
PY
