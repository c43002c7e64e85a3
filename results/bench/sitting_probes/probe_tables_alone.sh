#!/usr/bin/env bash
# Each table's runs ALONE on the GPU (all seeds and rows of it at once, under MPS) for ~60 s: per-step rates and power.
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$1 GROKFAST_DATA_DIR=$PWD/.devdata/data
nvidia-cuda-mps-control -d
for group in "imdb" "modular_ema modular_ma" "qm9" "mnist"; do
  g=$(echo $group | cut -d' ' -f1)
  cmds=$(for t in $group; do scripts/reproduce_$t.sh --print --seeds "0 1 2" --device cuda --results runs/$g; done | awk '!seen[$0]++')
  nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw --format=csv,noheader -l 2 > $OUT/smi_$g.csv & s=$!
  printf '%s\n' "$cmds" | scripts/run_commands.sh --jobs 42 --deadline 75 --logdir runs/$g/logs > /dev/null 2>&1
  kill $s
  echo "== $g: power samples (W) at 100% util: $(grep ' 100 %' $OUT/smi_$g.csv | awk -F', ' '{print $3}' | tr '\n' ' ')"
  python3 - runs/$g <<'PY'
import json, sys, glob, os
for m in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    recs = [json.loads(l) for l in open(m)]
    if len(recs) < 3: print("few records", m, len(recs)); continue
    a, b = recs[len(recs) // 3], recs[-1]
    ms = 1000 * (b["elapsed_s"] - a["elapsed_s"]) / max(1, b["step"] - a["step"])
    print(f"{os.path.basename(os.path.dirname(m))[:58]:58s} last_step {b['step']:7d} elapsed {b['elapsed_s']:6.1f} s  steady {ms:8.3f} ms/step")
PY
done
echo quit | nvidia-cuda-mps-control
